"""HDF5 files of time-ordered data (TOD), with the truth of every hit.

Layout (one file, litebird_sim-like where it does not conflict)::

    /tod                      float32 (n_detectors, n_samples), chunked
        attrs: units               e.g. "pW" (absorbed-power equivalent)
    / (root attributes)
        format                 "crab-tod" (checked on reading when present)
        format_version         integer, see FORMAT_VERSION
        sampling_rate_hz       float
        start_time_s           float, time of sample 0 (s)
        start_time             same value (litebird_sim's attribute name)
        units                  units of /tod
        detectors              JSON list of detector names
        kind                   "montecarlo", "gan", "template", ...
        config                 JSON of the full configuration that made the file
        seed                   integer seed
        crab_version           package version that wrote the file
        description            free text
    /events                   group, one row per hit (Monte Carlo truth only)
        time_s      float64    time of the hit (s, same clock as start_time_s)
        detector    int32      detector index, -1 for a hit on the wafer
        charge_z    int16      charge number Z of the particle
        energy_kev  float64    energy deposited (keV)
        kind        uint8      0 = direct (absorber), 1 = wafer
        attrs: kind_labels     JSON {"0": "direct", "1": "wafer"}

Files are written under a temporary name in the same folder and renamed
into place only when complete, so a killed run never leaves a half-written
file under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np

from crab import __version__
from crab.core.errors import FileFormatError, InputError
from crab.core.formats import check_format, format_record
from crab.core.paths import check_free_space, check_output_file, temporary_path
from crab.core.provenance import to_jsonable
from crab.core.units import check_sample_span, format_duration
from crab.physics.events import (  # noqa: F401  (re-exported: the file layer writes what physics defines)
    _EVENT_COLUMNS,
    _OPTIONAL_COLUMNS,
    EVENT_KIND_DIRECT,
    EVENT_KIND_LABELS,
    EVENT_KIND_WAFER,
    EventTable,
    default_detector_names,
)

FORMAT_NAME = "crab-tod"
#: Bumped when the layout changes incompatibly.
FORMAT_VERSION = 1

# --------------------------------------------------------------------------- metadata
@dataclass
class TodMetadata:
    """Everything about a TOD file except the samples.

    Attributes
    ----------
    sampling_rate_hz : float
        Sampling rate of ``/tod`` (Hz).
    detectors : list of str
        Detector names, one per row of ``/tod``.
    start_time_s : float
        Time of the first sample (s).
    units : str
        Units of the samples.
    kind : str
        What made the file (``"montecarlo"``, ``"gan"``, ``"template"``...).
    config : dict
        Full configuration of the run that made the file (JSON-serialisable).
    seed : int or None
        Seed of the run.
    crab_version : str
        Version of the package that wrote the file.
    description : str
        Free text.
    """

    sampling_rate_hz: float
    detectors: list[str]
    start_time_s: float = 0.0
    units: str = "pW"
    kind: str = "montecarlo"
    config: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    crab_version: str = __version__
    description: str = ""

    def __post_init__(self) -> None:
        rate = float(self.sampling_rate_hz)
        if not np.isfinite(rate) or rate <= 0:
            raise InputError(f"sampling_rate_hz must be a positive finite number of Hz, got {self.sampling_rate_hz!r}")
        self.sampling_rate_hz = rate
        self.detectors = [str(d) for d in self.detectors]
        if not self.detectors:
            raise InputError("a TOD needs at least one detector, got an empty detector list")
        if len(set(self.detectors)) != len(self.detectors):
            raise InputError(f"detector names must be unique, got {self.detectors}")
        self.start_time_s = float(self.start_time_s)

    @property
    def n_detectors(self) -> int:
        return len(self.detectors)


# --------------------------------------------------------------------------- writing
def write_root_attrs(f: h5py.File, meta: TodMetadata) -> None:
    """Write the root attributes of the layout (see module docstring) and the units of ``/tod``, if present."""
    a = f.attrs
    for key, value in format_record(FORMAT_NAME, FORMAT_VERSION).items():
        a[key] = value
    a["sampling_rate_hz"] = meta.sampling_rate_hz
    a["start_time_s"] = meta.start_time_s
    a["start_time"] = meta.start_time_s
    a["units"] = meta.units
    a["detectors"] = json.dumps(meta.detectors)
    a["kind"] = meta.kind
    a["config"] = json.dumps(to_jsonable(meta.config), sort_keys=True)
    a["seed"] = -1 if meta.seed is None else int(meta.seed)
    a["crab_version"] = meta.crab_version  # the version that made the data (kept when a file is copied)
    a["description"] = meta.description
    if "tod" in f:
        f["tod"].attrs["units"] = meta.units


#: Bytes of one ``/events`` row (time_s float64, detector int32, charge_z int16, energy_kev float64, kind uint8).
EVENT_ROW_BYTES = sum(dt.itemsize for dt in _EVENT_COLUMNS.values())
#: Bytes of one row with every optional column too (the table of generated glitches).
FULL_EVENT_ROW_BYTES = EVENT_ROW_BYTES + sum(dt.itemsize for dt, _ in _OPTIONAL_COLUMNS.values())
#: Room for a file's attributes, run record and HDF5 structures beyond its datasets (bytes).
FILE_OVERHEAD_BYTES = 1 << 20


def tod_file_bytes(n_detectors: int, n_samples: int, n_events: int = 0) -> int:
    """Size of a TOD file of ``n_detectors`` x ``n_samples`` float32 samples and ``n_events`` truth rows (bytes):
    the data, exactly, plus :data:`FILE_OVERHEAD_BYTES` and the chunk index (one entry of 64 bytes per chunk)."""
    data = 4 * int(n_detectors) * int(n_samples) + EVENT_ROW_BYTES * int(n_events)
    return data + FILE_OVERHEAD_BYTES + 64 * int(n_detectors) * (int(n_samples) // 65536 + 1)


def append_events(f: h5py.File, events: EventTable, columns: Sequence[str] | None = None) -> None:
    """Append rows to a growing ``/events`` table of an open file (streamed truth, e.g. of generated glitches).

    ``columns``: the columns to store (default: every column); fixed by the first call.
    """
    g = f.get("events")
    if g is None:
        g = f.create_group("events")
        g.attrs["kind_labels"] = json.dumps({str(k): v for k, v in EVENT_KIND_LABELS.items()})
        for name in columns or (*_EVENT_COLUMNS, *_OPTIONAL_COLUMNS):
            # shuffle + light gzip: the constant and small-integer columns shrink to almost nothing
            g.create_dataset(name, shape=(0,), maxshape=(None,), dtype=getattr(events, name).dtype, chunks=(1 << 14,), shuffle=True, compression="gzip", compression_opts=1)
    n = len(events)
    if not n:
        return
    for name in g:
        d = g[name]
        end = d.shape[0] + n
        d.resize((end,))
        d[end - n :] = getattr(events, name)


def set_events_note(f: h5py.File, note: dict) -> None:
    """Record what the ``/events`` table of an open file holds (JSON attribute ``note`` of the group)."""
    f["events"].attrs["note"] = json.dumps(note)


class TodWriter:
    """Stream TOD into an HDF5 file, chunk by chunk, and rename it into place at the end.

    Use as a context manager; on an exception (or a kill) the temporary file is
    removed and nothing appears under the final name.

    Parameters
    ----------
    path : path-like
        Final file name.
    meta : TodMetadata
        Metadata written as attributes.
    n_samples : int, optional
        Total number of samples if known (the dataset is then allocated at
        once); otherwise it grows with each :meth:`write`.
    chunk_samples : int
        HDF5 chunk length along time (samples).
    compression : str or None
        HDF5 compression filter (``None`` for the fastest writes, ``"gzip"``).
    overwrite : bool
        Replace an existing file at ``path``; otherwise an existing file is an error.
    reserve_bytes : int
        Room needed beyond ``/tod`` (e.g. the expected ``/events``): with ``n_samples``, the
        free disk space is checked against the whole file (:func:`tod_file_bytes`) before it is created.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        meta: TodMetadata,
        *,
        n_samples: int | None = None,
        chunk_samples: int = 1 << 16,
        compression: str | None = None,
        overwrite: bool = True,
        reserve_bytes: int = 0,
    ) -> None:
        self.path = check_output_file(path, overwrite=overwrite, option="overwrite=True")
        self.meta = meta
        self.n_samples_expected = n_samples
        if n_samples is not None:
            check_sample_span(int(n_samples), meta.sampling_rate_hz, what=f"{self.path}")
            size = tod_file_bytes(meta.n_detectors, n_samples) + int(reserve_bytes)
            check_free_space(self.path.parent, size, what=f"{self.path} ({meta.n_detectors} detector{'s' if meta.n_detectors > 1 else ''} x {format_duration(n_samples / meta.sampling_rate_hz)} at {meta.sampling_rate_hz:g} Hz)")
        self._tmp = temporary_path(self.path)
        self._closed = False
        self.n_written = 0
        self._file = h5py.File(self._tmp, "w")
        try:  # anything (even a signal turned into an exception) from here on removes the temporary file
            n_det = meta.n_detectors
            chunk = (1, int(max(1, min(chunk_samples, n_samples or chunk_samples))))
            if n_samples is not None:
                self._dset = self._file.create_dataset(
                    "tod", shape=(n_det, int(n_samples)), dtype=np.float32, chunks=chunk, compression=compression
                )
            else:
                self._dset = self._file.create_dataset(
                    "tod", shape=(n_det, 0), maxshape=(n_det, None), dtype=np.float32, chunks=chunk, compression=compression
                )
            write_root_attrs(self._file, meta)
        except BaseException:
            self.abort()
            raise

    @property
    def dataset(self) -> h5py.Dataset:
        """The ``/tod`` dataset being written (for advanced direct writes)."""
        return self._dset

    def write(self, tod_chunk: np.ndarray) -> None:
        """Append ``tod_chunk`` (n_detectors, n) along time."""
        chunk = np.asarray(tod_chunk)
        if chunk.ndim != 2 or chunk.shape[0] != self.meta.n_detectors:
            raise InputError(f"TOD chunk must have shape ({self.meta.n_detectors}, n), got {chunk.shape}")
        n = chunk.shape[1]
        end = self.n_written + n
        if self.n_samples_expected is None:
            self._dset.resize((self.meta.n_detectors, end))
        elif end > self.n_samples_expected:
            raise InputError(f"writing past the declared length: {end} > {self.n_samples_expected} samples")
        self._dset.write_direct(np.ascontiguousarray(chunk, dtype=np.float32), dest_sel=np.s_[:, self.n_written : end])
        self.n_written = end

    def write_events(self, events: EventTable) -> None:
        """Write the ``/events`` truth table (once)."""
        g = self._file.create_group("events")
        for name in events.recorded_columns():
            g.create_dataset(name, data=getattr(events, name))
        g.attrs["kind_labels"] = json.dumps({str(k): v for k, v in EVENT_KIND_LABELS.items()})

    def close(self) -> Path:
        """Finish the file and rename it to its final name; returns the final path."""
        if self._closed:
            return self.path
        if self.n_samples_expected is not None and self.n_written != self.n_samples_expected:
            self.abort()
            raise InputError(f"TOD incomplete: wrote {self.n_written} of {self.n_samples_expected} samples")
        self._file.close()
        os.replace(self._tmp, self.path)
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Discard the temporary file; nothing appears under the final name."""
        if self._closed:
            return
        try:
            self._file.close()
        finally:
            self._tmp.unlink(missing_ok=True)
            self._closed = True

    def __enter__(self) -> "TodWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_tod(path: str | os.PathLike, tod: np.ndarray, meta: TodMetadata, events: EventTable | None = None) -> Path:
    """Write a whole TOD array (n_detectors, n_samples) at once (atomically)."""
    tod = np.asarray(tod)
    if tod.ndim != 2:
        raise InputError(f"TOD must be 2-D (n_detectors, n_samples), got shape {tod.shape}")
    with TodWriter(path, meta, n_samples=tod.shape[1]) as w:
        w.write(tod)
        if events is not None:
            w.write_events(events)
    return Path(path)


# --------------------------------------------------------------------------- reading
@dataclass
class TodFile:
    """A TOD file read into memory.

    Attributes
    ----------
    tod : ndarray of float32, shape (n_detectors, n_samples)
    meta : TodMetadata
    events : EventTable or None
        The truth table, if the file has one.
    path : Path
    """

    tod: np.ndarray
    meta: TodMetadata
    events: EventTable | None
    path: Path

    @property
    def n_samples(self) -> int:
        return int(self.tod.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.meta.sampling_rate_hz

    @property
    def time_s(self) -> np.ndarray:
        """Time of every sample (s)."""
        return self.meta.start_time_s + np.arange(self.n_samples) / self.meta.sampling_rate_hz


def _attr_str(attrs: h5py.AttributeManager, name: str, path: Path) -> str:
    if name not in attrs:
        raise FileFormatError(f"{path}: attribute {name!r} missing (not a complete crab TOD file)")
    v = attrs[name]
    return v.decode() if isinstance(v, bytes) else str(v)


def _read_meta(f: h5py.File, path: Path) -> TodMetadata:
    a = f.attrs
    if "tod" not in f or not isinstance(f["tod"], h5py.Dataset):
        raise FileFormatError(f"{path}: no dataset 'tod' (expected a crab TOD file)")
    ds = f["tod"]
    if ds.ndim != 2:
        raise FileFormatError(f"{path}: dataset 'tod' must be 2-D (n_detectors, n_samples), has shape {ds.shape}")
    if ds.dtype != np.float32:
        raise FileFormatError(f"{path}: dataset 'tod' must be float32, is {ds.dtype}")
    if "format" in a:  # files without one (litebird_sim's) are read by their layout alone
        record = {k: (a[k].decode() if isinstance(a[k], bytes) else a[k]) for k in ("format", "format_version", "crab_version") if k in a}
        check_format(record, name=FORMAT_NAME, version=FORMAT_VERSION, where=path, what="CRAB TOD", remedy="write it again with this version", error=FileFormatError)
    try:
        detectors = json.loads(_attr_str(a, "detectors", path))
        config = json.loads(_attr_str(a, "config", path)) if "config" in a else {}
    except json.JSONDecodeError as exc:
        raise FileFormatError(f"{path}: attribute is not valid JSON ({exc})") from None
    if isinstance(detectors, list) and detectors and isinstance(detectors[0], dict):
        detectors = [d.get("name", str(i)) for i, d in enumerate(detectors)]
    if len(detectors) != ds.shape[0]:
        raise FileFormatError(f"{path}: {len(detectors)} detector names for a TOD of {ds.shape[0]} rows")
    if "sampling_rate_hz" not in a:
        raise FileFormatError(f"{path}: attribute 'sampling_rate_hz' missing")
    seed = int(a["seed"]) if "seed" in a else -1
    try:
        return TodMetadata(
            sampling_rate_hz=float(a["sampling_rate_hz"]),
            detectors=detectors,
            start_time_s=float(a.get("start_time_s", a.get("start_time", 0.0))),
            units=_attr_str(a, "units", path) if "units" in a else str(ds.attrs.get("units", "")),
            kind=_attr_str(a, "kind", path) if "kind" in a else "unknown",
            config=config,
            seed=None if seed < 0 else seed,
            crab_version=_attr_str(a, "crab_version", path) if "crab_version" in a else "unknown",
            description=_attr_str(a, "description", path) if "description" in a else "",
        )
    except InputError as exc:
        raise FileFormatError(f"{path}: {exc}") from None


def _read_events(f: h5py.File, path: Path, n_detectors: int) -> EventTable | None:
    if "events" not in f:
        return None
    g = f["events"]
    missing = [c for c in _EVENT_COLUMNS if c not in g]
    if missing:
        raise FileFormatError(f"{path}: events group lacks columns {missing}")
    try:
        ev = EventTable(**{c: g[c][()] for c in (*_EVENT_COLUMNS, *_OPTIONAL_COLUMNS) if c in g})
    except InputError as exc:
        raise FileFormatError(f"{path}: {exc}") from None
    if len(ev) and (ev.detector.min() < -1 or ev.detector.max() >= n_detectors):
        raise FileFormatError(f"{path}: event detector indices outside [-1, {n_detectors - 1}]")
    if len(ev) and not set(np.unique(ev.kind)).issubset(EVENT_KIND_LABELS):
        raise FileFormatError(f"{path}: unknown event kinds {sorted(set(np.unique(ev.kind)) - set(EVENT_KIND_LABELS))}")
    return ev


def _open(path: str | os.PathLike) -> tuple[h5py.File, Path]:
    p = Path(path)
    if not p.exists():
        raise FileFormatError(f"file not found: {p}")
    if p.is_dir():
        raise FileFormatError(f"{p} is a folder, expected an HDF5 TOD file")
    try:
        return h5py.File(p, "r"), p
    except OSError as exc:
        raise FileFormatError(f"{p}: not a readable HDF5 file ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None


def read_metadata(path: str | os.PathLike) -> tuple[TodMetadata, int]:
    """Metadata and number of samples of a TOD file, without loading the samples."""
    f, p = _open(path)
    with f:
        meta = _read_meta(f, p)
        return meta, int(f["tod"].shape[1])


def read_tod(
    path: str | os.PathLike,
    *,
    detectors: slice | Sequence[int] | None = None,
    start_sample: int = 0,
    n_samples: int | None = None,
    check_finite: bool = True,
) -> TodFile:
    """Read (part of) a TOD file and validate it.

    Parameters
    ----------
    path : path-like
        The HDF5 file.
    detectors : slice or sequence of int, optional
        Rows to read (default all).
    start_sample, n_samples : int
        Time range to read (default all).
    check_finite : bool
        Raise if the samples read contain NaN or inf.

    Raises
    ------
    FileFormatError
        Missing file, not HDF5, or not in the crab TOD layout; NaN/inf samples.
    """
    f, p = _open(path)
    with f:
        meta = _read_meta(f, p)
        ds = f["tod"]
        total = ds.shape[1]
        stop = total if n_samples is None else min(total, start_sample + int(n_samples))
        if start_sample < 0 or start_sample > total:
            raise InputError(f"start_sample {start_sample} outside the file's {total} samples")
        rows = slice(None) if detectors is None else detectors
        tod = ds[rows, start_sample:stop] if isinstance(rows, slice) else ds[sorted(rows), start_sample:stop]
        tod = np.asarray(tod, dtype=np.float32)
        if check_finite and not np.all(np.isfinite(tod)):
            bad = int(np.sum(~np.isfinite(tod)))
            raise FileFormatError(f"{p}: TOD contains {bad} NaN or infinite samples")
        events = _read_events(f, p, meta.n_detectors)
    if rows != slice(None):
        names = np.array(meta.detectors)[rows]
        meta.detectors = list(np.atleast_1d(names))
    if start_sample:
        meta.start_time_s += start_sample / meta.sampling_rate_hz
    return TodFile(tod=tod, meta=meta, events=events, path=p)


def iter_tod_chunks(path: str | os.PathLike, chunk_samples: int = 1 << 20) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start_sample, tod_chunk)`` over a (possibly huge) TOD file, bounded memory."""
    f, p = _open(path)
    with f:
        _read_meta(f, p)
        ds = f["tod"]
        for start in range(0, ds.shape[1], chunk_samples):
            yield start, np.asarray(ds[:, start : start + chunk_samples], dtype=np.float32)


