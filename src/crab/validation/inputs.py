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


def as_reference_list(references: Any) -> list[Any]:
    """``references`` as a list: one path or :class:`TodFile`, or a sequence of them (at least one)."""
    if isinstance(references, (str, os.PathLike, TodFile)):
        return [references]
    try:
        out = list(references)
    except TypeError:
        raise InputError(f"reference: expected a TodFile, a path or a sequence of them, got {type(references).__name__}") from None
    if not out:
        raise InputError("no reference given (give at least one held-out Monte Carlo file)")
    return out


def check_references(refs: list[TodFile]) -> None:
    """Raise :class:`InputError` unless the references are distinct runs of one setup (sampling rate, detectors, units).

    Two files with the same seed and the same configuration are one Monte
    Carlo run twice, not independent references.
    """
    first = refs[0]
    for k, r in enumerate(refs[1:], start=2):
        what = f"the references must be independent Monte Carlo runs of one setup, but reference {k} ({r.path})"
        if not np.isclose(r.meta.sampling_rate_hz, first.meta.sampling_rate_hz, rtol=1e-9, atol=0):
            raise InputError(f"{what} is sampled at {r.meta.sampling_rate_hz:g} Hz and reference 1 ({first.path}) at {first.meta.sampling_rate_hz:g} Hz")
        if r.tod.shape[0] != first.tod.shape[0]:
            raise InputError(f"{what} has {r.tod.shape[0]} detectors and reference 1 ({first.path}) has {first.tod.shape[0]}")
        if r.meta.units and first.meta.units and r.meta.units != first.meta.units:
            raise InputError(f"{what} is in {r.meta.units!r} and reference 1 ({first.path}) in {first.meta.units!r}")
    for k, r in enumerate(refs):
        for j in range(k):
            o = refs[j]
            same_file = r is o or (Path(r.path).is_file() and Path(o.path).is_file() and os.path.samefile(r.path, o.path))
            same_run = r.meta.seed is not None and r.meta.seed == o.meta.seed and r.meta.config == o.meta.config
            if same_file or same_run:
                raise InputError(f"reference {k + 1} ({r.path}) is the same Monte Carlo run as reference {j + 1} ({o.path}){f' (seed {r.meta.seed})' if same_run else ''}; give independent runs (other seeds)")


def load_inputs(reference: Any, synthetics: Mapping[str, Any] | list, training: Any, cfg: ValidationConfig) -> tuple[list[TodFile], dict[str, TodFile], TodFile | None]:
    """Read and check the inputs of :func:`crab.validation.validate.validate`: ``([references], {name: synthetic}, training or None)``.

    ``reference`` is one path or :class:`TodFile`, or a sequence of them.
    Raises :class:`InputError` when no synthetic set is given, when the
    references are not distinct runs of one setup (:func:`check_references`),
    when a set is not compatible with the references (:func:`check_compatible`),
    or when a reference is shorter than four time blocks.
    """
    refs = [as_tod(r, "reference" if i == 0 else f"reference {i + 1}") for i, r in enumerate(as_reference_list(reference))]
    check_references(refs)
    ref = refs[0]
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
    for r in refs:
        if r.n_samples // B < 4:
            raise InputError(f"reference {r.path} too short: {r.duration_s:.0f} s; need at least 4 blocks of {B / fs:.0f} s for two halves (lower block_s or give a longer reference)")
    return refs, syns, train
