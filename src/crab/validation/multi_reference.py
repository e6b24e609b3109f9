"""Validation against K >= 2 independent references: every set scored against each, the references against each other.

One reference is one random draw of the Monte Carlo: independent runs of one
setup score differently against it (the 21 pairs of seven 30-minute runs of
one wafer: classifier AUC 0.503 +- 0.022, ``benchmarks/mc_scatter.py``), so
a verdict against one reference is partly the luck of that draw.  With K
independent references:

1. every file is analysed once (:func:`crab.validation.set_analysis.analyse`)
   on one noise scale, the first reference's;
2. every reference is set up once (:func:`crab.validation.scoring.reference_tests`:
   its re-splits, null thresholds, classifier floor ...);
3. the **floor**: every pair of references is scored, reference ``j`` as if
   it were a synthetic set against reference ``i`` (:func:`floor_pairs`), with
   the single-reference metrics: what an independent MC run, i.e. a perfect
   generator, scores;
4. every synthetic set is scored against every reference;
5. per metric, :func:`crab.validation.combine.combine_references` gives the
   mean and scatter over the references, the floor's mean and scatter,
   the distance from the floor and the verdict.

The random streams of reference ``k`` are keyed by
:func:`crab.validation.scoring.reference_key`; those of the floor's pairs by
``(4, i, j)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crab.io.tod import TodFile
from crab.validation.combine import combine_references
from crab.validation.config import ValidationConfig
from crab.validation.results import MetricResult, SetResult, ValidationResult, jsonable
from crab.validation.scoring import (
    ReferenceTests,
    TrainingSample,
    common_scale,
    in_reading_order,
    reference_info,
    reference_key,
    reference_tests,
    score_seams,
    score_set,
)
from crab.validation.seams import seam_period
from crab.validation.set_analysis import SetAnalysis, analyse

#: First key of the random streams of the floor's pairs, ``(FLOOR_KEY, i, j)``.
FLOOR_KEY = 4


def floor_pairs(k: int) -> list[tuple[int, int]]:
    """The MC-vs-MC comparisons of the floor of ``k`` references: every pair ``(i, j)``, ``i < j``.

    ``(i, j)`` scores reference ``j`` as the set against reference ``i``.  One
    order per pair: the other order is the same comparison for the symmetric
    statistics (rate z-scores), so it would add no information and fake a
    scatter; two references therefore give one pair, and a floor without a
    scatter.
    """
    return [(i, j) for i in range(k) for j in range(i + 1, k)]


def n_steps(n_references: int, n_sets: int, training: bool) -> int:
    """Progress-bar steps of a validation (:func:`crab.validation.validate.validate`)."""
    if n_references == 1:
        return 3 + 4 * n_sets + (2 if training else 0)
    k = n_references
    return 2 * k + n_sets + len(floor_pairs(k)) + k * n_sets + ((1 + k) if training else 0)


def validate_references(refs: list[TodFile], syns: dict[str, TodFile], train: TodFile | None, cfg: ValidationConfig, warns: list[str], pb) -> ValidationResult:
    """Every set of ``syns`` against every reference of ``refs`` (K >= 2), beside the references against each other.

    Parameters
    ----------
    refs : list of TodFile
        Independent Monte Carlo runs of one setup (checked by
        :func:`crab.validation.inputs.check_references`).
    syns : dict of str -> TodFile
    train : TodFile or None
        The training MC (memorisation test, training-sample context).
    cfg : ValidationConfig
    warns : list of str
        Receives the warnings.
    pb : progress bar
        Advanced by :func:`n_steps` steps.

    Returns
    -------
    ValidationResult
        Not yet written (no ``out_dir``, no ``elapsed_s``).
    """
    k = len(refs)
    if k == 2:
        warns.append("two references give one MC-vs-MC comparison: the floor has no scatter (its sd and the distances' errors are n/a) "
                     "and the thresholds are the mean single-reference ones; give three or more references for the floor's scatter")
    fs = refs[0].meta.sampling_rate_hz
    ref_an = [analyse(refs[0].tod, fs, refs[0].meta.detectors, cfg, name="reference 1")]
    scale = common_scale(ref_an[0])
    ref_an += [analyse(r.tod, fs, r.meta.detectors, cfg, scale_sigma=scale, name=f"reference {i + 1}") for i, r in enumerate(refs[1:], start=1)]
    pb.update(k)
    syn_an: dict[str, SetAnalysis] = {}
    for name, s in syns.items():
        syn_an[name] = analyse(s.tod, fs, s.meta.detectors, cfg, scale_sigma=scale, name=name)
        pb.update()
    tests = []
    for i, an in enumerate(ref_an):
        tests.append(reference_tests(an, cfg, warns, reference_key(i)))
        pb.update()
    sample = TrainingSample.of(train, cfg, scale, fs) if train is not None else None
    mems = [sample.memorisation(t, warns) for t in tests] if sample is not None else [None] * k
    vs_ref = [sample.auc_vs_reference(ref_an[i], reference_key(i) + (3, 0), cfg) for i in range(k)] if sample is not None else []
    if sample is not None:
        pb.update(1 + k)
    plot_data: dict[str, Any] = {"reference": ref_an[0], "references": ref_an, "synthetic": syn_an, "classifier": {}, "memorisation": {}, "nulls": tests[0].dist.nulls}
    pairs = floor_pairs(k)
    floor = _Floor(tests, ref_an, mems, pairs, plot_data, pb)
    results: dict[str, SetResult] = {}
    sets_vs_training: dict[str, dict[str, float]] = {}
    for si, (name, san) in enumerate(syn_an.items()):
        syn = syns[name]
        P, phase, src = seam_period(syn.meta, cfg)
        per_ref = []
        for i, t in enumerate(tests):
            key = reference_key(i)
            mres = score_set(t, san, key + (2, si + 1), mems[i], key + (3, si + 1), plot_data if i == 0 else None)
            mres.update(score_seams(t, san, P, phase))
            per_ref.append(in_reading_order(mres))
            pb.update()
        if sample is not None:
            sets_vs_training[name] = sample.auc_of_set(san, (3, si + 1), cfg)
        fl = floor.at_seams(P, phase)
        combined = {m: combine_references(tests[0].b, [r[m] for r in per_ref], [f[m] for f in fl], pairs) for m in per_ref[0]}
        results[name] = SetResult(name, str(syn.path), syn.meta.kind, san.duration_s, san.n_detectors, combined, P, src, phase)
    infos = [jsonable(reference_info(r, an)) for r, an in zip(refs, ref_an)]
    training = sample.info(_mean_auc(vs_ref), sets_vs_training) if sample is not None else None
    return ValidationResult(config=cfg, reference=infos[0], sets=results, training=training, warnings=warns, plot_data=plot_data, references=infos, floor_pairs=pairs)


class _Floor:
    """The references scored against each other: every metric but the seams once per pair, the seams per join pattern."""

    def __init__(self, tests: list[ReferenceTests], ref_an: list[SetAnalysis], mems: list, pairs: list[tuple[int, int]], plot_data: dict[str, Any], pb) -> None:
        self.tests, self.ref_an, self.pairs = tests, ref_an, pairs
        self.base: list[dict[str, MetricResult]] = []
        for i, j in pairs:
            pd: dict[str, Any] = {"classifier": {}, "memorisation": {}}
            self.base.append(score_set(tests[i], ref_an[j], (FLOOR_KEY, i, j), mems[i], (FLOOR_KEY, i, j), pd))
            if "floor" not in plot_data["classifier"]:
                plot_data["classifier"]["floor"] = pd["classifier"][ref_an[j].name]
                plot_data["classifier_floor_label"] = f"floor ({ref_an[j].name} vs {ref_an[i].name})"
            pb.update()
        self._seams: dict[tuple[int, int], list[dict[str, MetricResult]]] = {}

    def at_seams(self, period: int, phase: int) -> list[dict[str, MetricResult]]:
        """Every pair's metrics, with the seams at joins ``phase + k * period`` (the synthetic set's)."""
        if (period, phase) not in self._seams:
            self._seams[(period, phase)] = [
                {**base, **score_seams(self.tests[i], self.ref_an[j], period, phase)} for base, (i, j) in zip(self.base, self.pairs)
            ]
        return self._seams[(period, phase)]


def _mean_auc(per_reference: list[dict[str, float]]) -> dict[str, Any]:
    """The training MC against every reference: the mean AUC (``auc``, ``auc_sigma``), its scatter and the values."""
    aucs = np.array([d["auc"] for d in per_reference])
    return {
        "auc": float(aucs.mean()),
        "auc_sigma": float(np.mean([d["auc_sigma"] for d in per_reference])),
        "auc_sd": float(aucs.std(ddof=1)) if aucs.size > 1 else float("nan"),
        "auc_per_reference": aucs.tolist(),
    }
