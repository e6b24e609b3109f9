"""Fitting the template baseline on Monte Carlo TOD and its truth (see :mod:`crab.models.template`)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from crab.core.errors import FileFormatError, InputError
from crab.core.stats import robust_sigma
from crab.models.template.model import TemplateModel
from crab.models.template.population import GlitchPopulation
from crab.models.template.shapes import QUANTILE_P, lookback_samples, render_response, template_shape
from crab.physics.noise import fit_noise_params


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


def _highpass(a: np.ndarray, width: int) -> np.ndarray:
    """``a`` minus its running mean over ``width`` samples (along the first axis; linear)."""
    import scipy.ndimage

    return a - scipy.ndimage.uniform_filter1d(a, width, axis=0, mode="nearest")


def fit_wafer_response(
    common: np.ndarray,
    weight: np.ndarray,
    event_samples: np.ndarray,
    energy_kev: np.ndarray,
    sampling_rate_hz: float,
    *,
    highpass_s: float = 30.0,
    init: tuple[float, float, float] = (0.3, 0.03, 0.05),
    maxiter: int = 600,
) -> dict[str, Any]:
    """Fit the linear wafer response ``h(s) = sum_j a_j exp(-s / tau_j)``, ``s = t - t_i - delay``.

    ``common`` is regressed on ``sum_i E_i h(t - t_i)`` (the truth's wafer
    events, rendered by :func:`render_response`): for given ``(tau_1, tau_2,
    delay)`` (``tau_3 = tau_2 / 2``) the ``a_j`` are weighted linear least
    squares; the non-linear parameters minimise the residual (Nelder-Mead,
    from the best of a small grid).  Both sides are high-passed (running mean
    over ``highpass_s`` removed) against the 1/f drifts.

    Parameters
    ----------
    common : ndarray (n_samples,)
        Common-mode TOD (direct hits removed).
    weight : ndarray (n_samples,)
        1 where ``common`` is measured, 0 where it was interpolated.
    event_samples, energy_kev : ndarray
        Wafer events: times (samples, fractional) and deposited energies (keV).

    Returns
    -------
    dict with ``tau_s`` (list), ``pw_per_kev`` (list), ``delay_s``,
    ``prediction`` (ndarray, the fitted wafer signal, not high-passed),
    ``residual_rms`` and ``common_rms`` (of the high-passed series, weighted samples).
    """
    import scipy.optimize

    fs = float(sampling_rate_hz)
    c = np.asarray(common, dtype=np.float64)
    n = c.size
    good = np.asarray(weight) > 0
    width = int(max(3, min(n, round(highpass_s * fs))))
    ch = _highpass(c, width)[good]
    ts = np.asarray(event_samples, dtype=np.float64)
    E = np.asarray(energy_kev, dtype=np.float64)

    def taus_of(p):
        t1, t2 = float(np.exp(p[0])), float(np.exp(p[1]))
        return [t1, t2, t2 / 2.0]

    def design(p):
        taus = taus_of(p)
        d = float(p[2])
        R = np.stack([render_response(0, n, ts, E, [tau], [1.0], fs, delay_s=d) for tau in taus], axis=1)
        return taus, d, R

    def solve(p):
        taus, d, R = design(p)
        Rh = _highpass(R, width)[good]
        scale = np.maximum(np.sqrt(np.sum(Rh**2, axis=0)), 1e-300)
        a, *_ = np.linalg.lstsq(Rh / scale, ch, rcond=None)
        a = a / scale
        res = ch - Rh @ a
        return float(np.sum(res**2)), taus, d, a, R

    def cost(p):
        t1, t2, d = float(np.exp(p[0])), float(np.exp(p[1])), float(p[2])
        # keep the time constants apart and in range (no degenerate cancelling pairs)
        if not (t2 * 1.5 < t1 < 30.0 and t2 > 0.05 / fs and 0.0 <= d < 1.0):
            return np.inf
        return solve(p)[0]

    starts = [(np.log(t1), np.log(t2), d) for t1 in (init[0] / 2, init[0], init[0] * 2) for t2 in (init[1] / 3, init[1], init[1] * 3) for d in (0.0, init[2], 2 * init[2])]
    costs = [cost(np.array(p)) for p in starts]
    p0 = np.array(starts[int(np.argmin(costs))])
    sol = scipy.optimize.minimize(cost, p0, method="Nelder-Mead", options={"xatol": 1e-3, "fatol": 0.0, "maxiter": maxiter})
    p = sol.x if np.isfinite(sol.fun) and sol.fun <= min(costs) else p0
    sse, taus, d, a, R = solve(p)
    return {
        "tau_s": [float(v) for v in taus],
        "pw_per_kev": [float(v) for v in a],
        "delay_s": float(d),
        "prediction": R @ a,
        "residual_rms": float(np.sqrt(sse / max(ch.size, 1))),
        "common_rms": float(np.sqrt(np.mean(ch**2))) if ch.size else 0.0,
    }


_SMOOTH = 16  # samples averaged at each end of a gap


def _glitch_free(x: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The TOD with the glitches masked and the gaps refilled with noise, for the noise fit.

    Masked samples are replaced by a linear interpolation across the gap (of
    16-sample local means of the unmasked samples) plus
    white noise of the row's robust RMS (fixed seed: the fit is
    deterministic), so a median-averaged PSD sees the noise alone.
    """
    out = np.array(x, dtype=np.float64)
    g = np.random.default_rng(0)
    for d in range(out.shape[0]):
        mask = masks[d]
        if not mask.any() or mask.mean() > 0.5:
            continue  # nothing to mask, or too little left: keep the row as it is
        sigma = robust_sigma(out[d])
        good = np.flatnonzero(~mask)
        bad = np.flatnonzero(mask)
        w = np.ones(_SMOOTH)
        num = np.convolve(np.where(mask, 0.0, out[d]), w, mode="same")
        den = np.convolve((~mask).astype(np.float64), w, mode="same")
        smooth = num / np.maximum(den, 1.0)
        out[d, bad] = np.interp(bad, good, smooth[good]) + sigma * g.standard_normal(bad.size)
    return out


