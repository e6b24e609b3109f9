"""Two-sample statistics of the validation at the array level (pure functions, no files).

Each function compares two samples (``a`` and ``b``: reference and synthetic,
or two halves of the reference) and returns a statistic whose distribution
under "same parent population" is known or can be estimated from the
reference itself (:func:`null_threshold`).  The metrics built on them live in
:mod:`crab.validation.distribution_metrics` and its siblings.

Contents
--------
rates            :func:`poisson_rate`, :func:`rate_zscore`, :func:`dispersion_index`
power laws       :func:`powerlaw_slope_mle`
distributions    :func:`ks_statistic`, :func:`scaled_ks`, :func:`quantile_edges`,
                 :func:`histogram`, :func:`separation_power`,
                 :func:`scaled_separation_power`, :func:`exponential_ks_pvalue`
profiles         :func:`profile_chi2` (per-block vectors, e.g. PSD per octave)
thresholds       :func:`null_threshold`

Elsewhere: spectra in :mod:`crab.validation.spectra`, the classifier test in
:mod:`crab.validation.classifier`, the nearest-window search in
:mod:`crab.validation.nearest_window`, the join statistics in
:mod:`crab.validation.seams`, the window features in
:mod:`crab.analysis.window_features`.
"""

from __future__ import annotations

import numpy as np
import scipy.special
import scipy.stats

from crab.core.errors import InputError


# --------------------------------------------------------------------------- rates
def poisson_rate(count: float, exposure: float) -> tuple[float, float]:
    """Rate ``count / exposure`` and its Poisson error ``sqrt(max(count, 1)) / exposure``.

    The error of a zero count is that of one count (a conservative upper scale).
    """
    if not exposure > 0:
        raise InputError(f"exposure must be > 0, got {exposure}")
    return float(count / exposure), float(np.sqrt(max(count, 1.0)) / exposure)


def dispersion_index(counts: np.ndarray) -> float:
    """``var / mean`` of counts in equal blocks (1 for a Poisson process); 1 if undefined."""
    c = np.asarray(counts, dtype=np.float64)
    if c.size < 2 or c.mean() <= 0:
        return 1.0
    return float(c.var(ddof=1) / c.mean())


def rate_zscore(rate_a: float, err_a: float, rate_b: float, err_b: float) -> float:
    """``(rate_b - rate_a) / sqrt(err_a**2 + err_b**2)`` (0 when both errors vanish)."""
    s = float(np.hypot(err_a, err_b))
    return float((rate_b - rate_a) / s) if s > 0 else 0.0


# --------------------------------------------------------------------------- power laws
def powerlaw_slope_mle(x: np.ndarray, x_min: float) -> tuple[float, float, int]:
    """Maximum-likelihood slope of ``dN/dx ~ x**-alpha`` for ``x >= x_min``.

    ``alpha = 1 + n / sum(ln(x / x_min))``, error ``(alpha - 1) / sqrt(n)``
    (Clauset, Shalizi & Newman 2009).  Returns ``(nan, nan, n)`` for n < 2.
    """
    v = np.asarray(x, dtype=np.float64)
    v = v[np.isfinite(v) & (v >= x_min)]
    n = int(v.size)
    if n < 2 or not x_min > 0:
        return float("nan"), float("nan"), n
    s = float(np.sum(np.log(v / x_min)))
    if s <= 0:
        return float("nan"), float("nan"), n
    alpha = 1.0 + n / s
    return float(alpha), float((alpha - 1.0) / np.sqrt(n)), n


# --------------------------------------------------------------------------- distributions
def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance ``sup |F_a - F_b|`` (nan if a sample is empty)."""
    a = np.sort(np.asarray(a, dtype=np.float64).reshape(-1))
    b = np.sort(np.asarray(b, dtype=np.float64).reshape(-1))
    if a.size == 0 or b.size == 0:
        return float("nan")
    allv = np.concatenate([a, b])
    fa = np.searchsorted(a, allv, side="right") / a.size
    fb = np.searchsorted(b, allv, side="right") / b.size
    return float(np.max(np.abs(fa - fb)))


def effective_n(n_a: int, n_b: int) -> float:
    """``n_a n_b / (n_a + n_b)``: the sample size that scales two-sample statistics."""
    return float(n_a * n_b / (n_a + n_b)) if n_a + n_b > 0 else 0.0


def scaled_ks(a: np.ndarray, b: np.ndarray) -> float:
    """``sqrt(n_eff) * D``: its null distribution (Kolmogorov) does not depend on the sizes.

    ``inf`` when exactly one sample is empty (one set has glitches, the other none),
    ``nan`` when both are.
    """
    na, nb = np.size(a), np.size(b)
    if na == 0 and nb == 0:
        return float("nan")
    if na == 0 or nb == 0:
        return float("inf")
    return float(np.sqrt(effective_n(na, nb)) * ks_statistic(a, b))


def quantile_edges(x: np.ndarray, n_bins: int, integer: bool = False) -> np.ndarray:
    """Bin edges equiprobable in ``x`` (outer edges +-inf); integer data get unit bins.

    For integer data, bins are ``..., k-0.5, k+0.5, ...`` up to the 95th
    percentile, and one overflow bin.
    """
    v = np.asarray(x, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.array([-np.inf, np.inf])
    if integer:
        top = int(np.ceil(np.quantile(v, 0.95)))
        lo = int(np.floor(v.min()))
        inner = np.arange(lo, max(top, lo) + 1) + 0.5
        return np.concatenate([[-np.inf], inner, [np.inf]])
    q = np.quantile(v, np.linspace(0, 1, n_bins + 1)[1:-1])
    q = np.unique(q)
    return np.concatenate([[-np.inf], q, [np.inf]])


def histogram(x: np.ndarray, edges: np.ndarray, nan_bin: bool = False) -> np.ndarray:
    """Counts of ``x`` in ``edges`` (right-open bins); NaNs in an extra last bin if ``nan_bin``."""
    v = np.asarray(x, dtype=np.float64).reshape(-1)
    fin = np.isfinite(v) | np.isinf(v)
    idx = np.searchsorted(edges, v[fin], side="right") - 1
    idx = np.clip(idx, 0, len(edges) - 2)
    h = np.bincount(idx, minlength=len(edges) - 1).astype(np.float64)
    if nan_bin:
        h = np.concatenate([h, [float(np.sum(~fin))]])
    return h


def separation_power(p: np.ndarray, q: np.ndarray) -> float:
    """Histogram separation power ``0.5 * sum((p - q)**2 / (p + q))`` of two histograms.

    ``p`` and ``q`` are normalised to unit sum first; empty bins of both are
    skipped.  0 for identical shapes, 1 for disjoint ones (CaloChallenge).
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan") if p.sum() <= 0 and q.sum() <= 0 else 1.0
    p = p / p.sum()
    q = q / q.sum()
    s = p + q
    m = s > 0
    return float(0.5 * np.sum((p[m] - q[m]) ** 2 / s[m]))


