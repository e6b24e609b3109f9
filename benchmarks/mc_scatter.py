"""What a perfect generator would score: independent Monte Carlo runs validated against the held-out MC of ``crab run``.

Usage::

    python benchmarks/mc_scatter.py --out scatter                    # MC seeds 2-9, 1800 s x 4 detectors each
    python benchmarks/mc_scatter.py --out scatter --seeds 2 3 4 --splits 8

A generator that reproduced the Monte Carlo exactly would produce one more
independent MC run.  This simulates such runs (``crab simulate``, the
configuration of ``crab run``'s training MC with other seeds; the training
MC itself, seed 1, is included) and scores each against the held-out MC
(seed 1001) with the classifier two-sample test of ``crab validate`` (same
window features, MLP and splits: the figure is the one ``crab validate``
would report for that file).  Printed: the AUC of every run, and their mean,
minimum and maximum: the scatter of the classifier AUC between independent
30-minute runs of one wafer, next to the floor (two halves of the held-out
MC) that ``crab validate`` derives its threshold from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity_study import HeldoutClassifier, ensure_mc, simulate_mc  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="study folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(2, 10)), help="MC seeds besides the training MC's (1)")
    ap.add_argument("--splits", type=int, default=None, help="classifier splits (default: crab validate's)")
    args = ap.parse_args(argv)

    mc = ensure_mc(args.out)
    clf = HeldoutClassifier(mc["heldout"])
    floor = clf.floor(args.splits)
    print(f"floor (held-out MC, half A vs half B): AUC {floor.auc:.3f} +- {floor.auc_sigma:.3f}")
    aucs = {}
    for seed in [1, *args.seeds]:
        path = mc["train"] if seed == 1 else simulate_mc(args.out / f"mc_seed{seed}.h5", seed)
        aucs[seed] = clf.auc(path, args.splits)
        print(f"MC seed {seed}{' (the training MC)' if seed == 1 else ''}: AUC {aucs[seed]:.3f}", flush=True)
    others = np.array([a for s, a in aucs.items() if s != 1])
    if others.size:
        print(f"independent MC runs (seeds {', '.join(str(s) for s in args.seeds)}): AUC mean {others.mean():.3f}, min {others.min():.3f}, max {others.max():.3f}; "
              f"the training MC {aucs[1]:.3f}; the target 0.60")


if __name__ == "__main__":
    main()
