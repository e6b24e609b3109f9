"""Features of short TOD windows, the one home of every per-window description.

Three descriptions of (n_windows, n_samples) windows, each for one use:

:func:`glitch_sensitive_features`
    Distributions compared by the GAN's checkpoint selection
    (:mod:`crab.models.gan.quality`): extremes, RMS, robust noise, samples
    and crossings above a glitch threshold, sharpness, lag-1 correlation.
:func:`window_summary_features`
    The five numbers of :data:`WINDOW_SUMMARY_NAMES` whose histograms the
    validation compares (:mod:`crab.validation.distribution_metrics`).
:func:`classifier_features`
    The 33 robust numbers the classifier two-sample test of the validation
    learns from (:mod:`crab.validation.classifier`).
"""

from __future__ import annotations

import numpy as np

from crab.core.errors import InputError

#: Threshold (in robust noise sigma) of the glitch features of :func:`glitch_sensitive_features`.
GLITCH_SIGMA = 5.0

#: Columns of :func:`window_summary_features`.
WINDOW_SUMMARY_NAMES = ("max", "integral", "n_glitches", "skewness", "kurtosis")


def glitch_sensitive_features(windows: np.ndarray, noise_sigma: float) -> dict[str, np.ndarray]:
    """Glitch-sensitive features of ``windows`` (n, channels, samples) in TOD units.

    ``noise_sigma`` is the global white-noise RMS (TOD units) of the training
    data, the unit of the glitch thresholds.  Every channel is a window of its
    own here.  Returns feature name -> array of n * channels values:

    ``max``, ``min``        highest and lowest sample (glitch height, undershoot; TOD units)
    ``std``                 window RMS (glitch energy + noise; TOD units)
    ``noise``               robust noise RMS (MAD of first differences / sqrt 2; TOD units)
    ``n_hot``               samples above :data:`GLITCH_SIGMA` noise sigma (glitch occupancy)
    ``n_glitch``            upward crossings of :data:`GLITCH_SIGMA` noise sigma (glitch count)
    ``diff_kurt``           kurtosis of the first differences (glitch sharpness)
    ``lag1``                lag-1 autocorrelation (spectral shape, tail lengths)
    ``pooled``              a subsample (at most 200000) of all median-subtracted samples
    """
    x = np.asarray(windows, dtype=np.float64)
    x = x.reshape(-1, x.shape[-1])
    med = np.median(x, axis=1, keepdims=True)
    c = x - med
    d = np.diff(x, axis=1)
    noise = 1.4826 * np.median(np.abs(d - np.median(d, axis=1, keepdims=True)), axis=1) / np.sqrt(2.0)
    hot = c > GLITCH_SIGMA * noise_sigma
    n_glitch = np.sum(hot[:, 1:] & ~hot[:, :-1], axis=1) + hot[:, 0]
    dc = d - d.mean(axis=1, keepdims=True)
    kurt = np.mean(dc**4, axis=1) / np.maximum(np.mean(dc**2, axis=1) ** 2, 1e-300)
    cc = c - c.mean(axis=1, keepdims=True)
    lag1 = np.sum(cc[:, 1:] * cc[:, :-1], axis=1) / np.maximum(np.sum(cc * cc, axis=1), 1e-300)
    pooled = c.reshape(-1)
    if pooled.size > 200_000:
        pooled = pooled[:: int(np.ceil(pooled.size / 200_000))]
    return {
        "max": c.max(axis=1),
        "min": c.min(axis=1),
        "std": c.std(axis=1),
        "noise": noise,
        "n_hot": hot.sum(axis=1).astype(np.float64),
        "n_glitch": n_glitch.astype(np.float64),
        "diff_kurt": kurt,
        "lag1": lag1,
        "pooled": pooled,
    }


