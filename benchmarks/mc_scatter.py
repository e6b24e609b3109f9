"""What a perfect generator would score: independent Monte Carlo runs validated against each other.

Usage::

    python benchmarks/mc_scatter.py --out scatter                 # 7 held-out runs (seeds 1001-1007): 21 MC-vs-MC pairs
    python benchmarks/mc_scatter.py --out scatter --runs 4 --splits 4

A generator that reproduced the Monte Carlo exactly would produce one more
independent MC run.  This simulates ``--runs`` held-out runs as ``crab run``
does (1800 s x 4 detectors at 19 Hz, phi 0.6, seeds 1001, 1002 ...) and the
training MC (seed 1), and runs ``crab validate`` with every held-out run as
a reference and the training MC as the synthetic set.  The validation's
floor is then the held-out runs scored against each other: for every metric,
the mean and scatter over the pairs of what independent 30-minute runs of
one wafer score, and the fraction of pairs within the single-reference
threshold (the threshold that one reference's re-splits would set).
Printed: the classifier AUC of every pair, then per metric the floor
(mean +- sd), that fraction, and the training MC's score against the
references (mean +- sd, distance from the floor, verdict).  The report
folder is ``OUT/report``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity_study import ensure_mc


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="study folder")
    ap.add_argument("--runs", type=int, default=7, help="independent held-out MC runs (>= 3 for a scatter of the floor)")
    ap.add_argument("--splits", type=int, default=None, help="classifier splits (default: crab validate's)")
    args = ap.parse_args(argv)
    if args.runs < 2:
        ap.error("--runs must be at least 2")

    from crab.validation import ValidationConfig, validate

    mc = ensure_mc(args.out, n_references=args.runs)
    cfg = ValidationConfig() if args.splits is None else ValidationConfig(classifier_repeats=args.splits)
    res = validate(mc["references"], {"training_mc": mc["train"]}, args.out / "report", config=cfg)
    s = res.sets["training_mc"]
    clf = s.metrics["classifier_auc"]
    aucs = np.asarray(clf.spread.floor_values)
    print(f"classifier AUC of the {len(aucs)} pairs of {args.runs} independent MC runs (reference i, run j scored against it):")
    for (i, j), a in zip(res.floor_pairs, aucs):
        print(f"  {i + 1} vs {j + 1}: {a:.3f}")
    print(f"  mean {aucs.mean():.3f} +- {aucs.std(ddof=1) if aucs.size > 1 else float('nan'):.3f} (sd), min {aucs.min():.3f}, max {aucs.max():.3f}; the target {cfg.auc_target:g}\n")
    print(f"{'metric':<27} {'MC vs MC (mean +- sd)':>24} {'pairs within 1-ref thr.':>24} {'training MC vs refs':>22} {'distance':>18}  verdict")
    for m in s.metrics.values():
        if m.spread is None or not np.isfinite(m.floor):
            continue
        frac = m.spread.floor_pass_fraction
        print(f"{m.name:<27} {m.floor:>12.3g} +- {m.floor_sd:<8.3g} {frac:>24.2f} {m.value:>10.3g} +- {m.sd:<8.3g} {m.distance:>+9.3g} +- {m.distance_error:<5.2g}  "
              f"{'n/a' if m.passed is None else ('PASS' if m.passed else 'FAIL')}")
    print(f"\nreport: {res.out_dir / 'report.md'}")


if __name__ == "__main__":
    main()