# --------------------------------------------------------------------------- checksum
class TodChecksum:
    """SHA-256 of a TOD, independent of how it is chunked or split by detector.

    One SHA-256 per detector row over its float32 little-endian samples in time
    order; the checksum is the SHA-256 of the concatenated row digests (hex),
    so rows computed in different processes combine without re-reading data.
    """

    def __init__(self, n_detectors: int) -> None:
        self._h = [hashlib.sha256() for _ in range(int(n_detectors))]

    def update(self, chunk: np.ndarray) -> None:
        """Add the next samples ``chunk`` (n_detectors, n) in time order."""
        c = np.asarray(chunk)
        if c.dtype != np.dtype("<f4"):
            c = c.astype("<f4")
        for h, row in zip(self._h, c):
            h.update(np.ascontiguousarray(row))

    def digests(self) -> list[bytes]:
        """The per-row digests (to be combined with those of other rows)."""
        return [h.digest() for h in self._h]

    @staticmethod
    def combine(digests: Sequence[bytes]) -> str:
        """Checksum (hex) of rows given by their digests, in detector order."""
        return hashlib.sha256(b"".join(digests)).hexdigest()

    def hexdigest(self) -> str:
        return self.combine(self.digests())


def tod_checksum(tod: np.ndarray) -> str:
    """:class:`TodChecksum` of an in-memory TOD (n_detectors, n_samples)."""
    tod = np.atleast_2d(np.asarray(tod))
    c = TodChecksum(tod.shape[0])
    c.update(tod)
    return c.hexdigest()


def file_checksum(path: str | os.PathLike, chunk_samples: int = 1 << 22) -> str:
    """:class:`TodChecksum` of the ``/tod`` dataset of a TOD file (read in chunks)."""
    meta, _ = read_metadata(path)
    c = TodChecksum(meta.n_detectors)
    for _, chunk in iter_tod_chunks(path, chunk_samples):
        c.update(chunk)
    return c.hexdigest()