def _mask_glitches(mask: np.ndarray, t: np.ndarray, amp: np.ndarray, tau: np.ndarray, fs: float, sigma: float, tail_max: int, delay_s: float = 0.0, min_samples: int = 0) -> None:
    """Mark samples from 2 before each event to where its glitch drops below 0.3 sigma (at least ``min_samples``)."""
    if t.size == 0:
        return
    tau_m = np.maximum(np.nan_to_num(tau, nan=0.0), np.nanmedian(tau) if np.any(np.isfinite(tau)) else 0.0)  # a mis-fitted short tau must not leave the tail unmasked
    i0 = np.ceil(t).astype(np.int64)
    K = np.ceil(tau_m * fs * np.log(np.maximum(np.abs(np.nan_to_num(amp)) / (0.3 * sigma), 1.0)) + delay_s * fs + 2).astype(np.int64)
    K = np.clip(np.maximum(K, min_samples), 1, tail_max)
    n_k = K + 2
    ev = np.repeat(np.arange(t.size), n_k)
    idx = i0[ev] - 2 + (np.arange(int(n_k.sum())) - np.repeat(np.cumsum(n_k) - n_k, n_k))
    mask[np.clip(idx, 0, mask.size - 1)] = True


def _quantiles(v: np.ndarray) -> list[float]:
    return np.quantile(v, QUANTILE_P).tolist() if v.size else []


