"""The validation's inputs: TOD files or arrays, named and checked against the reference."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from crab.core.errors import InputError
from crab.io.tod import TodFile, TodMetadata, default_detector_names, read_tod
from crab.validation.config import ValidationConfig, block_samples


def as_tod(obj: Any, what: str) -> TodFile:
    """``obj`` as a :class:`TodFile`: read from a path, or returned as is; ``what`` names it in errors."""
    if isinstance(obj, TodFile):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return read_tod(obj)
    raise InputError(f"{what}: expected a TodFile or a path to a TOD file, got {type(obj).__name__}")


def tod_from_array(tod: np.ndarray, sampling_rate_hz: float, detectors: list[str] | None = None, kind: str = "array", config: dict | None = None, name: str = "<array>") -> TodFile:
    """Wrap an in-memory (n_detectors, n_samples) array as a :class:`TodFile` for :func:`crab.validation.validate.validate`."""
    a = np.atleast_2d(np.asarray(tod, dtype=np.float32))
    meta = TodMetadata(sampling_rate_hz=sampling_rate_hz, detectors=detectors or default_detector_names(a.shape[0]), kind=kind, config=config or {})
    return TodFile(tod=a, meta=meta, events=None, path=Path(name))


def check_compatible(reference: TodFile, other: TodFile, what: str) -> None:
    """Raise :class:`InputError` if sampling rate, detector count or units differ."""
    fr, fo = reference.meta.sampling_rate_hz, other.meta.sampling_rate_hz
    if not np.isclose(fr, fo, rtol=1e-9, atol=0):
        raise InputError(f"{what} ({other.path}) is sampled at {fo:g} Hz but the reference ({reference.path}) at {fr:g} Hz; resample or generate at the reference's rate")
    if other.tod.shape[0] != reference.tod.shape[0] and what != "training":
        raise InputError(f"{what} ({other.path}) has {other.tod.shape[0]} detectors but the reference ({reference.path}) has {reference.tod.shape[0]}; compare sets with the same detectors")
    ur, uo = reference.meta.units, other.meta.units
    if ur and uo and ur != uo:
        raise InputError(f"{what} ({other.path}) is in {uo!r} but the reference in {ur!r}")


def names_from_paths(paths: list) -> dict[str, Any]:
    """Name every set of a list after its file's stem (``_2``, ``_3`` ... for repeats): name -> set."""
    out: dict[str, Any] = {}
    for p in paths:
        base = Path(p.path if isinstance(p, TodFile) else p).stem or "synthetic"
        name, i = base, 2
        while name in out:
            name, i = f"{base}_{i}", i + 1
        out[name] = p
    return out


def load_inputs(reference: Any, synthetics: Mapping[str, Any] | list, training: Any, cfg: ValidationConfig) -> tuple[TodFile, dict[str, TodFile], TodFile | None]:
    """Read and check the inputs of :func:`crab.validation.validate.validate`: ``(reference, {name: synthetic}, training or None)``.

    Raises :class:`InputError` when no synthetic set is given, when a set is
    not compatible with the reference (:func:`check_compatible`), or when the
    reference is shorter than four time blocks.
    """
    ref = as_tod(reference, "reference")
    if isinstance(synthetics, (list, tuple)):
        synthetics = names_from_paths(synthetics)
    if not synthetics:
        raise InputError("no synthetic set to validate (give at least one)")
    syns = {str(k): as_tod(v, f"synthetic set {k!r}") for k, v in synthetics.items()}
    for k, s in syns.items():
        check_compatible(ref, s, f"synthetic set {k!r}")
    train = as_tod(training, "training") if training is not None else None
    if train is not None:
        check_compatible(ref, train, "training")
    fs = ref.meta.sampling_rate_hz
    B = block_samples(cfg, fs)
    if ref.n_samples // B < 4:
        raise InputError(f"reference too short: {ref.duration_s:.0f} s; need at least 4 blocks of {B / fs:.0f} s for two halves (lower block_s or give a longer reference)")
    return ref, syns, train
