"""What the validation returns: one :class:`MetricResult` per metric and set, gathered in a :class:`ValidationResult`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crab.validation.config import TARGET_METRICS, ValidationConfig


@dataclass
class MetricResult:
    """One metric for one synthetic set, beside the floor.

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
        Decision statistic, synthetic vs full reference (pass if <= threshold).
    floor : float
        Same statistic, reference half A vs half B.
    threshold, floor_threshold : float
        Pass thresholds of ``value`` and ``floor`` (they differ only where the
        threshold depends on sample sizes).
    passed, floor_passed : bool or None
        None when not applicable (e.g. no training data for memorisation).
    rule : str
        How the threshold derives from the floor.
    quantities : dict
        Physical numbers behind the statistic (rates, slopes, ratios...).
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

    def to_dict(self) -> dict[str, Any]:
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


@dataclass
class ValidationResult:
    """Outcome of :func:`crab.validation.validate.validate`.

    Attributes
    ----------
    config : ValidationConfig
    reference : dict
        Path, duration, detectors, sampling rate, blocks of the reference.
    sets : dict of str -> SetResult
    training : dict or None
        The training MC, when given: path, duration, detectors, and two
        classifier tests as context (not pass/fail): the training MC against
        the reference (``classifier_auc_vs_reference``, how far the sample
        the model learned from lies from the held-out one) and every
        synthetic set against the training MC
        (``classifier_auc_sets_vs_training``, ``{set: {"auc", "auc_sigma"}}``,
        how well the model reproduces what it was shown).  A set close to
        its training MC but far from the reference has learned the training
        sample's own differences.
    out_dir : Path or None
        Where metrics.json / report.md / plots were written.
    warnings : list of str
    elapsed_s : float
    """

    config: ValidationConfig
    reference: dict[str, Any]
    sets: dict[str, SetResult]
    training: dict[str, Any] | None = None
    out_dir: Path | None = None
    warnings: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    plot_data: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.sets.values())

    def metric(self, set_name: str, metric: str) -> MetricResult:
        return self.sets[set_name].metrics[metric]

    def summary_rows(self) -> list[dict[str, Any]]:
        """One row per (set, metric): set, metric, role, floor, value, threshold, passed, floor_passed."""
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
                    }
                )
        return rows

    def auc_vs_training(self, set_name: str | None = None) -> float | None:
        """Classifier AUC of a synthetic set against the training MC, or (``set_name`` None) of the
        training MC against the reference; None without training data."""
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
        return f"AUC against the training MC instead (context): {vs}; the training MC against the reference: {self.auc_vs_training():.3f}"

    def key_metrics(self) -> dict[str, dict[str, Any]]:
        """Per set: AUC, glitch rate (syn, ref, z), amplitude-distribution statistic, targets, failed metrics."""
        out = {}
        for name, s in self.sets.items():
            mm = s.metrics
            q = mm["glitch_rate"].quantities if "glitch_rate" in mm else {}
            out[name] = {
                "classifier_auc": mm["classifier_auc"].value if "classifier_auc" in mm else None,
                "classifier_auc_floor": mm["classifier_auc"].floor if "classifier_auc" in mm else None,
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

    def summary_text(self) -> str:
        """A few lines for a terminal."""
        lines = []
        for name, s in self.sets.items():
            k = self.key_metrics()[name]
            auc = k["classifier_auc"]
            lines.append(
                f"{name}: {'PASS' if s.passed else 'FAIL'} ({s.n_failed} of {sum(m.passed is not None for m in s.metrics.values())} metrics failed"
                + (f": {', '.join(s.failed())}" if s.failed() else "")
                + f"); targets {'met' if s.targets_met else 'NOT met'}"
                + (f"; AUC {auc:.3f} (floor {k['classifier_auc_floor']:.3f})" if auc is not None and np.isfinite(auc) else "")
                + (f"; glitch rate z {k['glitch_rate_z']:.2f}" if k["glitch_rate_z"] is not None and np.isfinite(k["glitch_rate_z"]) else "")
            )
        ctx = self.training_context_text()
        if ctx:
            lines.append(ctx)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "crab-validation",
            "format_version": 1,
            "passed": self.passed,
            "reference": self.reference,
            "training": self.training,
            "sets": {k: s.to_dict() for k, s in self.sets.items()},
            "key_metrics": self.key_metrics(),
            "warnings": self.warnings,
            "elapsed_s": self.elapsed_s,
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
