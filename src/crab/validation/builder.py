"""Turns a metric's value, floor and threshold into a :class:`crab.validation.results.MetricResult` with its verdicts."""

from __future__ import annotations

import numpy as np

from crab.validation.config import TARGET_METRICS, ValidationConfig
from crab.validation.results import MetricResult


class MetricBuilder:
    """Fills MetricResults with the floor, the threshold rule and the pass/fail.

    A metric passes when its value is at most its threshold; it is not
    applicable (verdict None) when the threshold is not finite or the value is NaN.
    """

    def __init__(self, cfg: ValidationConfig):
        self.cfg = cfg

    def nsig(self, name: str) -> float:
        """The metric's threshold in floor sigmas: ``n_sigma_target`` for :data:`TARGET_METRICS`, else ``n_sigma``."""
        return self.cfg.n_sigma_target if name in TARGET_METRICS else self.cfg.n_sigma

    def role(self, name: str) -> str:
        return "target" if name in TARGET_METRICS else "diagnostic"

    def make(self, name: str, group: str, description: str, value: float, floor: float, threshold: float, rule: str, quantities: dict, floor_threshold: float | None = None, applicable: bool = True) -> MetricResult:
        ft = threshold if floor_threshold is None else floor_threshold

        def ok(v: float, t: float) -> bool | None:
            if not applicable or not np.isfinite(t):
                return None
            if np.isnan(v):
                return None
            return bool(v <= t)

        return MetricResult(name, group, description, self.role(name), float(value), float(floor), float(threshold), float(ft), ok(value, threshold), ok(floor, ft), rule, quantities)

