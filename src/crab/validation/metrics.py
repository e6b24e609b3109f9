"""Validation metrics at the array level (pure functions, no files).

Each function compares two samples (``a`` and ``b``: reference and synthetic,
or two halves of the reference) and returns a statistic whose distribution
under "same parent population" is known or can be estimated from the
reference itself (:func:`null_threshold`).  The orchestration, the floor and
the thresholds live in :mod:`crab.validation.validate`.

Contents
--------
rates            :func:`poisson_rate`, :func:`rate_zscore`, :func:`dispersion_index`
power laws       :func:`powerlaw_slope_mle`
distributions    :func:`ks_statistic`, :func:`scaled_ks`, :func:`quantile_edges`,
                 :func:`separation_power`, :func:`scaled_separation_power`,
                 :func:`exponential_ks_pvalue`
profiles         :func:`profile_chi2` (per-block vectors, e.g. PSD per octave)
spectra          :func:`octave_bands`, :func:`band_log_power`, :func:`autocorrelation`
windows          :func:`window_features`
classifier test  :func:`classifier_features`, :func:`roc_auc`, :func:`roc_curve`,
                 :func:`auc_null_sigma`, :func:`classifier_two_sample_test`
memorisation     :func:`sliding_nn_distance`, :func:`truncate_pool`
seams            :func:`seam_statistics`
thresholds       :func:`null_threshold`
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.fft
import scipy.signal
import scipy.special
import scipy.stats

from crab.core.errors import InputError

FEATURE_NAMES = ("max", "integral", "n_glitches", "skewness", "kurtosis")


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


# --------------------------------------------------------------------------- spectra
def octave_bands(f_lo_hz: float, f_hi_hz: float) -> np.ndarray:
    """Octave band edges ``f_lo * 2**k`` up to ``f_hi`` (the last band may be partial, >= half an octave)."""
    if not (0 < f_lo_hz < f_hi_hz):
        raise InputError(f"need 0 < f_lo < f_hi, got {f_lo_hz}, {f_hi_hz}")
    n = int(np.floor(np.log2(f_hi_hz / f_lo_hz) + 0.5))
    edges = f_lo_hz * 2.0 ** np.arange(n + 1)
    edges[-1] = min(edges[-1], f_hi_hz) if n > 0 else f_hi_hz
    return edges if len(edges) > 1 else np.array([f_lo_hz, f_hi_hz])


def band_log_power(freq_hz: np.ndarray, psd: np.ndarray, edges_hz: np.ndarray) -> np.ndarray:
    """Natural log of the mean PSD in each band ``[edges[k], edges[k+1])`` (last band closed)."""
    f = np.asarray(freq_hz)
    p = np.asarray(psd, dtype=np.float64)
    out = []
    for k in range(len(edges_hz) - 1):
        hi = edges_hz[k + 1]
        m = (f >= edges_hz[k]) & ((f < hi) if k < len(edges_hz) - 2 else (f <= hi))
        out.append(np.log(np.maximum(p[..., m].mean(axis=-1), 1e-300)) if m.any() else np.full(p.shape[:-1], np.nan))
    return np.stack(out, axis=-1)


def autocorrelation(x: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """Normalised autocorrelation at ``lags`` along the last axis (mean removed)."""
    v = np.asarray(x, dtype=np.float64)
    v = v - v.mean(axis=-1, keepdims=True)
    var = np.sum(v * v, axis=-1)
    var = np.where(var > 0, var, np.nan)
    return np.stack([np.sum(v[..., : v.shape[-1] - L] * v[..., L:], axis=-1) / var for L in lags], axis=-1)


# --------------------------------------------------------------------------- windows
def window_features(windows: np.ndarray, sampling_rate_hz: float, n_glitches: np.ndarray | None = None) -> np.ndarray:
    """Per-window features (:data:`FEATURE_NAMES`) of (n_windows, n_samples) TOD windows.

    Each window has its median subtracted first.  ``max`` (units),
    ``integral`` (sum / fs, units s), ``n_glitches`` (given, from the glitch
    detector; 0 if not given), ``skewness`` and ``kurtosis`` (excess) of the
    samples.  Returns (n_windows, 5).
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


