"""The GAN's additive glitches started from the fitted direct hits instead of generic decays.

:class:`crab.models.gan.network.AdditiveGlitches` draws sparse events and
adds a learned pulse per event channel; trained from generic exponential
decays its pulses hardly move.  :func:`init_additive_glitches` sets, before
training:

- the pulse of event channel ``i`` to the mean pulse of the ``i``-th
  amplitude band of the training events
  (:attr:`crab.models.glitch_layer.direct_population.DirectFit.profiles`,
  regressed on the aligned events, in powers of the sub-sample phase ``p``:
  ``K0 + p K1 + p^2 K2``), or without profiles to the fitted template
  (rise, delay, the ``(i + 1/2) / n``-quantile of the decay times) expanded
  the same way (:func:`pulse_basis`);
- the amplitude law of every channel to a Pareto tail fitted on the events
  above the median amplitude (Hill estimator), its scale set so that the
  rate of events above the median matches the data's.

Training then adjusts them adversarially.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from crab.models.glitch_layer.direct_population import DirectFit
from crab.models.glitch_layer.shapes import template_shape


def pulse_basis(tau_s: float, rise_s: float, delay_s: float, sampling_rate_hz: float, kernel: int, n_basis: int) -> np.ndarray:
    """``(n_basis, kernel)`` conv taps ``K_b`` so that ``sum_b p^b K_b`` is the template of an event at phase ``p``.

    Tap ``h - L`` (``h = kernel // 2``) is the pulse ``L`` samples after the
    event's sample: ``template_shape((L - p) / fs - delay, tau, rise)``.
    """
    h = kernel // 2
    lags = np.arange(-h, h + 1)
    p = np.linspace(0.0, 1.0, 41) if n_basis > 1 else np.zeros(1)
    pulses = template_shape((lags[None, :] - p[:, None]) / sampling_rate_hz - delay_s, tau_s, rise_s)  # (n_p, kernel)
    design = p[:, None] ** np.arange(n_basis)[None, :]  # (n_p, n_basis)
    coef, *_ = np.linalg.lstsq(design, pulses, rcond=None)  # (n_basis, kernel) over lags
    return coef[:, ::-1].copy()  # tap index h - L


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
        What was set (for the run record): decay times (s), rise, delay, Pareto index and scale.
    """
    n, k, nb = module.n_events, module.conv.kernel_size[0], module.n_basis
    taus = fit.tau_quantiles_s((np.arange(n) + 0.5) / n)
    taus = np.maximum(np.nan_to_num(taus, nan=1.0 / sampling_rate_hz), 1.05 * fit.rise_s + 1e-6)
    w = np.zeros(tuple(module.conv.weight.shape), dtype=np.float32)
    profiled = fit.profiles is not None and fit.profiles.shape[1:] == (nb, k) and np.any(fit.profiles)
    for i, tau in enumerate(taus):
        if profiled:
            w[0, i * nb : (i + 1) * nb] = fit.profiles[i % len(fit.profiles)]
        else:
            w[0, i * nb : (i + 1) * nb] = pulse_basis(float(tau), fit.rise_s, fit.delay_s, sampling_rate_hz, k, nb)
    x_med, alpha = pareto_law(fit.amplitude)
    alpha = float(np.clip(alpha, 0.3, 5.0))
    # events per second above x_med: n channels x P(|z| > t) x fs x (x_med / a)^-alpha = events_per_s / 2
    p_event = math.erfc(module.threshold / math.sqrt(2.0))
    ratio = max(0.5 * fit.events_per_s / (n * p_event * sampling_rate_hz), 1e-12)
    a0 = (x_med / scale) * ratio ** (1.0 / alpha)
    with torch.no_grad():
        module.conv.weight.copy_(torch.from_numpy(w))
        module.log_a0.fill_(math.log(a0) / module.LR_MULT)
        module.log_c1.fill_(math.log(1.0 / alpha) / module.LR_MULT)
    return {"pulses": "mean profiles of amplitude bands" if profiled else "templates", "tau_s": [float(t) for t in taus], "rise_s": fit.rise_s, "delay_s": fit.delay_s, "pareto_index": alpha, "scale_units": float(a0), "source": fit.source}
