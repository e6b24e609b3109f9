"""Glitch shapes of the template baseline and their rendering on a slice of samples.

A direct glitch is the peak-normalised template ``A (exp(-s/tau) - exp(-s/rise)) / N``
(``s`` the time after the hit and its delay, in s); a wafer glitch is a fixed
linear response ``E sum_j a_j exp(-s/tau_j)`` to the deposited energy ``E`` (keV).
Times are in samples (float, sub-sample), amplitudes in TOD units.
"""

from __future__ import annotations

import numpy as np

#: Probabilities at which the fitted distributions are stored (dense in the tails).
QUANTILE_P = np.unique(np.concatenate([np.linspace(0.0, 1.0, 201), 1.0 - np.logspace(-6, -2.3, 12), np.logspace(-6, -2.3, 12)]))
#: A glitch is rendered until it is below this fraction of its height.
TAIL_FRACTION = 1e-7


def peak_norm(tau_s: np.ndarray | float, rise_s: float) -> np.ndarray:
    """Peak of ``exp(-s/tau) - exp(-s/rise)`` over ``s >= 0`` (1 for ``rise = 0``); needs ``tau > rise``."""
    tau = np.asarray(tau_s, dtype=np.float64)
    if rise_s <= 0:
        return np.ones_like(tau)
    r = float(rise_s)
    s_pk = np.log(tau / r) * tau * r / (tau - r)
    return np.exp(-s_pk / tau) - np.exp(-s_pk / r)


def template_shape(s: np.ndarray, tau_s: np.ndarray, rise_s: float) -> np.ndarray:
    """Peak-normalised template ``(exp(-s/tau) - exp(-s/rise)) / N`` at ``s`` (s; 0 for ``s < 0``)."""
    s = np.asarray(s, dtype=np.float64)
    tau = np.asarray(tau_s, dtype=np.float64)
    sp = np.maximum(s, 0.0)
    y = np.exp(-sp / tau)
    if rise_s > 0:
        y = (y - np.exp(-sp / rise_s)) / peak_norm(tau, rise_s)
    return np.where(s >= 0, y, 0.0)




def lookback_samples(tau_s: float, sampling_rate_hz: float, delay_s: float = 0.0) -> int:
    """Samples after a hit by which its glitch is below :data:`TAIL_FRACTION` of its height (it is dropped there)."""
    return int(np.ceil((tau_s * np.log(1.0 / TAIL_FRACTION) + delay_s) * sampling_rate_hz)) + 2


def render_events(first_sample: int, n_samples: int, t_samples: np.ndarray, amp: np.ndarray, tau_s: np.ndarray, sampling_rate_hz: float, *, rise_s: float = 0.0, delay_s: float = 0.0) -> np.ndarray:
    """Sum of templates ``amp * template_shape(t - t0 - delay, tau, rise)`` on ``[first_sample, first_sample + n_samples)``.

    Every event is evaluated exactly over its support (until its template is
    below :data:`TAIL_FRACTION`; the rise is shorter than ``tau``), on
    absolute sample indices, so any slice gets the same values as the same
    samples of a longer rendering.  Give every event whose support reaches the
    slice (:func:`lookback_samples`).

    Parameters
    ----------
    t_samples : ndarray of float
        Hit times in samples (fractional, absolute index).
    amp, tau_s : ndarray
        Peak heights (TOD units) and decay times (s).

    Returns
    -------
    ndarray of float64, shape (n_samples,)
    """
    s0, n = int(first_sample), int(n_samples)
    out = np.zeros(max(n, 0))
    ts = np.asarray(t_samples, dtype=np.float64)
    if ts.size == 0 or n <= 0:
        return out
    fs = float(sampling_rate_hz)
    amp = np.asarray(amp, dtype=np.float64)
    tau = np.asarray(tau_s, dtype=np.float64)
    first = np.ceil(ts + delay_s * fs).astype(np.int64)  # first sample with s >= 0
    length = np.ceil(tau * fs * np.log(1.0 / TAIL_FRACTION)).astype(np.int64) + 1
    a = np.maximum(first, s0)
    b = np.minimum(first + length, s0 + n)
    keep = b > a
    if not np.any(keep):
        return out
    a, b, ts, amp, tau = a[keep], b[keep], ts[keep], amp[keep], tau[keep]
    cnt = b - a
    ev = np.repeat(np.arange(cnt.size), cnt)
    idx = a[ev] + (np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt))
    s = (idx - ts[ev]) / fs - delay_s
    y = amp[ev] * template_shape(s, tau[ev], rise_s)
    out += np.bincount(idx - s0, weights=y, minlength=n)[:n]
    return out


def render_response(first_sample: int, n_samples: int, t_samples: np.ndarray, energy: np.ndarray, response_tau_s, response_coef, sampling_rate_hz: float, *, delay_s: float = 0.0) -> np.ndarray:
    """Sum of ``E_i sum_j c_j exp(-(t - t_i - delay)/tau_j)`` on ``[first_sample, first_sample + n_samples)``.

    One impulse train per ``tau_j`` (an impulse at the first sample at or
    after ``t_i + delay``, weighted by ``E_i c_j exp(-frac/tau_j)`` for the
    sub-sample timing) through the recursive filter ``y[n] = x[n] +
    exp(-1/(tau_j fs)) y[n-1]``, started at zero :func:`lookback_samples`
    before the slice: the cost does not depend on the event rate.  Give every
    event starting in ``[first_sample - lookback, first_sample + n_samples)``.
    """
    import scipy.signal

    s0, n = int(first_sample), int(n_samples)
    out = np.zeros(max(n, 0))
    ts = np.asarray(t_samples, dtype=np.float64)
    if ts.size == 0 or n <= 0 or len(response_tau_s) == 0:
        return out
    fs = float(sampling_rate_hz)
    taus = np.asarray(response_tau_s, dtype=np.float64)
    L = lookback_samples(float(taus.max()), fs)
    tt = ts + delay_s * fs
    i0 = np.ceil(tt).astype(np.int64)
    sel = (i0 >= s0 - L) & (i0 < s0 + n)
    if not np.any(sel):
        return out
    i0, frac, e = i0[sel] - (s0 - L), (i0[sel] - tt[sel]), np.asarray(energy, dtype=np.float64)[sel]
    for tau, c in zip(taus, response_coef):
        x = np.bincount(i0, weights=c * e * np.exp(-frac / (tau * fs)), minlength=L + n)
        out += scipy.signal.lfilter([1.0], [1.0, -np.exp(-1.0 / (tau * fs))], x)[L:]
    return out


def render_glitches(first_sample: int, n_samples: int, t_samples: np.ndarray, c2: np.ndarray, tau_s: np.ndarray, sampling_rate_hz: float, classes: np.ndarray | None = None) -> np.ndarray:
    """Sum of TOAST templates ``c2 exp(-(t - t0)/tau)`` (no rise, no delay) on a slice; see :func:`render_events`.

    ``classes`` is accepted for compatibility and ignored (every glitch is now exact).
    """
    return render_events(first_sample, n_samples, t_samples, c2, tau_s, sampling_rate_hz)
