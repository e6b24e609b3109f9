"""Fidelity of GAN variants on held-out Monte Carlo (issue 5): train, generate, validate, print one table.

Usage::

    python benchmarks/fidelity_study.py --out fid --seeds 1 2 3 4       # the default and the defaults before it (DEFAULT_VARIANTS)
    python benchmarks/fidelity_study.py --out fid --seeds 1 2 \\
        --variant default --variant no_events \\
        --variant no_pulses=configs/no_pulses.toml      # ~7 min per run on 2 cores

A variant is a ``crab train --config``: a configuration shipped with CRAB
(``src/crab/configs/NAME.toml``: ``default``, ``no_peak_view``,
``two_event_channels``, ``network_draws_glitches``, ``no_events``, ``paper``)
or ``NAME=FILE.toml``, a TOML file with ``[model]`` and ``[train]`` tables
(e.g. ``[model]`` ``event_kernel = 0`` for no pulses; ``[train]``
``epochs = 150``).

Steps (each skipped when its output exists, so an interrupted study resumes):

1. ``crab simulate`` the training MC (``--train-duration``, default 1800 s,
   4 detectors, seed 1) and ``--references`` held-out MC runs (default 4,
   1800 s, seeds 1001, 1002 ...), as ``crab run`` does;
2. for every variant and seed: ``crab train --config`` the variant's configuration, ``crab generate``
   1 h of 4 detectors (seed 2001), ``crab validate`` against every held-out run;
3. a table of the issue's targets (classifier AUC and its distance dAUC from
   the MC-vs-MC floor, glitch rate, amplitude distribution) and the
   diagnostics that move most with these options (decay times, rate of
   glitches in bands of amplitude), every statistic (its mean over the
   references) beside its threshold.

The classifier AUC of one run scatters by about +-0.03 between training
seeds, so compare variants over several seeds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

CRAB = [sys.executable, "-c", "from crab.cli import main; main()"]
BANDS_SIGMA = (5, 10, 20, 40, 100)
#: The default model and the defaults before it (shipped configurations; docs/experiments.md, "Discriminator peak view").
DEFAULT_VARIANTS = ("default", "no_peak_view", "two_event_channels", "network_draws_glitches")


def _run(*args: object, quiet: bool = False) -> None:
    """``crab ARGS`` in a subprocess (its output shown unless ``quiet``, and then only if it fails); raises if it fails."""
    cmd = "$ crab " + " ".join(map(str, args))
    if not quiet:
        print(cmd, flush=True)
    r = subprocess.run([*CRAB, *map(str, args)], capture_output=quiet, text=True)
    if r.returncode:
        if quiet:
            print(cmd, r.stdout, r.stderr, sep="\n", file=sys.stderr)
        raise subprocess.CalledProcessError(r.returncode, cmd)


def amplitude_band_rates(path: Path, scale_sigma: float | None = None) -> tuple[np.ndarray, float]:
    """Detected glitches per detector-hour in bands of peak amplitude (``BANDS_SIGMA``, units of the noise sigma)."""
    from crab.io.tod import read_tod
    from crab.validation import ValidationConfig, analyse

    t = read_tod(path)
    a = analyse(t.tod, t.meta.sampling_rate_hz, t.meta.detectors, ValidationConfig(), name=path.stem)
    sig = float(np.median(a.sigma)) if scale_sigma is None else scale_sigma
    amp = a.glitches.amplitude / sig  # one scale (the reference's sigma) for every set
    counts = np.histogram(amp, bins=[*BANDS_SIGMA, np.inf])[0]
    return counts / (a.duration_s * a.n_detectors / 3600.0), sig


def simulate_mc(path: Path, seed: int, duration_s: float = 1800.0) -> Path:
    """``crab simulate`` of the Monte Carlo configuration of ``crab run`` (4 detectors, 19 Hz, phi
    0.6) to ``path``, unless it is already there."""
    if not path.exists():
        _run("simulate", "--duration", duration_s, "--detectors", 4, "--sampling-rate", 19, "--phi", 0.6, "--seed", seed, "--out", path, "--no-progress")
    return path


def ensure_mc(out: Path, train_duration_s: float = 1800.0, n_references: int = 1) -> dict:
    """The training MC (seed 1, ``train_duration_s``) and the held-out MC runs (seeds 1001, 1002 ..., 1800 s)
    of ``crab run`` in ``out`` (:func:`simulate_mc`): ``{"train": path, "heldout": the first held-out
    path, "references": every held-out path}``."""
    out.mkdir(parents=True, exist_ok=True)
    train_name = "mc_train.h5" if train_duration_s == 1800 else f"mc_train_{train_duration_s:g}s.h5"
    refs = [simulate_mc(out / ("mc_heldout.h5" if k == 0 else f"mc_heldout_{k + 1}.h5"), 1001 + k) for k in range(n_references)]
    return {"train": simulate_mc(out / train_name, 1, train_duration_s), "heldout": refs[0], "references": refs}


class HeldoutClassifier:
    """The classifier two-sample test of ``crab validate`` against one reference TOD file: its window
    features, MLP and splits, a synthetic file scored as ``crab validate`` scores its first synthetic
    set (``splits`` None: ``crab validate``'s number of splits)."""

    def __init__(self, reference: Path) -> None:
        from crab.io.tod import read_tod
        from crab.validation import ValidationConfig, analyse

        self.cfg = ValidationConfig()
        ref = read_tod(reference)
        self.ref = analyse(ref.tod, ref.meta.sampling_rate_hz, ref.meta.detectors, self.cfg, name="reference")
        self.scale = float(np.median(self.ref.sigma))

    def _test(self, a, ma: np.ndarray, b, mb: np.ndarray, key: tuple[int, ...], splits: int | None):
        from crab.validation.classifier import classifier_two_sample_test

        kw = self.cfg.classifier_kwargs()
        kw["repeats"] = splits or kw["repeats"]
        return classifier_two_sample_test(a.win_clf_feats[ma], b.win_clf_feats[mb], groups_a=a.win_block[ma], groups_b=b.win_block[mb], key=key, **kw)

    def floor(self, splits: int | None = None):
        """The test between the reference's two halves (``crab validate``'s floor)."""
        from crab.validation.floor import floor_halves

        half = floor_halves(self.ref.n_blocks)[self.ref.win_block]
        return self._test(self.ref, half, self.ref, ~half, (2, 0), splits)

    def auc(self, path: Path, splits: int | None = None) -> float:
        """Classifier AUC of the TOD file ``path`` against the reference."""
        from crab.io.tod import read_tod
        from crab.validation import analyse

        s = read_tod(path)
        sa = analyse(s.tod, s.meta.sampling_rate_hz, s.meta.detectors, self.cfg, scale_sigma=self.scale, name=path.stem)
        return self._test(self.ref, slice(None), sa, slice(None), (2, 1), splits).auc


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="study folder")
    ap.add_argument("--variant", action="append", default=None, help="a shipped configuration (e.g. no_events) or NAME=FILE.toml, a crab train --config file (repeatable)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--epochs", type=int, default=None, help="adversarial epochs (default: crab train's)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--train-duration", type=float, default=1800.0, help="seconds of training MC [1800, as crab run]")
    ap.add_argument("--references", type=int, default=4, help="independent held-out MC runs validated against [4, as crab run]")
    args = ap.parse_args(argv)
    variants = {}
    for v in args.variant or DEFAULT_VARIANTS:
        name, _, config = v.partition("=")
        variants[name] = ["--config", config or name]

    out = args.out
    mc = ensure_mc(out, args.train_duration, args.references)
    refs = mc["references"]
    _, sig = amplitude_band_rates(refs[0])
    ref_rates = np.mean([amplitude_band_rates(r, sig)[0] for r in refs], axis=0)
    rows = []
    for name, opts in variants.items():
        for seed in args.seeds:
            d = out / f"{name}_s{seed}"
            report = d / "report" / "metrics.json"
            new = not (d / "model" / "model.pt").exists()
            if new:
                extra = [] if args.epochs is None else ["--epochs", args.epochs]
                extra += [] if args.threads is None else ["--threads", args.threads]
                _run("train", "--data", mc["train"], "--out", d / "model", "--seed", seed, "--quiet", "--overwrite", *extra, *opts)
            if new or not (d / "gan.h5").exists():
                new = True
                _run("generate", "--model", d / "model", "--duration", "1h", "--detectors", 4, "--seed", 2001, "--out", d / "gan.h5", "--no-progress")
            if new or not report.exists() or json.loads(report.read_text()).get("n_references", 1) != len(refs):
                ref_args = [a for r in refs for a in ("--reference", r)]
                _run("validate", *ref_args, "--synthetic", f"gan={d / 'gan.h5'}", "--training", mc["train"], "--out", d / "report")
            m = json.loads(report.read_text())["sets"]["gan"]["metrics"]
            rows.append((name, seed, m, amplitude_band_rates(d / "gan.h5", sig)[0]))

    keys = ["classifier_auc", "glitch_rate", "amplitude_distribution", "amplitude_slope", "decay_time_distribution", "psd_octaves"]
    print(f"\nstatistic (mean over {len(refs)} references) / threshold (! = fails); dAUC = AUC - MC-vs-MC AUC; "
          "glitches per detector-hour in amplitude bands (noise sigma)")
    bands = " ".join(f">{b}" for b in BANDS_SIGMA)
    print(f"{'variant':<14}{'seed':>5}  {'dAUC':>14}  " + "  ".join(f"{k[:18]:>18}" for k in keys) + f"   {bands}")
    print(f"{'reference MC':<14}{'':>5}  {'':>14}  " + "  ".join(f"{'':>18}" for _ in keys) + "   " + " ".join(f"{r:.0f}" for r in ref_rates))
    for name, seed, m, rates in rows:
        cells = []
        for k in keys:
            v = m[k]
            cells.append(f"{float(v['value']):.3g}/{float(v['threshold']):.3g}{'' if v['passed'] else '!'}")  # inf/nan are stored as text
        clf = m["classifier_auc"]
        err = clf.get("distance_error")
        dauc = "n/a" if clf.get("distance") is None else f"{float(clf['distance']):+.3f}" + ("" if err is None else f"+-{float(err):.3f}")
        print(f"{name:<14}{seed:>5}  {dauc:>14}  " + "  ".join(f"{c:>18}" for c in cells) + "   " + " ".join(f"{r:.0f}" for r in rates))


if __name__ == "__main__":
    main()