def window_summary_features(windows: np.ndarray, sampling_rate_hz: float, n_glitches: np.ndarray | None = None) -> np.ndarray:
    """Five numbers per window (:data:`WINDOW_SUMMARY_NAMES`) of (n_windows, n_samples) TOD windows.

    Each window has its median subtracted first.  ``max`` (TOD units),
    ``integral`` (sum / fs, TOD units x s), ``n_glitches`` (given, from the
    glitch detector; 0 if not given), ``skewness`` and ``kurtosis`` (excess)
    of the samples.  Returns (n_windows, 5).
    """
    w = np.asarray(windows, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] < 3:
        raise InputError(f"windows must be (n_windows, n_samples >= 3), got {w.shape}")
    w = w - np.median(w, axis=1, keepdims=True)
    mx = w.max(axis=1)
    integ = w.sum(axis=1) / sampling_rate_hz
    c = w - w.mean(axis=1, keepdims=True)
    m2 = np.mean(c**2, axis=1)
    safe = np.where(m2 > 0, m2, np.nan)
    skew = np.nan_to_num(np.mean(c**3, axis=1) / safe**1.5)
    kurt = np.nan_to_num(np.mean(c**4, axis=1) / safe**2 - 3.0)
    ng = np.zeros(len(w)) if n_glitches is None else np.asarray(n_glitches, dtype=np.float64)
    return np.stack([mx, integ, ng, skew, kurt], axis=1)


def classifier_features(windows: np.ndarray, scale: float, n_glitches: np.ndarray | None = None) -> np.ndarray:
    """Robust description of each TOD window for the classifier two-sample test.

    The window (median subtracted, in units of ``scale``, e.g. the reference's
    noise sigma) is compressed with ``asinh(w / 2)`` so that huge glitches do
    not dominate, then described by (33 numbers): 11 quantiles of its samples
    (including min and max), the log power in each octave of its periodogram
    (7 bands for 256 samples), the spread of its first differences and its
    lag-1 and lag-2 autocorrelation, the shape around its maximum (samples -2
    .. +6 divided by the maximum: rise and decay of the largest glitch),
    skewness, kurtosis, integral and the number of detected glitches.
    """
    w = np.asarray(windows, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] < 16:
        raise InputError(f"windows must be (n_windows, n_samples >= 16), got {w.shape}")
    n, W = w.shape
    w = w - np.median(w, axis=1, keepdims=True)
    z = np.arcsinh(w / (2.0 * scale))
    qs = np.quantile(z, [0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0], axis=1).T
    spec = np.abs(np.fft.rfft(z - z.mean(axis=1, keepdims=True), axis=1)) ** 2
    bands = []
    k = 1
    while k < spec.shape[1] - 1:
        bands.append(np.log(spec[:, k : min(2 * k, spec.shape[1])].mean(axis=1) + 1e-12))
        k *= 2
    d = np.diff(z, axis=1)
    c = z - z.mean(axis=1, keepdims=True)
    var = np.maximum((c * c).mean(axis=1), 1e-12)
    ac1 = (c[:, :-1] * c[:, 1:]).mean(axis=1) / var
    ac2 = (c[:, :-2] * c[:, 2:]).mean(axis=1) / var
    p = np.argmax(w, axis=1)
    offs = np.arange(-2, 7)
    idx = np.clip(p[:, None] + offs[None, :], 0, W - 1)
    peak = np.maximum(w[np.arange(n), p], 1e-12)
    shape = np.delete(w[np.arange(n)[:, None], idx] / peak[:, None], 2, axis=1)
    skew = (c**3).mean(axis=1) / var**1.5
    kurt = (c**4).mean(axis=1) / var**2 - 3.0
    integ = np.arcsinh(w.sum(axis=1) / (scale * np.sqrt(W)))
    ng = np.zeros(n) if n_glitches is None else np.asarray(n_glitches, dtype=np.float64)
    cols = [qs, np.stack(bands, axis=1), np.stack([np.log(d.std(axis=1) + 1e-12), ac1, ac2], axis=1), np.clip(shape, -2, 2), np.stack([np.arcsinh(skew), np.arcsinh(kurt), integ, ng], axis=1)]
    return np.concatenate(cols, axis=1).astype(np.float32)
