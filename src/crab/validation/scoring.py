"""One set scored against one reference: the reference's own tests, then every metric of the set beside them.

Both validations use it: :func:`crab.validation.validate.validate` with one
reference, and :mod:`crab.validation.multi_reference` with several.  Each
reference is analysed and set up once (:func:`reference_tests`: its halves,
random re-splits, null thresholds, classifier floor, seam nulls); any
analysed set, synthetic or another reference, is then scored against it
(:func:`score_set`, :func:`score_seams`) at the cost of the comparison only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from crab.io.tod import TodFile
from crab.validation.builder import MetricBuilder
from crab.validation.classifier import ClassifierResult
from crab.validation.classifier_metric import (
    classifier_floor,
    classifier_metric,
    classifier_test,
    context_auc,
)
from crab.validation.config import ValidationConfig
from crab.validation.distribution_metrics import (
    DistributionTests,
    distribution_metrics,
    distribution_tests,
)
from crab.validation.floor import ReferenceSplits
from crab.validation.memorisation import (
    MemorisationSetup,
    memorisation_metric,
    training_series,
)
from crab.validation.rate_metrics import rate_metrics, slope_error_inflation
from crab.validation.results import MetricResult
from crab.validation.seams import SeamNulls, seam_metrics
from crab.validation.set_analysis import SetAnalysis, analyse

#: Reading order of the first metrics of a set (the others follow in the order they are computed).
METRIC_ORDER = ("glitch_rate", "amplitude_distribution", "amplitude_slope", "decay_time_distribution", "interarrival_distribution", "coincidence_rate", "detector_correlation")


def reference_key(index: int) -> tuple[int, ...]:
    """Prefix of the random-stream keys of the tests against reference number ``index`` (0-based).

    ``()`` for the first reference, so that a validation against one
    reference draws what it always drew; ``(5, index)`` for the others.
    """
    return () if index == 0 else (5, int(index))


@dataclass
class ReferenceTests:
    """What every metric needs from one reference alone: its splits, floors, nulls and caches.

    Attributes
    ----------
    b : MetricBuilder
    ref : SetAnalysis
        The reference, analysed.
    splits : ReferenceSplits
        Its halves and random re-splits.
    dist : DistributionTests
        The distribution statistics with their halves floors and null thresholds.
    clf_floor : ClassifierResult
        The classifier test of its half B against its half A.
    slope_inflation : float
        :func:`crab.validation.rate_metrics.slope_error_inflation`.
    seams : SeamNulls
        The seam statistics at joins it does not have.
    key : tuple of int
        :func:`reference_key` of this reference.
    """

    b: MetricBuilder
    ref: SetAnalysis
    splits: ReferenceSplits
    dist: DistributionTests
    clf_floor: ClassifierResult
    slope_inflation: float
    seams: SeamNulls
    key: tuple[int, ...] = ()

    @property
    def cfg(self) -> ValidationConfig:
        return self.b.cfg


def reference_tests(ref_an: SetAnalysis, cfg: ValidationConfig, warns: list[str], key: tuple[int, ...] = ()) -> ReferenceTests:
    """Split the reference ``ref_an``; set up the distribution statistics, the classifier floor and the slope's error inflation.

    A warning goes to ``warns`` when the reference has too few glitches for the glitch metrics.
    """
    b = MetricBuilder(cfg)
    splits = ReferenceSplits.of(cfg, ref_an.n_blocks)
    if len(ref_an.glitches) < 20:
        warns.append(f"{ref_an.name} has only {len(ref_an.glitches)} detected glitches: glitch metrics are weak")
    dist = distribution_tests(ref_an, splits, b)
    clf_floor = classifier_floor(ref_an, splits, cfg.classifier_kwargs(), key=key + (2, 0))
    return ReferenceTests(b, ref_an, splits, dist, clf_floor, slope_error_inflation(ref_an, splits, cfg), SeamNulls(ref_an, cfg.seam_halfwidth), key)


@dataclass
class TrainingSample:
    """The Monte Carlo a model was trained on: its analysis and its series for the nearest-window search.

    Attributes
    ----------
    train : TodFile
    analysis : SetAnalysis
        Analysed on the common noise scale of the validation.
    series : list of ndarray
        :func:`crab.validation.memorisation.training_series`.
    """

    train: TodFile
    analysis: SetAnalysis
    series: list[np.ndarray]

    @classmethod
    def of(cls, train: TodFile, cfg: ValidationConfig, scale_sigma: float, sampling_rate_hz: float) -> TrainingSample:
        an = analyse(train.tod, sampling_rate_hz, train.meta.detectors, cfg, scale_sigma=scale_sigma, name="training")
        return cls(train, an, training_series(train.tod, cfg, scale_sigma))

    def memorisation(self, tests: ReferenceTests, warns: list[str]) -> MemorisationSetup:
        """The memorisation test's pools against one reference (its half B held out, its half A the floor's queries)."""
        mem = MemorisationSetup(tests.cfg, tests.ref, self.series, tests.splits.half_a, key=tests.key + (3, 0))
        if mem.copied_reference_fraction > 0.5:
            warns.append(f"more than half of the windows of {tests.ref.name} are copies of training windows: it is not held out")
        return mem

    def auc_vs_reference(self, ref_an: SetAnalysis, key: tuple[int, ...], cfg: ValidationConfig) -> dict[str, float]:
        """:func:`crab.validation.classifier_metric.context_auc` of this sample (the positive class) against a reference."""
        return context_auc(ref_an, self.analysis, key, cfg.classifier_kwargs())

    def auc_of_set(self, san: SetAnalysis, key: tuple[int, ...], cfg: ValidationConfig) -> dict[str, float]:
        """:func:`crab.validation.classifier_metric.context_auc` of a synthetic set (the positive class) against this sample."""
        return context_auc(self.analysis, san, key, cfg.classifier_kwargs())

    def info(self, vs_reference: dict[str, Any], sets_vs_training: dict[str, dict[str, float]]) -> dict[str, Any]:
        """:attr:`crab.validation.results.ValidationResult.training`."""
        return {
            "path": str(self.train.path),
            "duration_s": self.train.duration_s,
            "n_detectors": int(self.train.tod.shape[0]),
            # context, not a target: the classifier test of the training MC against the reference(s), and of
            # every synthetic set against the training MC (see ValidationResult.training)
            "classifier_auc_vs_reference": vs_reference,
            "classifier_auc_sets_vs_training": sets_vs_training,
        }


def score_set(
    tests: ReferenceTests,
    san: SetAnalysis,
    clf_key: tuple[int, ...],
    mem: MemorisationSetup | None,
    mem_key: tuple[int, ...],
    plot_data: dict[str, Any] | None = None,
) -> dict[str, MetricResult]:
    """Every metric but the seams of the analysed set ``san`` against the reference of ``tests``, beside its floor.

    Parameters
    ----------
    tests : ReferenceTests
    san : SetAnalysis
        The set, analysed on the validation's common noise scale.
    clf_key, mem_key : tuple of int
        Random-stream keys of its classifier test and of its memorisation subsample.
    mem : MemorisationSetup or None
        Without training data: the memorisation metric is not applicable.
    plot_data : dict, optional
        Receives the classifier result and the memorisation ratios for the plots.
    """
    b, ref_an = tests.b, tests.ref
    mres: dict[str, MetricResult] = {}
    mres.update(rate_metrics(b, ref_an, san, tests.splits, tests.slope_inflation))
    mres.update(distribution_metrics(b, tests.dist, ref_an, san, tests.splits))
    clf = classifier_test(ref_an, san, clf_key, tests.cfg.classifier_kwargs())
    if plot_data is not None:
        plot_data["classifier"][san.name] = clf
    mres["classifier_auc"] = classifier_metric(b, clf, tests.clf_floor)
    mres["memorisation"] = memorisation_metric(b, mem, san, mem_key, plot_data)
    return mres


def score_seams(tests: ReferenceTests, san: SetAnalysis, period: int, phase: int) -> dict[str, MetricResult]:
    """The seam metrics of ``san`` against the reference of ``tests``, joins at ``phase + k * period``."""
    return seam_metrics(tests.b, tests.seams, san, period, phase)


def in_reading_order(mres: dict[str, MetricResult]) -> dict[str, MetricResult]:
    """``mres`` with :data:`METRIC_ORDER` first, the others in the order they were computed."""
    ordered = {k: mres[k] for k in METRIC_ORDER if k in mres}
    ordered.update({k: v for k, v in mres.items() if k not in ordered})
    return ordered


def reference_info(ref: TodFile, ref_an: SetAnalysis) -> dict[str, Any]:
    """What the report says about one reference (:attr:`crab.validation.results.ValidationResult.reference`)."""
    return {
        "path": str(ref.path),
        "kind": ref.meta.kind,
        "duration_s": ref_an.duration_s,
        "duration_s_file": ref.duration_s,
        "n_detectors": ref_an.n_detectors,
        "detectors": list(ref.meta.detectors),
        "sampling_rate_hz": ref.meta.sampling_rate_hz,
        "block_samples": ref_an.block_samples,
        "n_blocks": ref_an.n_blocks,
        "halves": "A = first half of the time blocks, B = second half",
        "noise_sigma": ref_an.sigma,
        "n_glitches": len(ref_an.glitches),
        "seed": ref.meta.seed,
    }


def common_scale(ref_an: SetAnalysis) -> float:
    """The one noise scale of the classifier and memorisation inputs of every set: the first reference's median noise sigma."""
    return float(np.median(ref_an.sigma))
