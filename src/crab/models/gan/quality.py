"""The sample-quality statistic that picks the "best" checkpoint.

The adversarial losses say who is winning, not whether the generated TOD
looks like the Monte Carlo.  After every epoch the trainer generates windows
the way generation will (generator in eval mode, batch-norm statistics
recalibrated, streaming latents with margins, central crop) and compares
them with the real validation windows on glitch-sensitive features of each
window (:func:`crab.analysis.window_features.glitch_sensitive_features`):

``max``, ``min``        highest and lowest sample (glitch height, undershoot)
``std``                 window RMS (glitch energy + noise)
``noise``               robust noise RMS (MAD of first differences)
``n_hot``               samples above 5 noise sigma (glitch occupancy)
``n_glitch``            upward crossings of 5 noise sigma (glitch count)
``diff_kurt``           kurtosis of the first differences (glitch sharpness)
``lag1``                lag-1 autocorrelation (spectral shape, tail lengths)
``pooled``              all samples pooled (amplitude histogram)

The statistic is the mean two-sample Kolmogorov-Smirnov distance over these
distributions: each term in [0, 1], invariant to monotone changes of units
(so pW or transformed amplitudes give the same number), and insensitive to a
few outliers.  Lower is better; the same statistic between two sets of real
windows (:func:`quality_floor`) says what "indistinguishable" looks like
with this many windows.  The full validation (classifier AUC, glitch rates,
spectra) is :mod:`crab.validation`'s job.
"""

from __future__ import annotations

import numpy as np

from crab.analysis.window_features import glitch_sensitive_features


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (max distance between the empirical CDFs)."""
    a = np.sort(np.asarray(a, dtype=np.float64).reshape(-1))
    b = np.sort(np.asarray(b, dtype=np.float64).reshape(-1))
    if a.size == 0 or b.size == 0:
        return 1.0
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / a.size
    cdf_b = np.searchsorted(b, grid, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def sample_quality(real: np.ndarray, fake: np.ndarray, noise_sigma: float) -> tuple[float, dict[str, float]]:
    """Distance between real and generated windows: mean KS distance of the features.

    Parameters
    ----------
    real, fake : ndarray (n, channels, samples)
        Windows in the same units (TOD units or transformed: KS is invariant
        to the monotone transform, apart from ``noise_sigma``'s units).
    noise_sigma : float
        Global noise RMS in those units.

    Returns
    -------
    (statistic, per-feature distances); lower is better, 0 = identical distributions.
    """
    fr = glitch_sensitive_features(real, noise_sigma)
    ff = glitch_sensitive_features(fake, noise_sigma)
    parts = {k: ks_distance(fr[k], ff[k]) for k in fr}
    return float(np.mean(list(parts.values()))), parts


def quality_floor(real_a: np.ndarray, real_b: np.ndarray, noise_sigma: float) -> float:
    """The statistic between two sets of real windows: its value for a perfect generator."""
    return sample_quality(real_a, real_b, noise_sigma)[0]
