"""Fitting the template baseline on Monte Carlo TOD and its truth (see :mod:`crab.models.template`)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from crab.core.errors import FileFormatError, InputError
from crab.core.stats import robust_sigma
from crab.models.template.model import TemplateModel
from crab.models.glitch_layer.population import GlitchPopulation
from crab.models.glitch_layer.direct_fit import fit_direct_shape, fit_glitches
from crab.models.glitch_layer.wafer_fit import fit_wafer_layer, mask_glitches, quantiles, split_truth
from crab.physics.noise import fit_noise_params


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
    x = np.atleast_2d(np.asarray(tod, dtype=np.float64))
    n_det, n = x.shape
    fs = float(sampling_rate_hz)
    if n < 64:
        raise InputError(f"need at least 64 samples to fit the template model, got {n}")
    duration = n / fs
    tail_max = int(np.ceil(tail_max_s * fs))
    sigmas = [robust_sigma(r) for r in x]
    direct_t = split_truth(events, n_det, n, fs, start_time_s)["direct_t"]
    n_direct = int(sum(v.size for v in direct_t))

    # 1-2. common mode and wafer response, regressed on the truth's energies (the shared wafer layer)
    layer, wafer_prediction = fit_wafer_layer(x, events, fs, start_time_s=start_time_s, tail_max_s=tail_max_s)
    wafer, wafer_info, n_wafer = layer.population, layer.fit_info, layer.population.n_events
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
            mask_glitches(masks[d], direct_t[d], np.where(ok, a, np.nanmax(np.abs(a)) if ok.any() else 0.0), tau, fs, sigmas[d], tail_max, delay_s=delay, min_samples=int(np.ceil(3 + delay * fs)))
    amp = np.concatenate(amps) if amps else np.zeros(0)
    tau = np.concatenate(taus) if taus else np.zeros(0)
    direct = GlitchPopulation("direct", n_direct / (n_det * duration) if amp.size else 0.0, quantiles(amp), quantiles(tau), int(amp.size), rise_s=float(rise), delay_s=float(delay))

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