def scaled_separation_power(counts_a: np.ndarray, counts_b: np.ndarray) -> float:
    """Separation power scaled to a chi-square-like statistic: ``4 SP / (1/n_a + 1/n_b)``.

    Under the null (same parent), ``E[SP] ~ (B - 1) (1/n_a + 1/n_b) / 4`` for
    ``B`` non-empty bins (``p + q ~ 2 pi`` in each bin), so the scaled value is
    about chi2(B - 1) whatever the sample sizes.  ``inf`` when exactly one
    histogram is empty.
    """
    na, nb = float(np.sum(counts_a)), float(np.sum(counts_b))
    if na <= 0 and nb <= 0:
        return float("nan")
    if na <= 0 or nb <= 0:
        return float("inf")
    return float(4.0 * separation_power(counts_a, counts_b) / (1.0 / na + 1.0 / nb))


def exponential_ks_pvalue(intervals: np.ndarray, min_interval: float = 0.0) -> tuple[float, float]:
    """Poisson-process test: KS of inter-arrival times against an exponential.

    Intervals shorter than ``min_interval`` (the detector's dead time) are
    dropped and the remainder shifted by it (the exponential is memoryless);
    the rate is estimated from the data, so the p-value is approximate
    (Lilliefors-like, conservative).  Returns ``(ks_statistic, p_value)``.
    """
    v = np.asarray(intervals, dtype=np.float64)
    v = v[np.isfinite(v) & (v >= min_interval)] - min_interval
    if v.size < 5:
        return float("nan"), float("nan")
    res = scipy.stats.kstest(v, "expon", args=(0.0, float(v.mean())))
    return float(res.statistic), float(res.pvalue)


# --------------------------------------------------------------------------- profiles
def profile_chi2(blocks_a: np.ndarray, blocks_b: np.ndarray) -> float:
    """Chi-square distance of the mean profiles of two sets of per-block vectors.

    ``blocks_*`` are (n_blocks, n_components) (e.g. log band power per octave
    in each time block); the error of each mean is the block-to-block scatter
    / sqrt(n_blocks).  Returns ``sum_k (m_a - m_b)**2 / (se_a**2 + se_b**2)``
    (components with zero error are skipped).
    """
    a = np.atleast_2d(np.asarray(blocks_a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(blocks_b, dtype=np.float64))
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise InputError("profile_chi2 needs at least two blocks on each side")
    ma, mb = np.nanmean(a, axis=0), np.nanmean(b, axis=0)
    va = np.nanvar(a, axis=0, ddof=1) / np.sum(np.isfinite(a), axis=0)
    vb = np.nanvar(b, axis=0, ddof=1) / np.sum(np.isfinite(b), axis=0)
    v = va + vb
    m = np.isfinite(v) & (v > 0) & np.isfinite(ma) & np.isfinite(mb)
    return float(np.sum((ma[m] - mb[m]) ** 2 / v[m]))


# --------------------------------------------------------------------------- thresholds
def null_threshold(null_values: np.ndarray, n_sigma: float) -> tuple[float, float, float]:
    """The ``n_sigma`` point of a statistic's null distribution; returns ``(threshold, mean, std)``.

    The null values are the statistic between random re-splits of the
    reference (the floor's own scatter).  A scaled chi-square ``c * chi2(k)``
    is matched to their mean and variance (Satterthwaite: ``k = 2 mean^2 /
    var``, ``c = var / (2 mean)``) and the threshold is its quantile at the
    two-sided normal coverage of ``n_sigma`` (95.45 % for 2, 99.73 % for 3).
    This follows the tail of skewed nulls (chi-square-like distances, the
    Kolmogorov distribution, |z|) far better than ``mean + n sd`` from a few
    hundred re-splits would, and reproduces the Kolmogorov quantiles to a
    percent.
    """
    v = np.asarray(null_values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return float("nan"), float("nan"), float("nan")
    mu, sd = float(v.mean()), float(v.std(ddof=1))
    if not (mu > 0 and sd > 0):
        return mu + n_sigma * sd, mu, sd
    k = 2.0 * mu**2 / sd**2
    c = sd**2 / (2.0 * mu)
    p = float(scipy.special.erf(n_sigma / np.sqrt(2.0)))
    return float(c * scipy.stats.chi2.ppf(p, k)), mu, sd
