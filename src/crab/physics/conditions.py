"""Physical conditions of generation over a mission: constant values or a schedule in time.

A conditioned model (trained with ``TrainConfig.condition_on``, e.g. on the
solar modulation potential ``phi_gv``) generates each tile of TOD at the
conditions of that tile.  :class:`ConditionSchedule` holds those conditions as
a function of time:

- a constant (``crab generate --phi 0.7``): :meth:`ConditionSchedule.constant`;
- a mission history (``crab generate --phi-schedule schedule.csv``): a table
  of times and values, linearly interpolated in time
  (:meth:`ConditionSchedule.from_csv`).

The CSV has a header line; its first column is the time in seconds
(``time_s``; ``time_d`` in days and ``time_yr`` in Julian years are also
accepted), the other columns are condition names (``phi_gv``, or its alias
``phi``), e.g.::

    # solar-cycle phi history, LiteBIRD-like 3-year mission
    time_d,phi_gv
    0,0.45
    365.25,0.62
    730.5,0.85
    1095.75,1.05

Times are those of the generated samples: sample ``i`` is at ``i / fs``
seconds, the same axis as ``crab generate --start``.  A tile takes the
schedule's value at its middle sample (the end value if that middle falls
past an end), so conditions are piecewise constant over tiles (about an hour
at 19 Hz): much finer than the weeks over which ``phi`` changes, and
reproducible whatever the chunking.  Generating a sample outside the
schedule's time span is an error.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from crab.core.errors import FileFormatError, InputError

__all__ = ["COND_KEYS", "ConditionSchedule", "check_in_range", "cond_name"]

#: Conditions a model can be trained on: name -> description (with units).
COND_KEYS = {"phi_gv": "solar modulation potential phi of the cosmic-ray spectra (GV)"}

#: Short aliases accepted on the command line.
COND_ALIASES = {"phi": "phi_gv"}


def cond_name(name: str) -> str:
    """The canonical condition name for ``name`` (``"phi"`` -> ``"phi_gv"``); error if unknown."""
    n = COND_ALIASES.get(name, name)
    if n not in COND_KEYS:
        raise InputError(f"unknown condition {name!r}; known: {', '.join(f'{k} ({v})' for k, v in COND_KEYS.items())}")
    return n


#: Accepted names of the time column and their factor to seconds.
TIME_COLUMNS = {"time_s": 1.0, "time_d": 86400.0, "time_yr": 365.25 * 86400.0}


@dataclass(frozen=True)
class ConditionSchedule:
    """Condition values as a function of time (linear interpolation between nodes).

    Attributes
    ----------
    names : tuple of str
        Condition names (canonical, e.g. ``"phi_gv"``).
    time_s : ndarray, shape (n_nodes,)
        Node times (s), strictly increasing; one node means a constant.
    values : ndarray, shape (n_nodes, len(names))
        Values at the nodes (physical units, e.g. GV).
    source : str
        Where the schedule came from (file name or ``"constant"``).
    """

    names: tuple[str, ...]
    time_s: np.ndarray
    values: np.ndarray
    source: str = "constant"

    def __post_init__(self) -> None:
        t = np.asarray(self.time_s, dtype=np.float64).reshape(-1)
        v = np.asarray(self.values, dtype=np.float64).reshape(len(t), -1)
        if len(t) == 0:
            raise InputError(f"condition schedule {self.source}: no rows")
        if v.shape[1] != len(self.names):
            raise InputError(f"condition schedule {self.source}: {v.shape[1]} value column(s) for names {list(self.names)}")
        if not (np.all(np.isfinite(t)) and np.all(np.isfinite(v))):
            raise InputError(f"condition schedule {self.source}: times and values must be finite numbers")
        if np.any(np.diff(t) <= 0):
            i = int(np.argmax(np.diff(t) <= 0))
            raise InputError(f"condition schedule {self.source}: times must increase strictly (row {i + 2} at {t[i + 1]:g} s follows {t[i]:g} s)")
        object.__setattr__(self, "time_s", t)
        object.__setattr__(self, "values", v)
        object.__setattr__(self, "names", tuple(cond_name(n) for n in self.names))

    # ---------------------------------------------------------------- constructors
    @classmethod
    def constant(cls, values: dict[str, float]) -> "ConditionSchedule":
        """The same values at all times (``{"phi_gv": 0.7}``)."""
        names = tuple(values)
        return cls(names, np.zeros(1), np.array([[float(values[n]) for n in names]]), "constant")

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> "ConditionSchedule":
        """Read a schedule CSV (see the module docstring); ``#`` starts a comment line."""
        p = Path(path)
        if not p.is_file():
            raise FileFormatError(f"condition schedule not found: {p}")
        lines = [ln for ln in p.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        rows = list(csv.reader(io.StringIO("\n".join(lines))))
        if len(rows) < 2:
            raise FileFormatError(f"{p}: a schedule needs a header line (e.g. 'time_s,phi_gv') and at least one row")
        header = [h.strip() for h in rows[0]]
        if header[0] not in TIME_COLUMNS:
            raise FileFormatError(f"{p}: the first column must be the time, one of {list(TIME_COLUMNS)}; got {header[0]!r}")
        if len(header) < 2:
            raise FileFormatError(f"{p}: no condition column after {header[0]!r} (e.g. phi_gv)")
        try:
            table = np.array([[float(x) for x in r] for r in rows[1:]], dtype=np.float64)
        except ValueError as exc:
            raise FileFormatError(f"{p}: every value must be a number ({exc})") from None
        if table.ndim != 2 or table.shape[1] != len(header):
            raise FileFormatError(f"{p}: every row needs {len(header)} values ({', '.join(header)})")
        return cls(tuple(header[1:]), table[:, 0] * TIME_COLUMNS[header[0]], table[:, 1:], str(p))

    # ---------------------------------------------------------------- queries
    @property
    def is_constant(self) -> bool:
        return len(self.time_s) == 1

    def values_at(self, time_s: np.ndarray | float, *, clamp: bool = False) -> np.ndarray:
        """Values (..., len(names)) at ``time_s`` (s), linear between nodes.

        With ``clamp``, times outside the span take the end values (used for
        the middle of a tile that straddles the end of a covered span).

        Raises
        ------
        InputError
            A time outside the schedule's span (except for a constant, or with ``clamp``).
        """
        t = np.asarray(time_s, dtype=np.float64)
        if self.is_constant:
            return np.broadcast_to(self.values[0], t.shape + (len(self.names),)).copy()
        if not clamp:
            self.check_span(float(np.min(t)), float(np.max(t)))
        return np.stack([np.interp(t, self.time_s, self.values[:, j]) for j in range(len(self.names))], axis=-1)

    def check_span(self, t0_s: float, t1_s: float) -> None:
        """Raise if ``[t0_s, t1_s]`` is not inside the schedule's time span."""
        if self.is_constant:
            return
        lo, hi = float(self.time_s[0]), float(self.time_s[-1])
        if t0_s < lo - 1e-9 or t1_s > hi + 1e-9:
            raise InputError(f"condition schedule {self.source} covers {lo:g} .. {hi:g} s, but generation needs {t0_s:g} .. {t1_s:g} s; extend the schedule")

    def ordered(self, names: Sequence[str]) -> "ConditionSchedule":
        """The same schedule with its columns in the order of ``names`` (a model's ``cond_names``)."""
        names = [cond_name(n) for n in names]
        missing = [n for n in names if n not in self.names]
        extra = [n for n in self.names if n not in names]
        if missing or extra:
            raise InputError(f"the model is conditioned on {names}; the schedule {self.source} gives {list(self.names)}")
        idx = [self.names.index(n) for n in names]
        return ConditionSchedule(tuple(names), self.time_s, self.values[:, idx], self.source)

    def to_dict(self) -> dict:
        """JSON-ready description (for the run record)."""
        if self.is_constant:
            return {"constant": dict(zip(self.names, map(float, self.values[0])))}
        return {"source": self.source, "names": list(self.names), "time_s": self.time_s.tolist(), "values": self.values.tolist(), "interpolation": "linear, per tile middle"}


def check_in_range(schedule: ConditionSchedule, cond_range: Sequence[tuple[float, float]], *, allow_extrapolation: bool = False) -> None:
    """Raise unless every value of ``schedule`` lies inside the trained ``cond_range``.

    Linear interpolation stays between node values, so checking the nodes is enough.
    """
    if allow_extrapolation:
        return
    for j, (name, (lo, hi)) in enumerate(zip(schedule.names, cond_range)):
        v = schedule.values[:, j]
        bad = (v < lo - 1e-12) | (v > hi + 1e-12)
        if bad.any():
            raise InputError(
                f"{name} = {float(v[bad][0]):g} is outside the range the model was trained on [{lo:g}, {hi:g}]; "
                f"generate inside it, or pass --allow-extrapolation to accept an untested extrapolation"
            )
