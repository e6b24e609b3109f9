"""Nearest-window search of the memorisation test, in a noise-like representation of the TOD.

:func:`memorisation_representation` turns TOD into clipped, normalised first
differences; :func:`sliding_nn_distance` finds, for every query window, the
nearest window of a pool of series at any offset.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from crab.core.errors import InputError


def memorisation_representation(tod: np.ndarray, scale_sigma: float, clip: float = 3.0) -> np.ndarray:
    """What the memorisation test compares: first differences / (sqrt(2) sigma), clipped at +-``clip``.

    In this representation every window looks like white noise of unit
    variance (a glitch saturates a few samples at most), so nearest-window
    distances hardly depend on the window's content (glitches, their size,
    the rate), while an exact or near copy still has distance ~0: a copy
    reproduces the *noise* of the training window too.  Sample 0 of each row
    is 0.
    """
    x = np.atleast_2d(np.asarray(tod, dtype=np.float64))
    d = np.diff(x, axis=1, prepend=x[:, :1])
    return np.clip(d / (np.sqrt(2.0) * scale_sigma), -clip, clip)


def sliding_nn_distance(queries: np.ndarray, series: list[np.ndarray], chunk_samples: int = 1 << 12) -> np.ndarray:
    """Euclidean distance of each query window to its nearest window of ``series``, at any offset.

    Every length-``W`` window of every 1-D array in ``series`` (all offsets,
    stride 1; windows never straddle two arrays) is a candidate, so a copy of
    a training stretch is found whatever its alignment.  Computed by FFT
    cross-correlation in chunks: ``|q - s|^2 = |q|^2 + |s|^2 - 2 q.s``.

    Parameters
    ----------
    queries : ndarray (m, W)
    series : list of 1-D ndarray
        Each at least ``W`` long (shorter ones are skipped).

    Returns
    -------
    ndarray (m,)
        Distances (``inf`` if no candidate window exists).
    """
    q = np.asarray(queries, dtype=np.float64)
    if q.ndim != 2:
        raise InputError(f"queries must be (m, W), got shape {q.shape}")
    m, W = q.shape
    if m == 0:
        return np.zeros(0)
    L = int(max(chunk_samples, 2 * W))
    L = scipy.fft.next_fast_len(L, real=True)
    qn = np.sum(q * q, axis=1)
    Q = scipy.fft.rfft(q[:, ::-1].astype(np.float32), n=L, axis=1)
    step = L - W + 1
    # min over positions of |s|^2 - 2 q.s, accumulated in float32 in place; |q|^2 added at the end
    part = np.full(m, np.inf, dtype=np.float64)
    for s in series:
        s = np.asarray(s, dtype=np.float64).reshape(-1)
        if s.size < W:
            continue
        for c in range(0, s.size - W + 1, step):
            seg = s[c : c + L]
            S = scipy.fft.rfft(seg.astype(np.float32), n=L)
            S = Q * S[None, :]
            conv = scipy.fft.irfft(S, n=L, axis=1, overwrite_x=True)
            n_pos = seg.size - W + 1
            dots = conv[:, W - 1 : W - 1 + n_pos]
            cs = np.concatenate([[0.0], np.cumsum(seg * seg)])
            energy = (cs[W : W + n_pos] - cs[:n_pos]).astype(np.float32)
            dots *= -2.0
            dots += energy[None, :]
            part = np.minimum(part, dots.min(axis=1))
    best = qn + part
    return np.sqrt(np.maximum(best, 0.0))


def truncate_pool(series: list[np.ndarray], n_total: int) -> list[np.ndarray]:
    """The first ``n_total`` samples of a list of series (whole series in order, the last one cut)."""
    out, left = [], int(n_total)
    for s in series:
        if left <= 0:
            break
        s = np.asarray(s).reshape(-1)
        out.append(s[:left])
        left -= min(left, s.size)
    return out
