"""The classifier two-sample test: can a small network tell two sets of windows apart?

:func:`classifier_two_sample_test` trains a small MLP on the window features
(:func:`crab.analysis.window_features.classifier_features`) of two sets and
scores held-out windows; :func:`roc_auc` of the scores measures the
difference (0.5: indistinguishable).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.stats

from crab.core import rng
from crab.core.errors import InputError


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
        Per-window features, e.g. :func:`crab.analysis.window_features.classifier_features`.
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
    # torch is imported on use: it is heavy and only this test needs it
    import torch
    from torch import nn

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
