"""CRAB TOD files that litebird_sim reads (``litebird_sim.read_list_of_observations``).

A CRAB TOD file (:mod:`crab.io.tod`) already has litebird_sim's main dataset,
``/tod`` float32 ``(n_detectors, n_samples)``.  litebird_sim 0.18's reader
(``read_one_observation``, the reader of ``write_list_of_observations`` files)
needs in addition, and this module adds (without touching ``/tod`` or CRAB's
root attributes, so the file stays a CRAB file):

=========================================  ==========================================
what litebird_sim reads                    written here
=========================================  ==========================================
``/tod`` attrs ``start_time``, ``mjd_time`` start time (s) of sample 0, ``False``
``/tod`` attr ``sampling_rate_hz``          the file's rate
``/tod`` attr ``detectors``                 JSON list of ``DetectorInfo`` dicts: name,
                                            sampling rate, band (see below)
``/tod`` attrs ``units``, ``description``   a ``litebird_sim.Units`` member name
                                            (see units below) and where the data come from
``rot_quaternion_NNNN`` (one per detector)  identity quaternion ``(1, 4)``
``pointing_provider_rot_quaternion``        identity quaternion ``(1, 4)``
root ``mpi_rank``, ``mpi_size``,            0, 1, 0, 0, ``[0, 1, ...]`` (or the
``global_index``, ``local_index``,          rank's values for MPI parts)
``det_idx``
=========================================  ==========================================

What differs from a file written by litebird_sim, and why:

* **No pointing.**  CRAB TOD carry no pointing; litebird_sim 0.18's reader
  requires the quaternion datasets anyway (it fails on a file without
  ``pointing_provider_rot_quaternion``), so identity quaternions stand in.
  Attach real pointings with ``lbs.prepare_pointings`` after reading if needed.
* **Units.**  CRAB samples are pW of absorbed-power equivalent; litebird_sim's
  ``Units`` has no power unit.  Unless converted (``conversion_factor`` and
  ``units``, e.g. pW -> K_CMB with the detector's responsivity), ``/tod``'s
  ``units`` attribute reads ``ADU`` ("arbitrary units" for litebird_sim) and its
  ``description`` says the values are pW.  CRAB's own root ``units`` attribute
  keeps the true unit.
* **Band.**  litebird_sim rebuilds a ``BandPassInfo`` from each detector dict
  and rejects ``bandcenter_ghz <= 0`` (even for its own default
  ``DetectorInfo()``); CRAB writes ``bandcenter_ghz`` / ``bandwidth_ghz``
  (default 140 / 42 GHz, LiteBIRD's 140 GHz channel: placeholders that affect
  nothing in CRAB) unless full detector dicts are given.
* **MPI layout.**  A whole file says ``mpi_size = 1``: read it in a serial
  program, or with ``limit_mpi_rank=False`` under MPI.  The per-rank parts of an
  MPI run (:mod:`crab.generation.mpi`, with ``litebird=``) say their own rank and size, so
  ``read_list_of_observations(sorted(parts))`` under the same number of ranks
  gives each rank its tile as one ``Observation``.
* **Events.**  CRAB's ``/events`` truth table is kept; litebird_sim ignores it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from crab.core.errors import FileFormatError, InputError
from crab.core.provenance import to_jsonable
from crab.io import tod as tod_io

#: Member names of ``litebird_sim.Units`` (0.18), accepted as ``units``.
LITEBIRD_UNITS = ("K_CMB", "mK_CMB", "uK_CMB", "K_RJ", "mK_RJ", "uK_RJ", "MJy_over_sr", "Jy_over_sr", "ADU", "Pure")

#: litebird_sim unit written for data left in a unit it does not know (e.g. pW).
FALLBACK_UNITS = "ADU"

DEFAULT_BANDCENTER_GHZ = 140.0
DEFAULT_BANDWIDTH_GHZ = 42.0

_IDENTITY_QUAT = np.array([[0.0, 0.0, 0.0, 1.0]])


def litebird_units_for(units: str) -> str:
    """The ``litebird_sim.Units`` name for a CRAB unit string (``ADU`` when it has none)."""
    return units if units in LITEBIRD_UNITS else FALLBACK_UNITS


def detector_dicts(
    names: Sequence[str],
    sampling_rate_hz: float,
    *,
    bandcenter_ghz: float = DEFAULT_BANDCENTER_GHZ,
    bandwidth_ghz: float = DEFAULT_BANDWIDTH_GHZ,
) -> list[dict[str, Any]]:
    """Minimal ``DetectorInfo`` dicts litebird_sim accepts: name, sampling rate and a band."""
    if not bandcenter_ghz > 0 or not bandwidth_ghz > 0:
        raise InputError(f"bandcenter_ghz and bandwidth_ghz must be > 0 (litebird_sim rejects others), got {bandcenter_ghz}, {bandwidth_ghz}")
    return [
        {"name": str(n), "sampling_rate_hz": float(sampling_rate_hz), "bandcenter_ghz": float(bandcenter_ghz), "bandwidth_ghz": float(bandwidth_ghz)}
        for n in names
    ]


def add_litebird_layout(
    f: h5py.File,
    meta: tod_io.TodMetadata,
    *,
    units: str | None = None,
    description: str | None = None,
    detectors_info: Sequence[dict[str, Any]] | None = None,
    bandcenter_ghz: float = DEFAULT_BANDCENTER_GHZ,
    bandwidth_ghz: float = DEFAULT_BANDWIDTH_GHZ,
    det_idx: Sequence[int] | None = None,
    mpi_rank: int = 0,
    mpi_size: int = 1,
    global_index: int = 0,
    local_index: int = 0,
) -> None:
    """Add what litebird_sim's reader needs to an open CRAB TOD file (``/tod`` left untouched).

    Parameters
    ----------
    f : h5py.File
        Open for writing, with a ``/tod`` dataset of ``meta.n_detectors`` rows.
    meta : TodMetadata
        The file's metadata (detector names, rate, start time, units).
    units : str, optional
        ``litebird_sim.Units`` member name for ``/tod``; default
        :func:`litebird_units_for` ``(meta.units)``.
    description : str, optional
        ``/tod`` description (default: what made the file and its true unit).
    detectors_info : list of dict, optional
        Full ``DetectorInfo`` dicts, one per detector, in file order (e.g.
        ``dataclasses.asdict`` of litebird_sim's ``DetectorInfo``); their
        ``name`` must match ``meta.detectors``.  Default :func:`detector_dicts`.
    bandcenter_ghz, bandwidth_ghz : float
        Band written in the default detector dicts (GHz).
    det_idx : list of int, optional
        Global detector indices of the rows (default ``0..n-1``).
    mpi_rank, mpi_size, global_index, local_index : int
        litebird_sim's bookkeeping of which process wrote which observation.
    """
    if "tod" not in f:
        raise InputError(f"{f.filename}: no dataset 'tod'")
    ds = f["tod"]
    n_det = meta.n_detectors
    if ds.shape[0] != n_det:
        raise InputError(f"{f.filename}: 'tod' has {ds.shape[0]} rows for {n_det} detectors")
    units = litebird_units_for(meta.units) if units is None else units
    if units not in LITEBIRD_UNITS:
        raise InputError(f"units {units!r} is not a litebird_sim Units name; expected one of {', '.join(LITEBIRD_UNITS)}")
    if detectors_info is None:
        info = detector_dicts(meta.detectors, meta.sampling_rate_hz, bandcenter_ghz=bandcenter_ghz, bandwidth_ghz=bandwidth_ghz)
    else:
        info = [dict(d) for d in detectors_info]
        names = [str(d.get("name", "")) for d in info]
        if names != meta.detectors:
            raise InputError(f"detectors_info names {names} do not match the file's detectors {meta.detectors}")
        for d in info:
            d.pop("quat", None)  # stored in rot_quaternion_NNNN instead
    if description is None:
        description = f"CRAB {meta.kind} TOD" + (f" in {meta.units} (litebird_sim units {units} stand for it)" if units != meta.units else "")
    idx = list(range(n_det)) if det_idx is None else [int(i) for i in det_idx]
    if len(idx) != n_det:
        raise InputError(f"det_idx has {len(idx)} entries for {n_det} detectors")

    a = ds.attrs
    a["start_time"] = float(meta.start_time_s)
    a["mjd_time"] = False
    a["sampling_rate_hz"] = float(meta.sampling_rate_hz)
    a["detectors"] = json.dumps(to_jsonable(info))
    a["description"] = description
    a["units"] = units
    for i in range(n_det):
        name = f"rot_quaternion_{i:04d}"
        if name not in f:
            f.create_dataset(name, data=_IDENTITY_QUAT)
    if "pointing_provider_rot_quaternion" not in f:
        f.create_dataset("pointing_provider_rot_quaternion", data=_IDENTITY_QUAT)
    f.attrs["mpi_rank"] = int(mpi_rank)
    f.attrs["mpi_size"] = int(mpi_size)
    f.attrs["global_index"] = int(global_index)
    f.attrs["local_index"] = int(local_index)
    f.attrs["det_idx"] = json.dumps(idx)


def make_litebird_readable(path: str | os.PathLike, **kwargs: Any) -> Path:
    """Add the litebird_sim layout to an existing CRAB TOD file, in place (no data copied).

    Only attributes and tiny datasets are written, so this is cheap even for a
    multi-terabyte file (or the virtual file of an MPI run).  The samples are
    not converted: for a unit conversion use :func:`export_tod`.  Keyword
    arguments are those of :func:`add_litebird_layout`.
    """
    meta, _ = tod_io.read_metadata(path)
    with h5py.File(path, "r+") as f:
        add_litebird_layout(f, meta, **kwargs)
    return Path(path)


def export_tod(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    conversion_factor: float = 1.0,
    units: str | None = None,
    overwrite: bool = True,
    chunk_samples: int = 1 << 18,
    **layout: Any,
) -> Path:
    """Copy a CRAB TOD file to a litebird_sim-readable one, optionally converting units.

    Parameters
    ----------
    src, dst : path-like
        Input CRAB TOD file and output file (written atomically).
    conversion_factor : float
        Output samples are ``float32(float64(input) * conversion_factor)``
        (output units per input unit, e.g. K_CMB per pW); 1.0 copies the values.
    units : str, optional
        Unit of the output (a ``litebird_sim.Units`` name).  Required when
        ``conversion_factor != 1``; otherwise the input's unit is kept (and
        ``/tod`` says ``ADU`` to litebird_sim if it has no such unit).
    overwrite : bool
        Replace an existing ``dst``.
    chunk_samples : int
        Samples copied at a time (bounded memory).
    **layout
        Further keyword arguments of :func:`add_litebird_layout`
        (``detectors_info``, ``bandcenter_ghz``, ``bandwidth_ghz``, ``description``).

    Returns
    -------
    Path
        ``dst``.
    """
    factor = float(conversion_factor)
    if not np.isfinite(factor) or factor == 0:
        raise InputError(f"conversion_factor must be a finite non-zero number, got {conversion_factor!r}")
    if factor != 1.0 and units is None:
        raise InputError("a conversion_factor needs the unit it converts to (units=, a litebird_sim Units name such as K_CMB)")
    if units is not None and units not in LITEBIRD_UNITS:
        raise InputError(f"units {units!r} is not a litebird_sim Units name; expected one of {', '.join(LITEBIRD_UNITS)}")
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise InputError(f"export output {dst} is the input file; use make_litebird_readable to modify a file in place")
    meta, n_samples = tod_io.read_metadata(src)
    out_meta = tod_io.TodMetadata(**{**meta.__dict__, "units": units or meta.units})
    if factor != 1.0:
        out_meta.config = {**meta.config, "export": {"from_units": meta.units, "conversion_factor": factor, "source": str(src)}}
    with tod_io.TodWriter(dst, out_meta, n_samples=n_samples, overwrite=overwrite) as w:
        for start, chunk in tod_io.iter_tod_chunks(src, chunk_samples=chunk_samples):
            bad = ~np.isfinite(chunk)
            if bad.any():
                col = int(np.argmax(bad.any(axis=0)))  # the first bad sample in time, on its first detector
                det = int(np.argmax(bad[:, col]))
                raise FileFormatError(
                    f"{src}: sample {start + int(col)} of detector {meta.detectors[int(det)]} is {chunk[det, col]} (expected finite samples; "
                    f"{int(bad.sum())} such in samples {start}-{start + chunk.shape[1] - 1}; for an MPI output: is its .parts folder beside it?)"
                )
            w.write(chunk if factor == 1.0 else convert(chunk, factor))
        events = tod_io.read_tod(src, n_samples=0, check_finite=False).events
        if events is not None:
            w.write_events(events)
        add_litebird_layout(w.dataset.file, out_meta, **layout)
    return dst


def convert(tod_pw: np.ndarray, conversion_factor: float) -> np.ndarray:
    """``float32(float64(tod) * conversion_factor)``: the one unit conversion CRAB uses everywhere."""
    return (np.asarray(tod_pw, dtype=np.float64) * float(conversion_factor)).astype(np.float32)

