"""Shared fixtures: small synthetic TOD so that each stage can be tested alone.

``make_synthetic_tod`` is *not* the physics Monte Carlo: it is white + 1/f
noise plus exponential glitches with power-law heights at Poisson times,
enough to exercise datasets, training, generation and validation quickly.
"""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("CRAB_PROGRESS", "0")


def require_extra(module: str, extra: str):
    """Import ``module`` or skip; with ``CRAB_REQUIRE_EXTRAS=1`` (set by CI, which installs the extras) fail instead."""
    if os.environ.get("CRAB_REQUIRE_EXTRAS", "") not in ("", "0"):
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"needs the crab-tod[{extra}] extra")


def run_cli(capture, *args):
    """``crab ARGS`` in this process (fast: torch is already imported): ``(exit status, stdout, stderr)``.

    ``capture`` is pytest's ``capsys`` (text) or ``capsysbinary`` (bytes); ``crab.cli.main`` always exits.
    """
    from crab.cli import main

    capture.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capture.readouterr()
    return exc.value.code, out.out, out.err


def make_synthetic_tod(
    n_detectors: int = 2,
    n_samples: int = 19 * 600,
    sampling_rate_hz: float = 19.0,
    glitch_rate_hz: float = 0.1,
    amplitude_scale: float = 1.0,
    noise_rms: float = 0.05,
    f_knee_hz: float = 0.02,
    tau_s: float = 0.15,
    slope: float = 2.0,
    seed: int = 0,
) -> tuple[np.ndarray, dict]:
    """Synthetic TOD (n_detectors, n_samples) float32 and its truth.

    Glitches: Poisson times (rate ``glitch_rate_hz`` per detector), heights
    ``amplitude_scale * (Pareto(slope - 1) + 1) * 5 * noise_rms``, decay ``tau_s``.
    """
    from crab.physics.noise import NoiseGenerator, NoiseParams

    g = np.random.default_rng(seed)
    asd = noise_rms / np.sqrt(sampling_rate_hz / 2.0)
    noise = NoiseGenerator(NoiseParams(white_asd=asd, f_knee_hz=f_knee_hz, alpha=1.0), sampling_rate_hz, seed=seed, stream="mc_noise")
    tod = noise.generate_many(list(range(n_detectors)), 0, n_samples).astype(np.float64)
    t = np.arange(n_samples) / sampling_rate_hz
    truth = {"time_s": [], "detector": [], "amplitude": []}
    for d in range(n_detectors):
        n = g.poisson(glitch_rate_hz * n_samples / sampling_rate_hz)
        times = np.sort(g.uniform(0, n_samples / sampling_rate_hz, n))
        amps = amplitude_scale * 5 * noise_rms * (g.pareto(slope - 1.0, n) + 1.0)
        for t0, a in zip(times, amps):
            i0 = int(np.ceil(t0 * sampling_rate_hz))
            seg = t[i0 : i0 + int(20 * tau_s * sampling_rate_hz) + 2] - t0
            tod[d, i0 : i0 + seg.size] += a * np.exp(-seg / tau_s)
        truth["time_s"] += list(times)
        truth["detector"] += [d] * n
        truth["amplitude"] += list(amps)
    return tod.astype(np.float32), {k: np.asarray(v) for k, v in truth.items()}


@pytest.fixture
def synthetic_tod():
    """The :func:`make_synthetic_tod` factory."""
    return make_synthetic_tod


@pytest.fixture
def synthetic_tod_file(tmp_path):
    """Factory writing a synthetic TOD to an HDF5 file in tmp_path; returns the path."""
    from crab.io.tod import TodMetadata, default_detector_names, write_tod

    def _make(name: str = "synthetic.h5", **kw) -> "os.PathLike":
        tod, _ = make_synthetic_tod(**kw)
        meta = TodMetadata(sampling_rate_hz=kw.get("sampling_rate_hz", 19.0), detectors=default_detector_names(tod.shape[0]), kind="synthetic", seed=kw.get("seed", 0))
        return write_tod(tmp_path / name, tod, meta)

    return _make


@pytest.fixture(scope="module")
def gan_model_dir(tmp_path_factory):
    """A model directory of the real streaming GAN at 19 Hz (random weights: the code path and cost of a
    trained one), for the bridges and ``crab impact``."""
    import torch

    from crab.models.gan.config import ModelConfig
    from crab.models.gan.network import Generator
    from crab.models.gan.store import save_model
    from crab.models.gan.transform import AmplitudeTransform
    from crab.physics.noise import NoiseParams

    torch.manual_seed(0)
    g = Generator(ModelConfig())
    g.eval()
    d = tmp_path_factory.mktemp("gan")
    save_model(d, g, AmplitudeTransform(scale=0.05), 19.0, noise_params=NoiseParams(white_asd=0.01), highpass_hz=0.15)
    return d
