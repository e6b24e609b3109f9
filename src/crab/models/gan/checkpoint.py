"""Training checkpoints: ``checkpoint.pt`` (the last epoch) and ``best.pt`` (the best one) of a
model directory, what ``crab train --resume`` continues from."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from crab.core.errors import ModelCompatibilityError
from crab.models.dataset import TodSource
from crab.models.gan.config import LEGACY_TRAIN_FIELDS, ModelConfig, TrainConfig

CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"
CHECKPOINT_FORMAT = "crab-checkpoint"
CHECKPOINT_VERSION = 2  # 2: the additive glitches' pulse table

#: TrainConfig fields that may differ when resuming (everything else must match).
RESUMABLE_CHANGES = ("epochs", "num_threads", "snapshot_every")


def to_bytes(obj: Any) -> bytes:
    """``obj`` as ``torch.save`` writes it (to write a checkpoint atomically)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``checkpoint.pt`` (or ``best.pt``) or a model directory's checkpoint."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_FILE
    if not p.exists():
        raise ModelCompatibilityError(f"no checkpoint to resume from: {p} does not exist (train without --resume first)")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelCompatibilityError(f"{p}: cannot be read as a CRAB checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise ModelCompatibilityError(f"{p}: not a CRAB training checkpoint")
    if ck.get("format_version") != CHECKPOINT_VERSION:
        raise ModelCompatibilityError(f"{p}: checkpoint format {ck.get('format_version')} is not supported (expected {CHECKPOINT_VERSION})")
    return ck


def checkpoint_train_config(out_dir: str | os.PathLike) -> TrainConfig:
    """The TrainConfig stored in a model directory's checkpoint (for ``--resume``)."""
    return checkpoint_config(load_checkpoint(out_dir), str(out_dir))


def checkpoint_config(ck: dict, what: str = "this checkpoint") -> TrainConfig:
    """The TrainConfig of a loaded checkpoint (fields added since take the values of older checkpoints)."""
    return TrainConfig.from_dict({**LEGACY_TRAIN_FIELDS, **ck["train_config"]}, what)


def check_resume(ck: dict, cfg: TrainConfig, mcfg: ModelConfig, sources: Sequence[TodSource], path: Path) -> None:
    """ModelCompatibilityError unless the checkpoint ``ck`` (read from ``path``) can continue with this
    configuration and data: only :data:`RESUMABLE_CHANGES` of the TrainConfig may differ."""
    old = checkpoint_config(ck, str(path)).to_dict()
    new = cfg.to_dict()
    if int(ck["window_samples"]) != cfg.window_samples:
        raise ModelCompatibilityError(f"{path}: the checkpoint was trained with windows of {ck['window_samples']} samples, but {cfg.window_samples} were asked")
    rate = sources[0].sampling_rate_hz
    if not np.isclose(float(ck["sampling_rate_hz"]), rate, rtol=1e-9, atol=0):
        raise ModelCompatibilityError(f"{path}: the checkpoint was trained at {float(ck['sampling_rate_hz']):g} Hz, but the data are at {rate:g} Hz")
    diff = [k for k in new if k not in RESUMABLE_CHANGES and norm_value(new[k]) != norm_value(old.get(k))]
    if diff:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in diff)
        raise ModelCompatibilityError(f"{path}: cannot resume with a different training configuration ({detail}); only {', '.join(RESUMABLE_CHANGES)} may change")
    if ModelConfig.from_dict(ck["model_config"], str(path)).to_dict() != mcfg.to_dict():
        raise ModelCompatibilityError(f"{path}: cannot resume with a different model configuration")
    shapes = [(f["n_detectors"], f["n_samples"]) for f in ck["data_files"]]
    if shapes != [(int(s.tod.shape[0]), int(s.tod.shape[1])) for s in sources]:
        raise ModelCompatibilityError(f"{path}: the training data differ from those of the checkpoint ({len(shapes)} files of (detectors, samples) {shapes})")


def norm_value(v: Any) -> Any:
    """A tuple as a list (how a configuration value reads back from a stored file)."""
    return list(v) if isinstance(v, tuple) else v
