"""The GAN's additive glitches started from the fitted direct hits instead of generic decays.

:class:`crab.models.gan.network.AdditiveGlitches` draws sparse events and
adds a pulse from its table of height bands x sub-sample phases.
:func:`init_additive_glitches` sets, before training:

- the table to the mean pulses of the training events per height band and
  phase (:attr:`crab.models.glitch_layer.direct_population.DirectFit.profiles`,
  regressed on the aligned events), or without them to the fitted template
  (rise, delay, the decay time of each band's quantile) at each phase
  (:func:`template_table`);
- with the table, the amplitude law to the quantiles of the events' areas
  (:meth:`crab.models.gan.network.AdditiveGlitches.set_law`): the surplus
  events of the channels get no glitch, so the data's glitches per second
  are placed; without, the amplitude law of every channel to a Pareto tail
  fitted on the events above the median amplitude (Hill estimator), its
  scale set so that the rate of events above the median matches the data's,
  which training then adjusts adversarially.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from crab.models.glitch_layer.direct_population import DirectFit
from crab.models.glitch_layer.shapes import template_shape


def template_table(taus_s, rise_s: float, delay_s: float, sampling_rate_hz: float, kernel: int, n_phases: int) -> np.ndarray:
    """``(len(taus_s), n_phases, kernel)`` pulses (time order, tap ``j`` at lag ``j - kernel // 2``):
    ``template_shape((L - p) / fs - delay, tau, rise)`` at the phases ``p = j / (n_phases - 1)``."""
    h = kernel // 2
    lags = np.arange(-h, h + 1)
    p = np.linspace(0.0, 1.0, n_phases) if n_phases > 1 else np.zeros(1)
    return np.stack([template_shape((lags[None, :] - p[:, None]) / sampling_rate_hz - delay_s, float(t), rise_s) for t in taus_s])


def pareto_law(amplitude: np.ndarray) -> tuple[float, float]:
    """``(x_med, alpha)``: the median amplitude and the Hill index ``alpha`` of ``P(A > x) ~ x^-alpha`` above it."""
    a = np.sort(np.asarray(amplitude, dtype=np.float64))
    a = a[a > 0]
    x_med = float(np.median(a))
    tail = a[a >= x_med]
    alpha = float(1.0 / np.mean(np.log(tail / x_med))) if tail.size > 1 and np.any(tail > x_med) else 1.0
    return x_med, alpha


def init_additive_glitches(module, fit: DirectFit, *, scale: float, sampling_rate_hz: float) -> dict:
    """Set the pulses and amplitude law of ``module`` (an ``AdditiveGlitches``) from ``fit``.

    Parameters
    ----------
    module : crab.models.gan.network.AdditiveGlitches
    fit : DirectFit
    scale : float
        The amplitude transform's linear scale (TOD units): the unit of the module's amplitudes.
    sampling_rate_hz : float

    Returns
    -------
    dict
        What was set (for the run record): the pulses' origin, band centres, rise, delay, and the
        amplitude law (fitted quantiles and rates, or the Pareto index and scale).
    """
    k = module.kernel
    profiled = fit.profiles is not None and fit.profiles.shape == tuple(module.table.shape) and np.any(fit.profiles)
    if profiled:
        table, centres = fit.profiles, fit.band_log_centre - math.log(scale)
    else:
        nb = module.n_bands
        taus = fit.tau_quantiles_s((np.arange(nb) + 0.5) / nb)
        taus = np.maximum(np.nan_to_num(taus, nan=1.0 / sampling_rate_hz), 1.05 * fit.rise_s + 1e-6)
        table = template_table(taus, fit.rise_s, fit.delay_s, sampling_rate_hz, k, module.n_phases)
        q = np.quantile(fit.amplitude, (np.arange(nb) + 0.5) / nb) if fit.amplitude.size else np.ones(nb)
        centres = np.log(np.maximum(q, 1e-300) / scale) + 1e-6 * np.arange(nb)
    module.set_table(table, np.maximum.accumulate(centres) + 1e-6 * np.arange(module.n_bands))
    record = {"pulses": "mean pulses of height bands and phases" if profiled else "templates", "band_log_amplitude": [float(c) for c in module.band_log_amp],
              "rise_s": fit.rise_s, "delay_s": fit.delay_s, "source": fit.source}
    area = fit.area if profiled and fit.area is not None else None
    rate_gan = module.event_rate_hz(sampling_rate_hz)
    if area is not None and area.size >= 16:
        # the data's glitches per second and their areas: a quantile table, the surplus events empty
        rate_data = area.size / fit.exposure_s
        q0 = float(np.clip(1.0 - rate_data / rate_gan, 0.0, 0.999))
        logq = np.log(np.quantile(area / scale, np.linspace(0.0, 1.0, module.LAW_POINTS)))
        module.set_law(np.maximum.accumulate(logq), q0)
        return {**record, "amplitude_law": "quantiles of the fitted areas", "glitches_per_s": float(rate_data), "events_without_glitch": q0,
                "glitches_per_s_placed": float(rate_gan * (1.0 - q0))}
    x_med, alpha = pareto_law(area if area is not None and area.size else fit.amplitude)
    alpha = float(np.clip(alpha, 0.3, 5.0))
    # events per second above x_med: rate_gan x (x_med / a)^-alpha = events_per_s / 2
    ratio = max(0.5 * fit.events_per_s / rate_gan, 1e-12)
    a0 = (x_med / scale) * ratio ** (1.0 / alpha)
    with torch.no_grad():
        module.log_a0.fill_(math.log(a0) / module.LR_MULT)
        module.log_c1.fill_(math.log(1.0 / alpha) / module.LR_MULT)
    return {**record, "amplitude_law": "Pareto", "pareto_index": alpha, "scale_units": float(a0)}
