"""Spectral summaries of TOD blocks: octave bands, band power, autocorrelation."""

from __future__ import annotations

import numpy as np

from crab.core.errors import InputError


def octave_bands(f_lo_hz: float, f_hi_hz: float) -> np.ndarray:
    """Octave band edges ``f_lo * 2**k`` up to ``f_hi`` (the last band may be partial, >= half an octave)."""
    if not (0 < f_lo_hz < f_hi_hz):
        raise InputError(f"need 0 < f_lo < f_hi, got {f_lo_hz}, {f_hi_hz}")
    n = int(np.floor(np.log2(f_hi_hz / f_lo_hz) + 0.5))
    edges = f_lo_hz * 2.0 ** np.arange(n + 1)
    edges[-1] = min(edges[-1], f_hi_hz) if n > 0 else f_hi_hz
    return edges if len(edges) > 1 else np.array([f_lo_hz, f_hi_hz])


def band_log_power(freq_hz: np.ndarray, psd: np.ndarray, edges_hz: np.ndarray) -> np.ndarray:
    """Natural log of the mean PSD in each band ``[edges[k], edges[k+1])`` (last band closed)."""
    f = np.asarray(freq_hz)
    p = np.asarray(psd, dtype=np.float64)
    out = []
    for k in range(len(edges_hz) - 1):
        hi = edges_hz[k + 1]
        m = (f >= edges_hz[k]) & ((f < hi) if k < len(edges_hz) - 2 else (f <= hi))
        out.append(np.log(np.maximum(p[..., m].mean(axis=-1), 1e-300)) if m.any() else np.full(p.shape[:-1], np.nan))
    return np.stack(out, axis=-1)


def autocorrelation(x: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """Normalised autocorrelation at ``lags`` along the last axis (mean removed)."""
    v = np.asarray(x, dtype=np.float64)
    v = v - v.mean(axis=-1, keepdims=True)
    var = np.sum(v * v, axis=-1)
    var = np.where(var > 0, var, np.nan)
    return np.stack([np.sum(v[..., : v.shape[-1] - L] * v[..., L:], axis=-1) / var for L in lags], axis=-1)