def _common_mode(x: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample mean of the unmasked detectors, interpolated where all are masked; and the 0/1 weight."""
    cnt = (~masks).sum(axis=0)
    c = np.where(masks, 0.0, x).sum(axis=0) / np.maximum(cnt, 1)
    good = cnt > 0
    if not good.any():
        return x.mean(axis=0), np.ones(x.shape[1])
    if not good.all():
        c[~good] = np.interp(np.flatnonzero(~good), np.flatnonzero(good), c[good])
    return c, good.astype(np.float64)


def fit_template(
    tod: np.ndarray,
    events,
    sampling_rate_hz: float,
    *,
    start_time_s: float = 0.0,
    units: str = "pW",
    tail_max_s: float = 30.0,
    fit_info: dict[str, Any] | None = None,
) -> TemplateModel:
    """Fit the template baseline on Monte Carlo TOD and its truth (array level).

    See the module docstring for the model and the fitting steps.

    Parameters
    ----------
    tod : ndarray (n_detectors, n_samples)
        Monte Carlo TOD (units ``units``).
    events : crab.io.tod.EventTable
        Truth of the hits (times on the same clock as ``start_time_s``;
        ``energy_kev`` of the wafer hits drives the wafer response).
    sampling_rate_hz : float
    start_time_s : float
        Time of sample 0 (s).
    units : str
    tail_max_s : float
        Longest glitch tail masked out of the noise fit (s).
    fit_info : dict, optional
        Recorded with the model.
    """
    from crab.physics.events import EVENT_KIND_WAFER

    x = np.atleast_2d(np.asarray(tod, dtype=np.float64))
    n_det, n = x.shape
    fs = float(sampling_rate_hz)
    if n < 64:
        raise InputError(f"need at least 64 samples to fit the template model, got {n}")
    duration = n / fs
    t = (np.asarray(events.time_s, dtype=np.float64) - start_time_s) * fs
    det = np.asarray(events.detector)
    is_wafer = (det < 0) | (np.asarray(events.kind) == EVENT_KIND_WAFER)
    inside = (t >= 0) & (t < n)
    tail_max = int(np.ceil(tail_max_s * fs))
    sigmas = [robust_sigma(r) for r in x]
    direct_t = [t[~is_wafer & inside & (det == d)] for d in range(n_det)]
    n_direct = int(sum(v.size for v in direct_t))

    # 1. common mode, with a first (generous, 1 s) mask of the direct hits
    masks = np.zeros(x.shape, dtype=bool)
    for d in range(n_det):
        _mask_glitches(masks[d], direct_t[d], np.zeros(direct_t[d].size), np.zeros(direct_t[d].size), fs, 1.0, tail_max, min_samples=int(np.ceil(fs)))
    common, weight = _common_mode(x, masks)

    # 2. wafer response, regressed on the truth's energies
    mw = is_wafer & inside
    wafer_prediction = np.zeros(n)
    wafer_info: dict[str, Any] = {}
    n_wafer = int(np.sum(mw))
    energies = np.asarray(events.energy_kev, dtype=np.float64)[mw]
    if n_wafer:
        if not np.all(np.isfinite(energies)) or np.any(energies <= 0):
            raise InputError("wafer events need positive, finite energy_kev to fit the wafer response")
        # events shortly before the start still reach into the TOD
        pre = is_wafer & (t < 0) & (t > -lookback_samples(30.0, fs))
        tw = np.concatenate([t[pre], t[mw]])
        ew = np.concatenate([np.asarray(events.energy_kev, dtype=np.float64)[pre], energies])
        fitw = fit_wafer_response(common, weight, tw, ew, fs)
        wafer_prediction = fitw.pop("prediction")
        wafer_info = fitw
        wafer = GlitchPopulation(
            "wafer",
            n_wafer / duration,
            n_events=n_wafer,
            delay_s=fitw["delay_s"],
            energy_quantiles_kev=_quantiles(energies),
            response_tau_s=fitw["tau_s"],
            response_pw_per_kev=fitw["pw_per_kev"],
        )
    else:
        wafer = GlitchPopulation("wafer", 0.0)
    y = x - wafer_prediction[None, :]

    # 3. direct hits on the TOD minus the wafer prediction
    rise, delay, shape_res = fit_direct_shape([y[d] for d in range(n_det)], direct_t, fs)
    amps, taus = [], []
    masks = np.zeros(x.shape, dtype=bool)
    for d in range(n_det):
        if direct_t[d].size:
            a, tau, ok = fit_glitches(y[d], direct_t[d], fs, rise_s=rise, delay_s=delay)
            amps.append(a[ok])
            taus.append(tau[ok])
            _mask_glitches(masks[d], direct_t[d], np.where(ok, a, np.nanmax(np.abs(a)) if ok.any() else 0.0), tau, fs, sigmas[d], tail_max, delay_s=delay, min_samples=int(np.ceil(3 + delay * fs)))
    amp = np.concatenate(amps) if amps else np.zeros(0)
    tau = np.concatenate(taus) if taus else np.zeros(0)
    direct = GlitchPopulation("direct", n_direct / (n_det * duration) if amp.size else 0.0, _quantiles(amp), _quantiles(tau), int(amp.size), rise_s=float(rise), delay_s=float(delay))

    # 4. noise on the TOD minus the wafer model, direct hits masked
    try:
        clean = _glitch_free(y, masks)
        noise = fit_noise_params(clean, fs, nperseg=int(min(4096, n)))
    except Exception as exc:  # least squares can fail on degenerate data
        raise InputError(f"cannot fit the noise model ({exc.__class__.__name__}: {exc})") from None
    info = {
        "n_detectors": n_det,
        "n_samples": n,
        "duration_s": duration,
        "n_direct_events": n_direct,
        "n_wafer_events": n_wafer,
        "direct_shape_mean_fractional_residual": float(shape_res),
        **({"wafer_fit": wafer_info} if wafer_info else {}),
        **(fit_info or {}),
    }
    return TemplateModel(sampling_rate_hz=fs, noise_params=noise, direct=direct, wafer=wafer, units=units, fit_info=info)


def fit_template_file(path: str | os.PathLike, **kw: Any) -> TemplateModel:
    """Fit the template baseline on a Monte Carlo TOD file with its ``/events`` truth."""
    from crab.io.tod import read_tod

    f = read_tod(path)
    if f.events is None:
        raise FileFormatError(f"{f.path}: no /events truth table; the template baseline is fitted on Monte Carlo files (`crab simulate`)")
    info = {"file": str(f.path), "file_seed": f.meta.seed, "file_kind": f.meta.kind}
    return fit_template(f.tod, f.events, f.meta.sampling_rate_hz, start_time_s=f.meta.start_time_s, units=f.meta.units, fit_info=info, **kw)
