"""Fitting the wafer layer: the linear response of a wafer's detectors to hits on the wafer.

Used by every generative method that draws wafer hits once per wafer (the
template baseline and the GAN's wafer layer).  With the Monte Carlo's truth
table, the response is regressed on the truth's wafer events
(:func:`fit_wafer_response`) and each detector's coupling on the fitted
common signal (:func:`fit_wafer_layer`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crab.core.errors import InputError
from crab.models.glitch_layer.population import GlitchPopulation
from crab.models.glitch_layer.shapes import QUANTILE_P, lookback_samples, render_response


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


def mask_glitches(mask: np.ndarray, t: np.ndarray, amp: np.ndarray, tau: np.ndarray, fs: float, sigma: float, tail_max: int, delay_s: float = 0.0, min_samples: int = 0) -> None:
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


def common_mode(x: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample mean of the unmasked detectors, interpolated where all are masked; and the 0/1 weight."""
    cnt = (~masks).sum(axis=0)
    c = np.where(masks, 0.0, x).sum(axis=0) / np.maximum(cnt, 1)
    good = cnt > 0
    if not good.any():
        return x.mean(axis=0), np.ones(x.shape[1])
    if not good.all():
        c[~good] = np.interp(np.flatnonzero(~good), np.flatnonzero(good), c[good])
    return c, good.astype(np.float64)


def quantiles(v: np.ndarray) -> list[float]:
    """Quantiles of ``v`` at :data:`QUANTILE_P` (empty list for an empty sample)."""
    return np.quantile(v, QUANTILE_P).tolist() if v.size else []


def split_truth(events, n_detectors: int, n_samples: int, sampling_rate_hz: float, start_time_s: float = 0.0) -> dict[str, Any]:
    """The truth table of a TOD in sample units: ``t`` (fractional samples from sample 0),
    ``is_wafer``, ``inside`` (in ``[0, n_samples)``) and ``direct_t`` (per detector, inside)."""
    from crab.physics.events import EVENT_KIND_WAFER

    t = (np.asarray(events.time_s, dtype=np.float64) - start_time_s) * float(sampling_rate_hz)
    det = np.asarray(events.detector)
    is_wafer = (det < 0) | (np.asarray(events.kind) == EVENT_KIND_WAFER)
    inside = (t >= 0) & (t < n_samples)
    direct_t = [t[~is_wafer & inside & (det == d)] for d in range(n_detectors)]
    return {"t": t, "is_wafer": is_wafer, "inside": inside, "direct_t": direct_t}


