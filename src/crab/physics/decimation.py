"""Anti-aliasing and decimation from the internal integration rate to the sampling rate.

Stage 4c of the physics Monte Carlo (see ``docs/design.md``).  A causal
Bessel low-pass (nearly linear phase, DC gain exactly 1; its impulse response
has a ~2 % negative lobe, so a large glitch is followed by a small
undershoot, as in a real readout chain) at the internal rate, then one sample
in ``M`` is kept (output sample ``k`` is internal sample ``k M``).  Filter
states are carried from one segment to the next, so a series computed in
pieces is identical to the series computed at once.
"""

from __future__ import annotations

import numpy as np
import scipy.signal

from crab.core.errors import InputError


def antialias_sos(internal_rate_hz: float, cutoff_hz: float, order: int = 6) -> np.ndarray:
    """Causal Bessel low-pass (second-order sections) with a DC gain of exactly 1."""
    if not 0 < cutoff_hz < internal_rate_hz / 2:
        raise InputError(f"anti-alias cut-off {cutoff_hz} Hz must be in (0, {internal_rate_hz / 2}) Hz")
    sos = scipy.signal.bessel(order, cutoff_hz, btype="low", fs=internal_rate_hz, output="sos", norm="mag")
    # normalise each section to unit DC gain
    for s in sos:
        s[:3] *= s[3:].sum() / s[:3].sum()
    return sos


class Decimator:
    """Causal low-pass at the internal rate, then one sample in ``factor``, with state kept across calls.

    Output sample ``k`` is the filtered internal sample ``k * factor`` (the
    first sample of each call must be at a multiple of ``factor``; calls must
    pass whole multiples of ``factor`` samples).

    Parameters
    ----------
    sos : ndarray
        Filter (see :func:`antialias_sos`).
    factor : int
        Decimation factor ``M`` (internal rate / output rate).
    n_channels : int
        Independent channels (rows) processed together.
    """

    def __init__(self, sos: np.ndarray, factor: int, n_channels: int = 1) -> None:
        self.sos = sos
        self.factor = int(factor)
        self.zi = np.zeros((sos.shape[0], n_channels, 2))

    def reset(self, value: float | np.ndarray = 0.0) -> None:
        """Set the state to the steady state of a constant input ``value`` (per channel)."""
        zi1 = scipy.signal.sosfilt_zi(self.sos)  # (n_sections, 2) for a unit step
        v = np.broadcast_to(np.asarray(value, dtype=np.float64), (self.zi.shape[1],))
        self.zi = zi1[:, None, :] * v[None, :, None]

    def process(self, x: np.ndarray) -> np.ndarray:
        """Filter ``x`` (n_channels, n) or (n,) and return every ``factor``-th sample."""
        x = np.asarray(x, dtype=np.float64)
        one = x.ndim == 1
        x2 = x[None, :] if one else x
        if x2.shape[1] % self.factor:
            raise ValueError(f"segment length {x2.shape[1]} is not a multiple of the decimation factor {self.factor}")
        y, self.zi = scipy.signal.sosfilt(self.sos, x2, axis=-1, zi=self.zi)
        y = y[:, :: self.factor]
        return y[0] if one else y
