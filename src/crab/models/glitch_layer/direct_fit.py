"""Fitting the pulse shape of direct hits: ``A template_shape(t - t0 - delay, tau, rise)`` per event.

Used by the template baseline (its direct-hit population) and by the GAN,
whose pulse filters start from the fitted shapes
(:func:`crab.models.gan.pulses.init_additive_glitches`).  The event times come from
a truth table, or from the glitch finder on data without one.
"""

from __future__ import annotations

import numpy as np

from crab.models.glitch_layer.shapes import template_shape


def fit_glitches(
    series: np.ndarray,
    event_samples: np.ndarray,
    sampling_rate_hz: float,
    *,
    rise_s: float = 0.0,
    delay_s: float = 0.0,
    fit_samples: int | None = None,
    baseline_samples: int = 16,
    tau_range_s: tuple[float, float] | None = None,
    n_tau: int = 64,
    batch: int = 2048,
    return_residual: bool = False,
):
    """Fit ``A template_shape(t - t0 - delay, tau, rise)`` after each event of one series.

    For every ``tau`` of a log grid the peak height ``A`` is the linear
    least-squares amplitude (above the median of the ``baseline_samples``
    samples before the event) and the ``tau`` with the smallest residual wins,
    refined by a parabola through the neighbouring grid points (vectorised:
    one batched product for all events).  The exact sub-sample time of each
    event is used, and its window stops before the next event of the series.

    Parameters
    ----------
    series : ndarray (n_samples,)
        TOD of one detector (wafer signal removed).
    event_samples : ndarray of float
        Event times in samples from the start of ``series`` (fractional).
    sampling_rate_hz : float
    rise_s, delay_s : float
        Rise time and delay of the template (s).
    fit_samples : int, optional
        Samples fitted after each event (default 2.5 s worth, 16 to 256).
    baseline_samples : int
        Samples before the event whose median is the baseline.
    tau_range_s : (float, float), optional
        Range of the tau grid (default 0.2 sample, or 1.05 rise, to ``fit_samples`` samples).
    n_tau : int
        Points of the log-spaced tau grid.
    batch : int
        Events per vectorised batch (bounds memory).
    return_residual : bool
        Also return each event's fractional residual ``|S - model|^2 / |S|^2``.

    Returns
    -------
    amp, tau_s, ok[, frac_residual] : ndarrays
        Peak height (series units), decay time (s), and whether the event could
        be fitted (far enough from the edges).
    """
    fs = float(sampling_rate_hz)
    x = np.asarray(series, dtype=np.float64).reshape(-1)
    ts = np.asarray(event_samples, dtype=np.float64).reshape(-1)
    K = int(fit_samples or int(np.clip(np.ceil(2.5 * fs), 16, 256)))
    NB = int(baseline_samples)
    lo_tau, hi_tau = tau_range_s or (max(0.2 / fs, 1.05 * rise_s), K / fs)
    lo_tau = max(lo_tau, 1.05 * rise_s)
    taus = np.geomspace(lo_tau, max(hi_tau, lo_tau * 1.01), n_tau)
    k = np.arange(K)
    i0 = np.ceil(ts).astype(np.int64)
    ok = (i0 - NB - 1 >= 0) & (i0 + K <= x.size)
    # each event's window stops before the next event of the series (its glitch is not this one's tail)
    span = np.full(ts.size, K, dtype=np.int64)
    if ts.size > 1:
        order = np.argsort(ts, kind="stable")
        nxt = np.ceil(ts[order[1:]]).astype(np.int64) - i0[order[:-1]]
        span[order[:-1]] = np.clip(nxt, 2, K)
    amp = np.full(ts.size, np.nan)
    tau = np.full(ts.size, np.nan)
    fres = np.full(ts.size, np.nan)
    idx_ok = np.flatnonzero(ok)
    step = np.log(taus[1] / taus[0])
    for s in range(0, idx_ok.size, batch):
        e = idx_ok[s : s + batch]
        base_idx = i0[e, None] + np.arange(-NB - 1, -1)[None, :]
        baseline = np.median(x[base_idx], axis=1)
        W = (k[None, :] < span[e, None]).astype(np.float64)  # (n, K) samples in the window
        S = (x[i0[e, None] + k[None, :]] - baseline[:, None]) * W  # (n, K)
        sk = (i0[e, None] + k[None, :] - ts[e, None]) / fs - delay_s  # (n, K) template time of each sample
        B = template_shape(sk[:, None, :], taus[None, :, None], rise_s) * W[:, None, :]  # (n, n_tau, K)
        SB = np.einsum("nk,ntk->nt", S, B)
        BB = np.maximum(np.einsum("ntk,ntk->nt", B, B), 1e-300)
        score = SB**2 / BB  # residual = |S|^2 - score
        best = np.argmax(score, axis=1)
        j = np.clip(best, 1, n_tau - 2)
        r = np.arange(e.size)
        s_m, s_0, s_p = score[r, j - 1], score[r, j], score[r, j + 1]
        den = s_m - 2 * s_0 + s_p
        shift = np.where((best == j) & (den < 0), 0.5 * (s_m - s_p) / np.where(den < 0, den, -1.0), 0.0)
        tau_e = np.exp(np.log(taus[best]) + np.clip(shift, -1, 1) * step)
        tau_e = np.maximum(tau_e, lo_tau)
        b = template_shape(sk, tau_e[:, None], rise_s) * W
        A = np.einsum("ij,ij->i", S, b) / np.maximum(np.einsum("ij,ij->i", b, b), 1e-300)
        amp[e] = A
        tau[e] = tau_e
        SS = np.maximum(np.einsum("ij,ij->i", S, S), 1e-300)
        fres[e] = np.einsum("ij,ij->i", S - A[:, None] * b, S - A[:, None] * b) / SS
    if return_residual:
        return amp, tau, ok, fres
    return amp, tau, ok


def fit_direct_shape(
    series_list: list[np.ndarray],
    events_list: list[np.ndarray],
    sampling_rate_hz: float,
    *,
    delays_samples: np.ndarray | None = None,
    rises_samples: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """The template's (rise_s, delay_s) with the smallest mean fractional residual over all events.

    Scans a grid of delays (0 to 3 samples) and rises (0 and 0.1 to 2
    samples) with a coarse tau grid.  Returns ``(rise_s, delay_s, mean_residual)``.
    """
    fs = float(sampling_rate_hz)
    delays = np.linspace(0.0, 3.0, 13) if delays_samples is None else np.asarray(delays_samples)
    rises = np.concatenate([[0.0], np.geomspace(0.1, 2.0, 7)]) if rises_samples is None else np.asarray(rises_samples)
    n_ev = sum(len(e) for e in events_list)
    if n_ev == 0:
        return 0.0, 0.0, float("nan")
    best = (np.inf, 0.0, 0.0)
    for r in rises:
        for d in delays:
            tot, cnt = 0.0, 0
            for x, t in zip(series_list, events_list):
                if len(t) == 0:
                    continue
                _, _, ok, fres = fit_glitches(x, t, fs, rise_s=r / fs, delay_s=d / fs, n_tau=24, return_residual=True)
                tot += float(np.nansum(fres[ok]))
                cnt += int(ok.sum())
            score = tot / max(cnt, 1)
            if score < best[0]:
                best = (score, r / fs, d / fs)
    return best[1], best[2], best[0]