def fit_wafer_layer(
    tod: np.ndarray,
    events,
    sampling_rate_hz: float,
    *,
    start_time_s: float = 0.0,
    tail_max_s: float = 30.0,
    highpass_s: float = 30.0,
):
    """Fit the wafer layer (response, energy law, rate and couplings) on TOD with its truth table.

    1. Common mode: per sample, the mean of the detectors not within 1 s after
       one of their direct hits (interpolated where all are).
    2. Response: the common mode regressed on the truth's wafer events
       (:func:`fit_wafer_response`): every hit an impulse of weight
       ``energy_kev`` through ``h(s) = sum_j a_j exp(-s / tau_j)``, so the gain
       is measured on all wafer hits at once, the sub-threshold pile-up
       included.
    3. Coupling of each detector: the least-squares gain of its TOD (direct
       hits masked, 30 s running mean removed) on the fitted common signal
       (1 for a detector that sees the wafer like the mean of the wafer).

    Parameters
    ----------
    tod : ndarray (n_detectors, n_samples)
        TOD of the detectors of one wafer (TOD units).
    events : crab.physics.events.EventTable
        Truth of the hits; wafer hits have ``detector == -1`` or kind wafer.
    sampling_rate_hz : float
    start_time_s : float
        Time of sample 0 on the clock of ``events.time_s`` (s).
    tail_max_s, highpass_s : float
        Longest glitch tail masked (s); running-mean length of the high-pass of the regressions (s).

    Returns
    -------
    layer : crab.models.glitch_layer.wafer.WaferLayer
        ``rate_hz`` 0 when the truth has no wafer hit.
    prediction : ndarray (n_samples,)
        The fitted common wafer signal of the TOD (before the couplings; float64).
    """
    from crab.models.glitch_layer.wafer import WaferLayer

    x = np.atleast_2d(np.asarray(tod, dtype=np.float64))
    n_det, n = x.shape
    fs = float(sampling_rate_hz)
    truth = split_truth(events, n_det, n, fs, start_time_s)
    t, is_wafer, inside, direct_t = truth["t"], truth["is_wafer"], truth["inside"], truth["direct_t"]
    tail_max = int(np.ceil(tail_max_s * fs))
    masks = np.zeros(x.shape, dtype=bool)
    for d in range(n_det):
        mask_glitches(masks[d], direct_t[d], np.zeros(direct_t[d].size), np.zeros(direct_t[d].size), fs, 1.0, tail_max, min_samples=int(np.ceil(fs)))
    common, weight = common_mode(x, masks)
    mw = is_wafer & inside
    n_wafer = int(np.sum(mw))
    energies = np.asarray(events.energy_kev, dtype=np.float64)[mw]
    if not n_wafer:
        return WaferLayer(GlitchPopulation("wafer", 0.0), couplings=[1.0] * n_det, source="truth"), np.zeros(n)
    if not np.all(np.isfinite(energies)) or np.any(energies <= 0):
        raise InputError("wafer events need positive, finite energy_kev to fit the wafer response")
    # events shortly before the start still reach into the TOD
    pre = is_wafer & (t < 0) & (t > -lookback_samples(tail_max_s, fs))
    tw = np.concatenate([t[pre], t[mw]])
    ew = np.concatenate([np.asarray(events.energy_kev, dtype=np.float64)[pre], energies])
    fitw = fit_wafer_response(common, weight, tw, ew, fs, highpass_s=highpass_s)
    prediction = fitw.pop("prediction")
    population = GlitchPopulation(
        "wafer",
        n_wafer / (n / fs),
        n_events=n_wafer,
        delay_s=fitw["delay_s"],
        energy_quantiles_kev=quantiles(energies),
        response_tau_s=fitw["tau_s"],
        response_pw_per_kev=fitw["pw_per_kev"],
    )
    width = int(max(3, min(n, round(highpass_s * fs))))
    ph = _highpass(prediction, width)
    couplings = []
    for d in range(n_det):
        good = ~masks[d]
        xh = _highpass(x[d], width)
        den = float(np.dot(ph[good], ph[good]))
        couplings.append(float(np.dot(xh[good], ph[good]) / den) if den > 0 else 1.0)
    return WaferLayer(population, couplings=couplings, source="truth", fit_info=fitw), prediction


def subtract_wafer_layer(sources: list) -> tuple[Any, list, str]:
    """Fit the wafer layer on training files with a truth table and take it out of their TOD.

    Each file's layer is fitted on its own detectors (:func:`fit_wafer_layer`)
    and its prediction, times each detector's coupling, subtracted; the layer
    kept is that of the file with the most wafer hits.  What is left (direct
    hits, noise, what the layer misses) is what a network then learns.

    Parameters
    ----------
    sources : list of crab.models.dataset.TodSource

    Returns
    -------
    layer : WaferLayer or None
        None when the files carry no truth table or no wafer hit.
    residual : list of TodSource
        The files with the fitted wafer signal subtracted (the same objects when ``layer`` is None).
    note : str
        What was done, for the run's record.
    """
    import dataclasses

    has_truth = [s.events is not None for s in sources]
    if not any(has_truth):
        return None, list(sources), "no truth table in the training data: the wafer's shared signal stays in what the network learns"
    if not all(has_truth):
        missing = [str(s.path) for s, h in zip(sources, has_truth) if not h]
        raise InputError(f"the wafer layer is fitted on truth tables, but {', '.join(missing)} has none; train on files that all have one (Monte Carlo files) or set wafer_layer = false")
    fits = [fit_wafer_layer(s.tod, s.events, s.sampling_rate_hz, start_time_s=s.start_time_s) for s in sources]
    best = max(range(len(fits)), key=lambda i: fits[i][0].population.n_events)
    layer = fits[best][0]
    if not layer.active:
        return None, list(sources), "the truth tables have no wafer hit: no wafer layer"
    residual = []
    for s, (lay, pred) in zip(sources, fits):
        shared = np.asarray(lay.couplings)[:, None] * pred[None, :]
        residual.append(dataclasses.replace(s, tod=(s.tod.astype(np.float64) - shared).astype(np.float32)))
    n = sum(s.tod.shape[0] for s in sources)
    note = (f"wafer layer fitted on the truth of {len(sources)} file(s), {n} detector(s): {layer.population.rate_hz:.3g} hits/s per wafer, "
            f"couplings {', '.join(f'{c:.3f}' for c in layer.couplings)}")
    return layer, residual, note
