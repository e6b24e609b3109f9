"""Model selection: snapshots scored against a selection Monte Carlo, never a test reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_generation import make_model_dir

from crab.core.errors import InputError
from crab.models.gan.store import load_model, save_model


def _snapshot(path, epoch: int, scale: float, noise=None):
    """The snapshot of ``epoch``: a random generator at linear scale ``scale`` (TOD units), or with
    ``noise`` (NoiseParams) a silent one whose TOD is that noise alone."""
    import torch

    from crab.models.gan.transform import AmplitudeTransform

    make_model_dir(path, seed=epoch)
    m = load_model(path)
    if noise is not None:
        with torch.no_grad():
            m.generator.head.weight.zero_()
            m.generator.head.bias.zero_()
    tf = AmplitudeTransform(offset=0.0, scale=scale, out_scale=m.transform.out_scale)
    save_model(path, m.generator, tf, m.sampling_rate_hz, noise_params=noise or m.noise_params, highpass_hz=9.0 if noise else m.highpass_hz, epoch=epoch)


NOISE = dict(white_asd=0.01, f_knee_hz=0.05)


@pytest.fixture(scope="module")
def selection_mc(tmp_path_factory):
    """A "selection run" of pure noise (a TOD file like any other; 600 s x 2 detectors), below 9 Hz
    like the slow noise of a model with highpass_hz = 9."""
    from crab.io.tod import TodMetadata, default_detector_names, write_tod
    from crab.physics.noise import NoiseGenerator, NoiseParams

    tod = NoiseGenerator(NoiseParams(**NOISE), 19.0, 11, "mc_noise", lowpass_hz=9.0).generate_many([0, 1], 0, 19 * 600).astype(np.float32)
    p = tmp_path_factory.mktemp("sel") / "select.h5"
    return write_tod(p, tod, TodMetadata(sampling_rate_hz=19.0, detectors=default_detector_names(2), kind="montecarlo", seed=11))


def test_selection_keeps_the_closest_snapshot_and_reads_only_the_selection_run(tmp_path, selection_mc, monkeypatch):
    import crab.io.tod as tod_io
    from crab.validation.selection import SELECTION_FILE, select_snapshot

    from crab.physics.noise import NoiseParams

    model_dir = tmp_path / "model"
    _snapshot(model_dir / "snapshots" / "epoch_0010", 10, 1.0)  # a random network: nothing like the selection run
    _snapshot(model_dir / "snapshots" / "epoch_0020", 20, 1.0, noise=NoiseParams(**NOISE))  # silent network + the run's noise
    _snapshot(model_dir, 10, 1.0)  # training's own choice: the random one
    opened = []
    real = tod_io.read_tod
    monkeypatch.setattr(tod_io, "read_tod", lambda p, *a, **k: opened.append(str(p)) or real(p, *a, **k))
    out = select_snapshot(model_dir, selection_mc)
    assert opened == [str(selection_mc)]
    assert [s["epoch"] for s in out["scores"]] == [10, 20]
    assert out["chosen_epoch"] == 20 and out["chosen_auc"] < 0.65 < out["scores"][0]["auc"]
    assert load_model(model_dir).extra["epoch"] == 20
    assert json.loads((model_dir / SELECTION_FILE).read_text())["chosen_epoch"] == 20


def test_selection_needs_snapshots(tmp_path, selection_mc):
    from crab.validation.selection import select_snapshot

    make_model_dir(tmp_path / "m")
    with pytest.raises(InputError, match="no snapshots"):
        select_snapshot(tmp_path / "m", selection_mc)