# --------------------------------------------------------------------------- classifier test
def roc_auc(scores_pos: np.ndarray, scores_neg: np.ndarray) -> float:
    """ROC AUC = P(score_pos > score_neg) + 0.5 P(tie), by the Mann-Whitney U statistic."""
    p = np.asarray(scores_pos, dtype=np.float64).reshape(-1)
    n = np.asarray(scores_neg, dtype=np.float64).reshape(-1)
    if p.size == 0 or n.size == 0:
        return float("nan")
    ranks = scipy.stats.rankdata(np.concatenate([p, n]))
    u = ranks[: p.size].sum() - p.size * (p.size + 1) / 2.0
    return float(u / (p.size * n.size))


def roc_curve(scores_pos: np.ndarray, scores_neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates over all thresholds (for plots)."""
    s = np.concatenate([scores_pos, scores_neg])
    y = np.concatenate([np.ones(len(scores_pos)), np.zeros(len(scores_neg))])
    order = np.argsort(-s, kind="stable")
    y = y[order]
    tpr = np.concatenate([[0.0], np.cumsum(y) / max(y.sum(), 1)])
    fpr = np.concatenate([[0.0], np.cumsum(1 - y) / max((1 - y).sum(), 1)])
    return fpr, tpr


def auc_null_sigma(n_pos: int, n_neg: int) -> float:
    """Standard deviation of the AUC of an uninformative classifier: ``sqrt((n1+n2+1)/(12 n1 n2))``."""
    if n_pos < 1 or n_neg < 1:
        return float("nan")
    return float(np.sqrt((n_pos + n_neg + 1) / (12.0 * n_pos * n_neg)))


@dataclass
class ClassifierResult:
    """Outcome of :func:`classifier_two_sample_test`.

    Attributes
    ----------
    auc : float
        ROC AUC on the held-out test windows (0.5: indistinguishable; the
        synthetic class ``b`` is the positive class), averaged over the
        ``repeats`` random train/test splits.
    auc_sigma : float
        Standard deviation of the AUC of one split for an uninformative
        classifier (an upper bound for the average over splits).
    train_auc : float
        AUC on the training windows of the first split (for diagnosis of
        over-fitting only).
    train_a, test_a, train_b, test_b : ndarray of int
        Indices (into ``x_a`` / ``x_b``) of the windows used to train and to
        score in the first split; train and test are disjoint (in every split).
    scores_a, scores_b : ndarray
        Classifier outputs on the test windows of the first split.
    fpr, tpr : ndarray
        Test ROC curve of the first split.
    auc_splits : ndarray
        Test AUC of every split (their mean is ``auc``).
    """

    auc: float
    auc_sigma: float
    train_auc: float
    train_a: np.ndarray
    test_a: np.ndarray
    train_b: np.ndarray
    test_b: np.ndarray
    scores_a: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    scores_b: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    fpr: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    tpr: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    auc_splits: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))


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


def _train_and_score(torch, nn, torch_seed, fa, fb, f_tr, y_tr, test_a, test_b, std, hidden, learning_rate, weight_decay, steps):
    """Train the MLP (full batch) and return its scores on the training set and the two test sets."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(torch_seed)
        net = nn.Sequential(nn.Linear(fa.shape[1], hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))
        opt = torch.optim.Adam(net.parameters(), lr=learning_rate, weight_decay=weight_decay)
        loss_fn = nn.BCEWithLogitsLoss()
        X, Y = std(f_tr), torch.from_numpy(y_tr)
        for _ in range(steps):
            opt.zero_grad()
            loss = loss_fn(net(X)[:, 0], Y)
            loss.backward()
            opt.step()
        with torch.no_grad():
            s_tr = net(X)[:, 0].numpy().astype(np.float64)
            s_a = net(std(fa[test_a]))[:, 0].numpy().astype(np.float64)
            s_b = net(std(fb[test_b]))[:, 0].numpy().astype(np.float64)
    return s_tr, s_a, s_b


def classifier_two_sample_test(
    feat_a: np.ndarray,
    feat_b: np.ndarray,
    *,
    seed: int = 0,
    train_fraction: float = 0.5,
    steps: int = 300,
    hidden: int = 64,
    learning_rate: float = 3e-3,
    weight_decay: float = 1e-3,
    max_per_class: int | None = None,
    groups_a: np.ndarray | None = None,
    groups_b: np.ndarray | None = None,
    key: tuple[int, ...] = (),
    repeats: int = 1,
) -> ClassifierResult:
    """Classifier two-sample test: train to tell ``a`` windows from ``b`` windows, score on held-out ones.

    Each class is split at random into disjoint train and test windows
    (``train_fraction`` for training); with ``groups_*`` (e.g. the time block
    of every window) whole groups go to one side, so that windows sharing slow
    features (a noisy stretch, a drift) cannot leak the label from training
    into the test.  The classes are then balanced (the larger one is
    subsampled at random) in train and in test; a small multi-layer perceptron (two
    hidden layers of ``hidden`` units, LeakyReLU) on the standardised
    features (mean and spread from the training split only) is trained with
    full-batch Adam and binary cross-entropy for ``steps`` steps; the ROC AUC
    is computed **on the test windows only** (``b`` is the positive class).
    With ``repeats`` > 1 all this is done for that many independent random
    splits and the AUCs are averaged: one split's AUC scatters by about
    ``auc_sigma`` with the luck of the split alone, which the average removes.

    Parameters
    ----------
    feat_a, feat_b : ndarray (n, n_features)
        Per-window features, e.g. :func:`classifier_features`.
    groups_a, groups_b : ndarray (n,), optional
        Group label of every window; train and test never share a group.
    seed : int
        Seed; randomness comes from ``rng.generator(seed, "validation", *key, 7)``.
    key : tuple of int
        Extra key naming this test (different tests use different streams).
    repeats : int
        Independent train/test splits whose test AUCs are averaged (>= 1).

    Returns
    -------
    ClassifierResult
    """
    import torch
    from torch import nn

    from crab.core import rng

    fa = np.asarray(feat_a, dtype=np.float32)
    fb = np.asarray(feat_b, dtype=np.float32)
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
        raise InputError(f"classifier features must be (n, n_features) with equal n_features, got {fa.shape} and {fb.shape}")
    n = min(len(fa), len(fb))
    if max_per_class:
        n = min(n, int(max_per_class))
    if n < 8:
        raise InputError(f"classifier test needs at least 8 windows per class, got {n}")
    g = rng.generator(seed, "validation", *key, 7)

    def split(n_rows: int, groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if groups is None:
            idx = g.permutation(n_rows)
            k = int(round(train_fraction * n_rows))
            return idx[:k], idx[k:]
        groups = np.asarray(groups)
        if groups.shape != (n_rows,):
            raise InputError(f"groups must have one entry per window ({n_rows}), got shape {groups.shape}")
        u = g.permutation(np.unique(groups))
        if len(u) < 2:
            raise InputError("the classifier test needs windows from at least two groups (time blocks) per class")
        k = min(max(1, int(round(train_fraction * len(u)))), len(u) - 1)
        is_train = np.isin(groups, u[:k])
        return g.permutation(np.flatnonzero(is_train)), g.permutation(np.flatnonzero(~is_train))

    if int(repeats) < 1:
        raise InputError(f"repeats must be >= 1, got {repeats}")
    n_threads = torch.get_num_threads()
    # a network this small is fastest on one thread (and many times slower
    # with several threads on a busy machine); the setting is restored after
    torch.set_num_threads(1)
    try:
        fits = []
        for _ in range(int(repeats)):
            tr_a, te_a = split(len(fa), groups_a)
            tr_b, te_b = split(len(fb), groups_b)
            fits.append(_fit_split(torch, nn, int(g.integers(0, 2**62)), fa, fb, tr_a, te_a, tr_b, te_b, n, train_fraction, hidden, learning_rate, weight_decay, steps))
    finally:
        torch.set_num_threads(n_threads)
    first = fits[0]
    first.auc_splits = np.array([f.auc for f in fits])
    first.auc = float(first.auc_splits.mean())
    return first


def _fit_split(torch, nn, torch_seed, fa, fb, tr_a, te_a, tr_b, te_b, n, train_fraction, hidden, learning_rate, weight_decay, steps) -> ClassifierResult:
    """Balance one train/test split of :func:`classifier_two_sample_test`, fit the classifier, score the test windows."""
    n_train = min(len(tr_a), len(tr_b), max(4, int(round(train_fraction * n))))
    n_test = min(len(te_a), len(te_b), max(4, n - n_train))
    if n_train < 4 or n_test < 4:
        raise InputError(f"classifier test needs at least 4 train and 4 test windows per class, got {n_train} and {n_test}")
    train_a, test_a = np.sort(tr_a[:n_train]), np.sort(te_a[:n_test])
    train_b, test_b = np.sort(tr_b[:n_train]), np.sort(te_b[:n_test])

    f_tr = np.concatenate([fa[train_a], fb[train_b]])
    y_tr = np.concatenate([np.zeros(n_train), np.ones(n_train)]).astype(np.float32)
    mu = f_tr.mean(axis=0)
    sd = f_tr.std(axis=0) + 1e-6

    def std(f: np.ndarray):
        return torch.from_numpy(np.nan_to_num((f - mu) / sd).astype(np.float32))

    s_tr, s_a, s_b = _train_and_score(torch, nn, torch_seed, fa, fb, f_tr, y_tr, test_a, test_b, std, hidden, learning_rate, weight_decay, steps)
    fpr, tpr = roc_curve(s_b, s_a)
    return ClassifierResult(
        auc=roc_auc(s_b, s_a),
        auc_sigma=auc_null_sigma(len(test_a), len(test_b)),
        train_auc=roc_auc(s_tr[n_train:], s_tr[:n_train]),
        train_a=train_a,
        test_a=test_a,
        train_b=train_b,
        test_b=test_b,
        scores_a=s_a,
        scores_b=s_b,
        fpr=fpr,
        tpr=tpr,
    )


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


# --------------------------------------------------------------------------- seams
def seam_statistics(y: np.ndarray, glitch_rows: np.ndarray, glitch_peaks: np.ndarray, period: int, offset: int = 0, halfwidth: int = 2) -> dict[str, float]:
    """Join statistics of a series generated in tiles of ``period`` samples.

    Joins are at samples ``j = offset + k * period`` (k >= 1; the join lies
    between samples ``j - 1`` and ``j``).  With ``y`` the baseline-subtracted
    TOD (n_detectors, n_samples) and the glitch peaks:

    - ``step``: ``sqrt(n_joins) * ln(sigma_join / sigma_all)`` where the sigmas
      are robust (1.4826 MAD) spreads of the first differences across joins
      and of all first differences: a discontinuity or a smoothed join moves it;
    - ``variance``: ``sqrt(n_joins) * ln(s_near / s_all)`` with ``s_near`` the
      robust spread of ``y`` within ``halfwidth`` samples of a join;
    - ``glitch_z``: ``(observed - expected) / sqrt(expected)`` glitch peaks within
      ``halfwidth`` samples of a join, expected from the overall rate.

    All are ~N(0, 1)-scaled, so their spread does not depend on the length.
    """
    y = np.atleast_2d(np.asarray(y, dtype=np.float64))
    n_det, n = y.shape
    P = int(period)
    if P < 2 * halfwidth + 2:
        raise InputError(f"seam period {P} too short for halfwidth {halfwidth}")
    joins = np.arange(int(offset) % P or P, n, P)
    joins = joins[(joins >= halfwidth + 1) & (joins <= n - halfwidth)]
    nj = len(joins) * n_det
    out = {"n_joins": float(nj), "step": float("nan"), "variance": float("nan"), "glitch_z": float("nan")}
    if len(joins) < 2:
        return out

    def rs(v: np.ndarray) -> float:
        return 1.4826 * float(np.median(np.abs(v - np.median(v))))

    d = np.diff(y, axis=1)
    d_join = d[:, joins - 1].reshape(-1)
    s_all_d = rs(d)
    if s_all_d > 0 and rs(d_join) > 0:
        out["step"] = float(np.sqrt(nj) * np.log(rs(d_join) / s_all_d))
    near = (joins[:, None] + np.arange(-halfwidth, halfwidth)[None, :]).reshape(-1)
    s_near = rs(y[:, near])
    s_all = rs(y)
    if s_all > 0 and s_near > 0:
        out["variance"] = float(np.sqrt(nj) * np.log(s_near / s_all))
    mask = np.zeros(n, bool)
    mask[near] = True
    peaks = np.asarray(glitch_peaks, dtype=np.int64)
    n_gl = peaks.size
    if n_gl > 0:
        frac = mask.mean()
        exp = n_gl * frac
        obs = float(np.sum(mask[peaks]))
        out["glitch_z"] = float((obs - exp) / np.sqrt(exp)) if exp > 0 else float("nan")
    else:
        out["glitch_z"] = 0.0
    return out


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
