"""Robust statistics shared by every stage."""

from __future__ import annotations

import numpy as np

from crab.core.errors import InputError


def robust_sigma(x: np.ndarray) -> float:
    """Noise RMS from the median absolute deviation of first differences / sqrt(2).

    Insensitive to glitches and to slow drifts (units of ``x``).
    """
    d = np.diff(np.asarray(x, dtype=np.float64).reshape(-1))
    if d.size == 0:
        raise InputError("need at least two samples to estimate the noise level")
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0))
