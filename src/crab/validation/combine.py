"""The verdict of a metric against K >= 2 independent references (:func:`combine_references`).

A synthetic set is scored against every reference with the single-reference
rules (:mod:`crab.validation.scoring`), and every reference is scored the
same way against the others: the MC-vs-MC **floor**.  For each metric:

- ``value`` = mean over the K references, ``sd`` its sample standard
  deviation; ``floor`` = mean over the MC-vs-MC pairs, ``floor_sd`` likewise;
- ``distance`` = ``value - floor`` (for the classifier, dAUC), with the
  standard error ``sqrt((sd^2 + floor_sd^2) / K)`` (the floor's pairs share
  the K references, so they count as K draws);
- ``threshold`` = the larger of

  (a) the mean of the K single-reference thresholds (each derived from its
      reference exactly as with one reference: re-splits, Poisson errors,
      the classifier's floor ...), and
  (b) ``floor + n_sigma x floor_sd``: where the independent references
      themselves reach;

  the metric **passes** when ``value <= threshold``.  (a) keeps the
  sensitivity of the single-reference test while averaging out the luck
  of one reference; (b) keeps the threshold from being tighter than the
  scatter of independent Monte Carlo runs.  Two references give one pair,
  so no floor sd: then (b), ``floor_sd`` and ``distance_error`` are NaN
  and the threshold is (a).
- ``floor_passed``: the floor's mean within the mean of the pairs'
  single-reference thresholds, i.e. whether independent MC runs pass (a) on
  average.  Where it fails, (b) is the larger term and sets the threshold.

A comparison whose single-reference verdict is not applicable (NaN value,
no threshold) is left out of the means; with none left the metric is not
applicable.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from crab.validation.builder import MetricBuilder
from crab.validation.results import MetricResult, ReferenceScores


def _mean(v: list[float]) -> float:
    return float(np.mean(v)) if len(v) else float("nan")


def _sd(v: list[float]) -> float:
    a = np.asarray(v, dtype=np.float64)
    return float(np.std(a, ddof=1)) if a.size >= 2 and np.all(np.isfinite(a)) else float("nan")


def combine_references(b: MetricBuilder, per_reference: list[MetricResult], floor: list[MetricResult], floor_pairs: list[tuple[int, int]]) -> MetricResult:
    """One metric of one set against K >= 2 references, beside the references against each other.

    Parameters
    ----------
    b : MetricBuilder
    per_reference : list of MetricResult
        The metric of the set against every reference (single-reference results).
    floor : list of MetricResult
        The metric of reference ``j`` against reference ``i`` for every pair of ``floor_pairs``.
    floor_pairs : list of (int, int)

    Returns
    -------
    MetricResult
        ``value``, ``floor``, ``threshold`` and the verdicts of the module's
        rule; ``spread`` holds every comparison.
    """
    first = per_reference[0]
    nsig = b.nsig(first.name)
    use = [m for m in per_reference if m.passed is not None]
    fuse = [m for m in floor if m.passed is not None]
    value, sd = _mean([m.value for m in use]), _sd([m.value for m in use])
    floor_mean, floor_sd = _mean([m.value for m in fuse]), _sd([m.value for m in fuse])
    t_ref = _mean([m.threshold for m in use])
    t_scatter = floor_mean + nsig * floor_sd
    threshold = max(t_ref, t_scatter) if np.isfinite(t_scatter) else t_ref
    floor_threshold = _mean([m.threshold for m in fuse])
    k = len(per_reference)
    spread = ReferenceScores(
        values=[m.value for m in per_reference],
        thresholds=[m.threshold for m in per_reference],
        passed=[m.passed for m in per_reference],
        quantities=[m.quantities for m in per_reference],
        floor_pairs=list(floor_pairs),
        floor_values=[m.value for m in floor],
        floor_thresholds=[m.threshold for m in floor],
        floor_passed=[m.passed for m in floor],
        sd=sd,
        floor_sd=floor_sd,
        distance_error=float(np.sqrt((sd**2 + floor_sd**2) / k)),
        threshold_per_reference=t_ref,
        threshold_floor_scatter=t_scatter,
    )
    rule = f"mean over {k} references <= max(mean of the single-reference thresholds [{first.rule}], MC-vs-MC floor mean + {nsig:g} x its sd)"
    passed = bool(value <= threshold) if use and np.isfinite(threshold) else None
    floor_passed = bool(floor_mean <= floor_threshold) if fuse and np.isfinite(floor_threshold) else None
    return MetricResult(first.name, first.group, first.description, first.role, value, floor_mean, threshold, floor_threshold,
                        passed, floor_passed, rule, mean_quantities([m.quantities for m in per_reference]), spread)


def mean_quantities(qs: list[dict[str, Any]]) -> dict[str, Any]:
    """The quantities of several comparisons in one dict: numbers and equal-length arrays averaged (NaN ignored),
    nested dicts merged the same way, anything else kept if equal in all, else listed."""
    out: dict[str, Any] = {}
    for key in qs[0]:
        out[key] = _mean_value([q.get(key) for q in qs])
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _mean_value(vals: list[Any]) -> Any:
    if all(isinstance(v, dict) for v in vals):
        return mean_quantities(vals)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals) and len(set(vals)) == 1:
        return vals[0]  # a count common to all (bins, windows)
    if all(_is_number(v) for v in vals):
        return _nanmean(np.asarray(vals, dtype=np.float64))
    arrays = [np.asarray(v) if isinstance(v, (list, tuple, np.ndarray)) else None for v in vals]
    if all(a is not None and a.dtype.kind in "iuf" and a.shape == arrays[0].shape for a in arrays):
        return _nanmean(np.stack(arrays).astype(np.float64))
    return vals[0] if all(_equal(v, vals[0]) for v in vals) else list(vals)


def _nanmean(a: np.ndarray) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        m = np.nanmean(a, axis=0)
    return float(m) if np.ndim(m) == 0 else m


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (ValueError, TypeError):
        return False
