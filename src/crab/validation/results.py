"""What the validation returns: one :class:`MetricResult` per metric and set, gathered in a :class:`ValidationResult`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crab.validation.config import TARGET_METRICS, ValidationConfig


@dataclass
class ReferenceScores:
    """One metric of one set against K >= 2 independent references, and the references against each other.

    Attributes
    ----------
    values, thresholds : list of float
        The metric, and its single-reference threshold, against every
        reference (in the order the references were given).
    passed : list of bool or None
        The single-reference verdicts.
    quantities : list of dict
        The quantities of every single-reference comparison.
    floor_pairs : list of (int, int)
        The MC-vs-MC comparisons: ``(i, j)`` scores reference ``j`` as if it
        were a synthetic set against reference ``i`` (0-based).
    floor_values, floor_thresholds : list of float
        The metric and its single-reference threshold for every pair.
    floor_passed : list of bool or None
        The single-reference verdict of every pair.
    sd, floor_sd : float
        Sample standard deviations (``ddof=1``) of the applicable values and
        floor values (NaN with fewer than two).
    distance_error : float
        Standard error of ``mean - floor mean``: ``sqrt((sd^2 + floor_sd^2) / K)``
        (the floor's pairs share the K references, so they count as K draws).
    threshold_per_reference : float
        Mean of the applicable single-reference thresholds.
    threshold_floor_scatter : float
        Floor mean + n_sigma x floor sd (NaN with fewer than two floor values).
    """

    values: list[float]
    thresholds: list[float]
    passed: list[bool | None]
    quantities: list[dict[str, Any]]
    floor_pairs: list[tuple[int, int]]
    floor_values: list[float]
    floor_thresholds: list[float]
    floor_passed: list[bool | None]
    sd: float
    floor_sd: float
    distance_error: float
    threshold_per_reference: float
    threshold_floor_scatter: float

    @property
    def floor_pass_fraction(self) -> float:
        """Fraction of the applicable floor pairs within their own single-reference threshold."""
        ok = [p for p in self.floor_passed if p is not None]
        return float(np.mean(ok)) if ok else float("nan")


@dataclass
class MetricResult:
    """One metric for one synthetic set, beside the floor.

    With one reference, ``value`` compares the set with the reference and
    ``floor`` the reference's two halves.  With K >= 2 references,
    ``value`` is the mean over the references, ``floor`` the mean over the
    references compared with each other, and ``spread`` holds every
    comparison (:class:`ReferenceScores`).

    Attributes
    ----------
    name, group : str
        Metric id (e.g. ``glitch_rate``) and family (``glitches``, ``noise``,
        ``windows``, ``classifier``, ``memorisation``, ``seams``).
    description : str
        What the decision statistic is.
    role : str
        ``"target"`` or ``"diagnostic"``.
    value : float
        Decision statistic, synthetic vs reference (pass if <= threshold).
    floor : float
        Same statistic, reference half A vs half B (K >= 2: reference vs reference).
    threshold, floor_threshold : float
        Pass thresholds of ``value`` and ``floor`` (they differ only where the
        threshold depends on sample sizes, or for K >= 2).
    passed, floor_passed : bool or None
        None when not applicable (e.g. no training data for memorisation).
    rule : str
        How the threshold derives from the floor.
    quantities : dict
        Physical numbers behind the statistic (rates, slopes, ratios...);
        for K >= 2 their means over the references.
    spread : ReferenceScores or None
        The per-reference and MC-vs-MC scores (K >= 2 only).
    """

    name: str
    group: str
    description: str
    role: str
    value: float
    floor: float
    threshold: float
    floor_threshold: float
    passed: bool | None
    floor_passed: bool | None
    rule: str
    quantities: dict[str, Any] = field(default_factory=dict)
    spread: ReferenceScores | None = None

    @property
    def n_references(self) -> int:
        return 1 if self.spread is None else len(self.spread.values)

    @property
    def sd(self) -> float:
        """Scatter (sample sd) of the metric over the references; NaN for one reference."""
        return float("nan") if self.spread is None else self.spread.sd

    @property
    def floor_sd(self) -> float:
        """Scatter (sample sd) of the MC-vs-MC floor; NaN for one reference (the floor is one comparison of its halves)."""
        return float("nan") if self.spread is None else self.spread.floor_sd

    @property
    def distance(self) -> float:
        """Distance from the floor: ``value - floor`` (for the classifier, dAUC)."""
        return float(self.value - self.floor)

    @property
    def distance_error(self) -> float:
        """Standard error of :attr:`distance`; NaN for one reference."""
        return float("nan") if self.spread is None else self.spread.distance_error

    def to_dict(self) -> dict[str, Any]:
        """The metric's record in ``metrics.json``: the same keys for any number of references (see ``docs/design.md``)."""
        sp = self.spread
        return {
            "name": self.name,
            "group": self.group,
            "description": self.description,
            "role": self.role,
            "value": json_number(self.value),
            "floor": json_number(self.floor),
            "threshold": json_number(self.threshold),
            "floor_threshold": json_number(self.floor_threshold),
            "passed": self.passed,
            "floor_passed": self.floor_passed,
            "rule": self.rule,
            "quantities": jsonable(self.quantities),
            "n_references": self.n_references,
            "floor_kind": "halves" if sp is None else "references",
            "mean": json_number(self.value),
            "sd": json_number(self.sd),
            "values": jsonable([self.value] if sp is None else sp.values),
            "thresholds": jsonable([self.threshold] if sp is None else sp.thresholds),
            "passed_per_reference": [self.passed] if sp is None else list(sp.passed),
            "quantities_per_reference": jsonable([self.quantities] if sp is None else sp.quantities),
            "floor_mean": json_number(self.floor),
            "floor_sd": json_number(self.floor_sd),
            "floor_values": jsonable([self.floor] if sp is None else sp.floor_values),
            "floor_pairs": None if sp is None else [list(p) for p in sp.floor_pairs],
            "floor_pass_fraction": None if sp is None else json_number(sp.floor_pass_fraction),
            "distance": json_number(self.distance),
            "distance_error": json_number(self.distance_error),
            "threshold_per_reference": json_number(self.threshold if sp is None else sp.threshold_per_reference),
            "threshold_floor_scatter": None if sp is None else json_number(sp.threshold_floor_scatter),
        }


@dataclass
class SetResult:
    """All metrics of one synthetic set."""

    name: str
    path: str
    kind: str
    duration_s: float
    n_detectors: int
    metrics: dict[str, MetricResult]
    seam_period_samples: int | None = None
    seam_period_source: str = ""
    seam_phase_samples: int = 0

    @property
    def passed(self) -> bool:
        """Every applicable metric passed."""
        return all(m.passed for m in self.metrics.values() if m.passed is not None)

    @property
    def n_failed(self) -> int:
        return sum(1 for m in self.metrics.values() if m.passed is False)

    def failed(self) -> list[str]:
        """Names of the failed metrics."""
        return [k for k, m in self.metrics.items() if m.passed is False]

    def targets(self) -> dict[str, bool | None]:
        """The issue's fidelity targets: AUC <= target, glitch rate and amplitude distribution within n_sigma_target."""
        out: dict[str, bool | None] = {}
        for k in TARGET_METRICS:
            if k in self.metrics:
                out[k] = self.metrics[k].passed
        return out

    @property
    def targets_met(self) -> bool:
        return all(v for v in self.targets().values() if v is not None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "kind": self.kind,
            "duration_s": self.duration_s,
            "n_detectors": self.n_detectors,
            "seam_period_samples": self.seam_period_samples,
            "seam_period_source": self.seam_period_source,
            "seam_phase_samples": self.seam_phase_samples,
            "passed": self.passed,
            "n_failed": self.n_failed,
            "failed": self.failed(),
            "targets": self.targets(),
            "targets_met": self.targets_met,
            "metrics": {k: m.to_dict() for k, m in self.metrics.items()},
        }


#: The warning of a validation against one reference.
SINGLE_REFERENCE_WARNING = (
    "one reference: its floor is its two halves and its thresholds come from re-splits of it, but one reference is "
    "one random draw (independent MC runs score differently against it); this is the weaker test: give several "
    "independent references (--reference repeated) to score against their mean and their scatter"
)


@dataclass
class ValidationResult:
    """Outcome of :func:`crab.validation.validate.validate`.

    Attributes
    ----------
    config : ValidationConfig
    reference : dict
        Path, duration, detectors, sampling rate, blocks of the reference
        (with several references: of the first).
    sets : dict of str -> SetResult
    training : dict or None
        The training MC, when given: path, duration, detectors, and two
        classifier tests as context (not pass/fail): the training MC against
        the reference (``classifier_auc_vs_reference``, how far the sample
        the model learned from lies from the held-out one; with several
        references its mean, with ``auc_sd`` and ``auc_per_reference``) and every
        synthetic set against the training MC
        (``classifier_auc_sets_vs_training``, ``{set: {"auc", "auc_sigma"}}``,
        how well the model reproduces what it was shown).  A set close to
        its training MC but far from the reference has learned the training
        sample's own differences.
    out_dir : Path or None
        Where metrics.json / report.md / plots were written.
    warnings : list of str
    elapsed_s : float
    references : list of dict
        Every reference (K >= 1), as ``reference``.
    floor_pairs : list of (int, int)
        The MC-vs-MC comparisons of the floor (K >= 2; empty for one reference, whose floor is its halves).
    detection : dict
        Efficiency of the glitch finder against the truth, by height
        (:mod:`crab.validation.detection`): ``"reference"`` (the references pooled), ``"sets"``
        ``{name: curve}`` for the sets with a truth table; empty when no file has one.
    """

    config: ValidationConfig
    reference: dict[str, Any]
    sets: dict[str, SetResult]
    training: dict[str, Any] | None = None
    out_dir: Path | None = None
    warnings: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    plot_data: dict[str, Any] = field(default_factory=dict, repr=False)
    references: list[dict[str, Any]] = field(default_factory=list)
    floor_pairs: list[tuple[int, int]] = field(default_factory=list)
    detection: dict[str, Any] = field(default_factory=dict)

    @property
    def n_references(self) -> int:
        """K, the number of independent references."""
        return max(1, len(self.references))

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.sets.values())

    def metric(self, set_name: str, metric: str) -> MetricResult:
        return self.sets[set_name].metrics[metric]

    def summary_rows(self) -> list[dict[str, Any]]:
        """One row per (set, metric): set, metric, role, floor, value, threshold, passed, floor_passed,
        and the multi-reference columns n_references, sd, floor_sd, distance, distance_error."""
        rows = []
        for s in self.sets.values():
            for m in s.metrics.values():
                rows.append(
                    {
                        "set": s.name,
                        "metric": m.name,
                        "group": m.group,
                        "role": m.role,
                        "floor": m.floor,
                        "value": m.value,
                        "threshold": m.threshold,
                        "passed": m.passed,
                        "floor_passed": m.floor_passed,
                        "n_references": m.n_references,
                        "sd": m.sd,
                        "floor_sd": m.floor_sd,
                        "distance": m.distance,
                        "distance_error": m.distance_error,
                    }
                )
        return rows

    def auc_vs_training(self, set_name: str | None = None) -> float | None:
        """Classifier AUC of a synthetic set against the training MC, or (``set_name`` None) of the
        training MC against the reference (the mean over the references); None without training data."""
        if not self.training:
            return None
        if set_name is None:
            return self.training["classifier_auc_vs_reference"]["auc"]
        return self.training["classifier_auc_sets_vs_training"][set_name]["auc"]

    def training_context_text(self) -> str | None:
        """One line on the training sample's classifier tests (:attr:`training`), or None without them."""
        if self.auc_vs_training() is None:
            return None
        vs = ", ".join(f"{name} {self.auc_vs_training(name):.3f}" for name in self.sets)
        which = "the reference" if self.n_references == 1 else f"the {self.n_references} references (mean)"
        return f"AUC against the training MC instead (context): {vs}; the training MC against {which}: {self.auc_vs_training():.3f}"

    def key_metrics(self) -> dict[str, dict[str, Any]]:
        """Per set: AUC (with its scatter, floor and dAUC), glitch rate (syn, ref, z), amplitude-distribution statistic,
        targets, failed metrics, K."""
        out = {}
        for name, s in self.sets.items():
            mm = s.metrics
            q = mm["glitch_rate"].quantities if "glitch_rate" in mm else {}
            clf = mm.get("classifier_auc")

            def num(v: float | None) -> float | None:
                return None if v is None or np.isnan(v) else float(v)

            out[name] = {
                "n_references": self.n_references,
                "classifier_auc": clf.value if clf is not None else None,
                "classifier_auc_sd": num(clf.sd) if clf is not None else None,
                "classifier_auc_floor": clf.floor if clf is not None else None,
                "classifier_auc_floor_sd": num(clf.floor_sd) if clf is not None else None,
                "classifier_dauc": num(clf.distance) if clf is not None else None,
                "classifier_dauc_error": num(clf.distance_error) if clf is not None else None,
                "classifier_auc_vs_training": self.auc_vs_training(name),
                "glitch_rate_per_det_hour": q.get("rate_synthetic"),
                "glitch_rate_ref_per_det_hour": q.get("rate_reference"),
                "glitch_rate_z": mm["glitch_rate"].value if "glitch_rate" in mm else None,
                "amplitude_distribution_stat": mm["amplitude_distribution"].value if "amplitude_distribution" in mm else None,
                "amplitude_distribution_threshold": mm["amplitude_distribution"].threshold if "amplitude_distribution" in mm else None,
                "targets": s.targets(),
                "targets_met": s.targets_met,
                "passed": s.passed,
                "failed": s.failed(),
            }
        return out

    def auc_text(self, name: str) -> str:
        """The classifier AUC of set ``name`` beside its floor, its dAUC and K, in a few words ("" without it)."""
        m = self.sets[name].metrics.get("classifier_auc")
        if m is None or not np.isfinite(m.value):
            return ""
        if m.spread is None:
            return f"AUC {m.value:.3f} (floor {m.floor:.3f}: halves of K=1 reference; dAUC {m.distance:+.3f})"
        return (f"AUC {m.value:.3f} +- {m.sd:.3f} over K={m.n_references} references, MC vs MC {m.floor:.3f} +- {m.floor_sd:.3f}: "
                f"dAUC {m.distance:+.3f} +- {m.distance_error:.3f}")

    def summary_text(self) -> str:
        """A few lines for a terminal."""
        lines = []
        for name, s in self.sets.items():
            k = self.key_metrics()[name]
            auc = self.auc_text(name)
            lines.append(
                f"{name}: {'PASS' if s.passed else 'FAIL'} ({s.n_failed} of {sum(m.passed is not None for m in s.metrics.values())} metrics failed"
                + (f": {', '.join(s.failed())}" if s.failed() else "")
                + f"); targets {'met' if s.targets_met else 'NOT met'}"
                + (f"; {auc}" if auc else "")
                + (f"; glitch rate z {k['glitch_rate_z']:.2f}" if k["glitch_rate_z"] is not None and np.isfinite(k["glitch_rate_z"]) else "")
            )
        ctx = self.training_context_text()
        if ctx:
            lines.append(ctx)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """``metrics.json`` (format ``crab-validation`` version 2; the keys are described in ``docs/design.md``)."""
        return {
            "format": "crab-validation",
            "format_version": 2,
            "passed": self.passed,
            "n_references": self.n_references,
            "floor_kind": "halves" if self.n_references == 1 else "references",
            "floor_pairs": [list(p) for p in self.floor_pairs],
            "reference": self.reference,
            "references": self.references or [self.reference],
            "training": self.training,
            "sets": {k: s.to_dict() for k, s in self.sets.items()},
            "key_metrics": self.key_metrics(),
            "warnings": self.warnings,
            "elapsed_s": self.elapsed_s,
            "detection_efficiency": jsonable(self.detection),
        }


def json_number(v: Any) -> Any:
    """``v`` for JSON: numpy floats as floats, NaN as None, infinities as "inf" / "-inf"."""
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
    return v


def jsonable(obj: Any) -> Any:
    """``obj`` for JSON: dicts, lists, tuples and arrays element by element (:func:`json_number`)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    return json_number(obj)
