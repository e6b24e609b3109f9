"""Parsing of durations and other user-facing quantities with units."""

from __future__ import annotations

import math
import re

from crab.core.errors import InputError

#: Seconds per unit. A year is the Julian year (365.25 d), the unit of mission lengths.
DURATION_UNITS_S: dict[str, float] = {
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "min": 60.0,
    "m": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
    "w": 7 * 86400.0,
    "y": 365.25 * 86400.0,
    "yr": 365.25 * 86400.0,
    "year": 365.25 * 86400.0,
    "years": 365.25 * 86400.0,
}

_DURATION_RE = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_duration_s(text: str | float | int, *, allow_zero: bool = False) -> float:
    """Parse a duration such as ``1800``, ``90s``, ``2h``, ``3d`` or ``3y`` into seconds.

    Parameters
    ----------
    text : str or float
        A number of seconds, or a number followed by a unit among
        ``ms, s, min (or m), h, d, w, y`` (a year is 365.25 days).
    allow_zero : bool
        Accept a zero duration (e.g. for a start offset).

    Returns
    -------
    float
        The duration in seconds.

    Raises
    ------
    InputError
        If the text cannot be parsed, the unit is unknown, or the duration is
        negative (or zero unless ``allow_zero``).
    """
    if isinstance(text, (int, float)):
        value, unit = float(text), "s"
    else:
        m = _DURATION_RE.match(str(text))
        if not m:
            raise InputError(
                f"cannot parse duration {text!r}: expected a number of seconds or a number "
                f"with a unit, e.g. 1800, 90s, 2h, 3d, 3y"
            )
        value, unit = float(m.group(1)), (m.group(2) or "s").lower()
    if unit not in DURATION_UNITS_S:
        raise InputError(
            f"unknown duration unit {unit!r} in {text!r}: expected one of "
            f"{', '.join(sorted(set(DURATION_UNITS_S)))}"
        )
    seconds = value * DURATION_UNITS_S[unit]
    if not math.isfinite(seconds):
        raise InputError(f"duration {text!r} is not finite")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise InputError(f"duration must be positive, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """Human-readable duration (``'30.0 min'``, ``'3.00 y'``)."""
    s = float(seconds)
    for unit, size in (("y", DURATION_UNITS_S["y"]), ("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if s >= size:
            return f"{s / size:.3g} {unit}"
    return f"{s:.3g} s"


#: The most samples a run may address (2**53): sample indices, and times computed from them
#: in float64, stay exact.  At 19 Hz that is about 15 million years.
MAX_SAMPLES = 2**53


def check_sample_span(end_sample: int, sampling_rate_hz: float, *, what: str = "the run") -> None:
    """Raise :class:`InputError` if a run reaching sample ``end_sample`` (exclusive) is beyond :data:`MAX_SAMPLES`."""
    if end_sample > MAX_SAMPLES:
        fs = float(sampling_rate_hz)
        raise InputError(
            f"{what} reaches sample {float(end_sample):.3g} ({format_duration(end_sample / fs)} at {fs:g} Hz), "
            f"beyond the {MAX_SAMPLES} (2^53) samples a run can address ({format_duration(MAX_SAMPLES / fs)} at {fs:g} Hz); make a shorter run"
        )
