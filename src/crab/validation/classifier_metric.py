"""The classifier metric: the two-sample test of reference windows against synthetic ones, beside the floor.

The classifier is trained and scored on windows of different time blocks (no
leakage through slow features shared by neighbouring windows); its AUC passes
below ``max(auc_target, floor AUC + n_sigma * sqrt(sigma_floor^2 + sigma^2))``
with sigma the AUC spread of an uninformative classifier for the test sizes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crab.validation.builder import MetricBuilder
from crab.validation.classifier import ClassifierResult, classifier_two_sample_test
from crab.validation.floor import ReferenceSplits
from crab.validation.results import MetricResult
from crab.validation.set_analysis import SetAnalysis


def classifier_test(a: SetAnalysis, b: SetAnalysis, key: tuple[int, ...], clf_kw: dict[str, Any]) -> ClassifierResult:
    """The classifier two-sample test of all windows of ``b`` against all windows of ``a`` (time blocks as groups)."""
    return classifier_two_sample_test(a.win_clf_feats, b.win_clf_feats, groups_a=a.win_block, groups_b=b.win_block, key=key, **clf_kw)


def context_auc(a: SetAnalysis, b: SetAnalysis, key: tuple[int, ...], clf_kw: dict[str, Any]) -> dict[str, float]:
    """:func:`classifier_test` as context: the mean AUC of the splits and ``auc_sigma``, one split's AUC scatter
    under the null (:func:`crab.validation.classifier.auc_null_sigma`)."""
    clf = classifier_test(a, b, key, clf_kw)
    return {"auc": float(clf.auc), "auc_sigma": float(clf.auc_sigma)}


def classifier_floor(ref: SetAnalysis, splits: ReferenceSplits, clf_kw: dict[str, Any], key: tuple[int, ...] = (2, 0)) -> ClassifierResult:
    """The classifier test of reference half B windows against half A windows: the floor (random stream ``key``)."""
    wa, wb = splits.half_a[ref.win_block], splits.half_b[ref.win_block]
    return classifier_two_sample_test(ref.win_clf_feats[wa], ref.win_clf_feats[wb], groups_a=ref.win_block[wa], groups_b=ref.win_block[wb], key=key, **clf_kw)


def classifier_metric(b: MetricBuilder, clf: ClassifierResult, clf_floor: ClassifierResult) -> MetricResult:
    """The ``classifier_auc`` metric of one synthetic set's test ``clf`` beside the floor's ``clf_floor``."""
    cfg = b.cfg
    ns = b.nsig("classifier_auc")
    thr = max(cfg.auc_target, clf_floor.auc + ns * float(np.hypot(clf_floor.auc_sigma, clf.auc_sigma)))
    fthr = max(cfg.auc_target, 0.5 + ns * clf_floor.auc_sigma)
    return b.make(
        "classifier_auc",
        "classifier",
        f"ROC AUC of a small MLP telling reference from synthetic windows (33 window features), on held-out windows, mean of {cfg.classifier_repeats} random splits",
        clf.auc,
        clf_floor.auc,
        thr,
        f"max({cfg.auc_target:g}, floor AUC + {ns:g} x sqrt(sigma_floor^2 + sigma^2)); floor: max({cfg.auc_target:g}, 0.5 + {ns:g} sigma_floor)",
        {"auc_sigma": clf.auc_sigma, "floor_auc_sigma": clf_floor.auc_sigma, "auc_splits": clf.auc_splits.tolist(), "floor_auc_splits": clf_floor.auc_splits.tolist(), "train_auc": clf.train_auc, "floor_train_auc": clf_floor.train_auc, "n_test_per_class": int(len(clf.test_a)), "floor_n_test_per_class": int(len(clf_floor.test_a))},
        floor_threshold=fthr,
    )
