"""Model selection by the classifier test against a selection Monte Carlo.

A training run writes the generation model of every ``snapshot_every``-th
epoch (``snapshots/epoch_NNNN/``, :class:`crab.models.gan.config.TrainConfig`).
:func:`select_snapshot` generates TOD from each snapshot, scores it with the
classifier two-sample test (:mod:`crab.validation.classifier`) against a
*selection* Monte Carlo (a run that is neither the training data nor any test
reference), and installs the snapshot with the lowest AUC as the model
directory's ``model.pt``.  The test references are never read, so the AUC a
later ``crab validate`` measures against them is not biased by the choice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from crab.core.errors import InputError
from crab.core.provenance import atomic_write_bytes
from crab.validation.classifier_metric import classifier_test
from crab.validation.config import ValidationConfig
from crab.validation.set_analysis import analyse

#: What :func:`select_snapshot` writes beside the model.
SELECTION_FILE = "selection.json"


def snapshot_dirs(model_dir: str | os.PathLike) -> list[Path]:
    """The snapshot folders of a training run (``snapshots/epoch_NNNN``, each with a ``model.pt``), by epoch."""
    root = Path(model_dir) / "snapshots"
    return sorted(p for p in root.glob("epoch_*") if (p / "model.pt").exists()) if root.is_dir() else []


def select_snapshot(
    model_dir: str | os.PathLike,
    selection: str | os.PathLike,
    *,
    seed: int = 0,
    duration_s: float | None = None,
    config: ValidationConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score every snapshot of ``model_dir`` against the selection MC and install the best as ``model.pt``.

    Parameters
    ----------
    model_dir : path-like
        A model directory trained with ``snapshot_every > 0``.
    selection : path-like
        Selection Monte Carlo (``crab simulate``; not a test reference).
    seed : int
        Generation seed of the scored TOD (the same for every snapshot).
    duration_s : float, optional
        Generated duration per snapshot (default: the selection file's).
    config : ValidationConfig, optional
        Glitch finder, windows and classifier settings (default: ``crab validate``'s).
    log : callable, optional
        Called with one line per snapshot.

    Returns
    -------
    dict
        ``{"selection_file", "seed", "duration_s", "scores": [{"epoch", "auc", "auc_sigma"}], "chosen_epoch", "chosen_auc"}``,
        also written to ``model_dir/selection.json``.
    """
    from crab.generation import TodGenerator
    from crab.io.tod import read_tod
    from crab.models.gan.store import load_model

    cfg = config or ValidationConfig()
    snaps = snapshot_dirs(model_dir)
    if not snaps:
        raise InputError(f"{model_dir} has no snapshots to choose from; train with snapshot_every > 0")
    if (Path(model_dir) / "model.pt").exists() and not (Path(model_dir) / SELECTION_FILE).exists():
        snaps.append(Path(model_dir))  # training's own choice (by the sample-quality statistic) is a candidate too
    ref_file = read_tod(selection)
    fs = float(ref_file.meta.sampling_rate_hz)
    names = list(ref_file.meta.detectors)
    ref = analyse(ref_file.tod, fs, names, cfg, name="selection MC")
    n = int(round((duration_s or ref_file.tod.shape[1] / fs) * fs))
    scores = []
    seen: set[int] = set()
    for i, snap in enumerate(snaps):
        model = load_model(snap, sampling_rate_hz=fs)
        if int(model.extra.get("epoch", -1)) in seen:
            continue
        seen.add(int(model.extra.get("epoch", -1)))
        tod = TodGenerator(model, seed, n_workers=1).generate(len(names), 0, n)
        syn = analyse(tod, fs, names, cfg, scale_sigma=float(np.median(ref.sigma)), name=snap.name)
        clf = classifier_test(ref, syn, (7, i), cfg.classifier_kwargs())
        epoch = int(model.extra.get("epoch", -1))
        scores.append({"epoch": epoch, "path": str(snap), "auc": float(clf.auc), "auc_sigma": float(clf.auc_sigma)})
        if log:
            log(f"snapshot epoch {epoch}: classifier AUC {clf.auc:.3f} against the selection MC")
    best = min(scores, key=lambda s: s["auc"])
    if Path(best["path"]) != Path(model_dir):
        atomic_write_bytes(Path(model_dir) / "model.pt", (Path(best["path"]) / "model.pt").read_bytes())
    out = {"selection_file": str(selection), "seed": int(seed), "duration_s": n / fs, "scores": scores, "chosen_epoch": best["epoch"], "chosen_auc": best["auc"]}
    atomic_write_bytes(Path(model_dir) / SELECTION_FILE, (json.dumps(out, indent=2) + "\n").encode())
    return out
