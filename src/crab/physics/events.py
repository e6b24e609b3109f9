"""The truth of a Monte Carlo run: one row per particle that deposited energy.

Physics defines the table (:class:`EventTable`) and the detector naming; the
file layer (:mod:`crab.io.tod`) only writes and reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from crab.core.errors import InputError

EVENT_KIND_DIRECT = 0
EVENT_KIND_WAFER = 1
EVENT_KIND_LABELS = {EVENT_KIND_DIRECT: "direct", EVENT_KIND_WAFER: "wafer"}

_EVENT_COLUMNS: dict[str, np.dtype] = {
    "time_s": np.dtype(np.float64),
    "detector": np.dtype(np.int32),
    "charge_z": np.dtype(np.int16),
    "energy_kev": np.dtype(np.float64),
    "kind": np.dtype(np.uint8),
}

#: Columns a table may carry beyond the Monte Carlo's, with the value that means "not recorded"
#: (generated glitches record them: :meth:`crab.models.base.TileSource.tile_events`).
_OPTIONAL_COLUMNS: dict[str, tuple[np.dtype, float]] = {
    "amplitude": (np.dtype(np.float64), np.nan),
    "sample": (np.dtype(np.int64), -1),
    "wafer": (np.dtype(np.int64), -1),
    "family": (np.dtype(np.int16), -1),
    "tau_s": (np.dtype(np.float64), np.nan),
}


# --------------------------------------------------------------------------- events
@dataclass
class EventTable:
    """Truth of the hits: one row per particle that deposited energy.

    Attributes
    ----------
    time_s : ndarray of float64
        Hit time (s).
    detector : ndarray of int32
        Detector index hit, ``-1`` for a hit on the wafer.
    charge_z : ndarray of int16
        Charge number Z of the particle.
    energy_kev : ndarray of float64
        Deposited energy (keV).
    kind : ndarray of uint8
        :data:`EVENT_KIND_DIRECT` or :data:`EVENT_KIND_WAFER`.
    amplitude : ndarray of float64
        Peak height of the glitch in the TOD's units (a wafer hit: on a detector of coupling 1);
        NaN where not recorded (the Monte Carlo records energies, not heights).
    sample : ndarray of int64
        Absolute index of the sample the hit lies in (``floor(time_s * f_s)`` for a run from
        time 0); -1 where not recorded.
    wafer : ndarray of int64
        Wafer of the hit (a wafer hit) or of the detector hit (a direct hit); -1 where not recorded.
    family : ndarray of int16
        Which of the generator's glitch families placed it (the GAN's event channel; 0 for
        the template and the wafer layer); -1 where not recorded (the Monte Carlo).
    tau_s : ndarray of float64
        Decay time (s) of a glitch whose shape has one (the template's); NaN otherwise.

    The last five columns are optional: a table whose values are all "not recorded" has
    none in a file (:meth:`recorded_columns`).
    """

    time_s: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    detector: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    charge_z: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    energy_kev: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    kind: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    amplitude: np.ndarray | None = None
    sample: np.ndarray | None = None
    wafer: np.ndarray | None = None
    family: np.ndarray | None = None
    tau_s: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name, dtype in _EVENT_COLUMNS.items():
            setattr(self, name, np.ascontiguousarray(getattr(self, name), dtype=dtype).reshape(-1))
        n_rows = len(self.time_s)
        for name, (dtype, missing) in _OPTIONAL_COLUMNS.items():
            v = getattr(self, name)
            setattr(self, name, np.full(n_rows, missing, dtype) if v is None else np.ascontiguousarray(v, dtype=dtype).reshape(-1))
        columns = (*_EVENT_COLUMNS, *_OPTIONAL_COLUMNS)
        n = {len(getattr(self, c)) for c in columns}
        if len(n) > 1:
            raise InputError(f"event columns have different lengths: { {c: len(getattr(self, c)) for c in columns} }")

    def recorded_columns(self) -> list[str]:
        """Names of the columns to store: the Monte Carlo's and each optional one with a recorded value."""
        extra = [c for c, (_, missing) in _OPTIONAL_COLUMNS.items() if len(self) and not _all_missing(getattr(self, c), missing)]
        return [*_EVENT_COLUMNS, *extra]

    def __len__(self) -> int:
        return len(self.time_s)

    @staticmethod
    def concatenate(tables: Sequence["EventTable"]) -> "EventTable":
        """Concatenate several tables (in the given order)."""
        if not tables:
            return EventTable()
        return EventTable(**{c: np.concatenate([getattr(t, c) for t in tables]) for c in (*_EVENT_COLUMNS, *_OPTIONAL_COLUMNS)})

    def select(self, mask: np.ndarray) -> "EventTable":
        """Rows where ``mask`` is true (or at the given indices)."""
        return EventTable(**{c: getattr(self, c)[mask] for c in (*_EVENT_COLUMNS, *_OPTIONAL_COLUMNS)})

    def sorted(self) -> "EventTable":
        """Rows sorted by time (stable, so equal times keep their order)."""
        return self.select(np.argsort(self.time_s, kind="stable"))

    def count_by_kind(self) -> dict[str, int]:
        """Number of events of each kind, by label."""
        return {label: int(np.sum(self.kind == k)) for k, label in EVENT_KIND_LABELS.items()}


def _all_missing(values: np.ndarray, missing: float) -> bool:
    return bool(np.all(np.isnan(values))) if np.isnan(missing) else bool(np.all(values == missing))


def default_detector_names(n_detectors: int, wafer: str = "W00") -> list[str]:
    """Names ``W00_D000, W00_D001, ...`` for ``n_detectors`` detectors of one wafer."""
    if n_detectors < 1:
        raise InputError(f"number of detectors must be at least 1, got {n_detectors}")
    return [f"{wafer}_D{i:03d}" for i in range(n_detectors)]
