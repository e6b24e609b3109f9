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
from fidelity_study import _run, ensure_mc  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="study folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(2, 10)), help="MC seeds besides the training MC's (1)")
    ap.add_argument("--splits", type=int, default=None, help="classifier splits (default: crab validate's)")
    args = ap.parse_args(argv)

    from crab import metrics as M
    from crab.tod_io import read_tod
    from crab.validation import ValidationConfig, analyse

    mc = ensure_mc(args.out)
    cfg = ValidationConfig()
    splits = args.splits or cfg.classifier_repeats
    kw = dict(steps=cfg.classifier_steps, hidden=cfg.classifier_hidden, weight_decay=cfg.classifier_weight_decay, max_per_class=cfg.classifier_max_windows, seed=cfg.seed, repeats=splits)
    ref = read_tod(mc["heldout"])
    ra = analyse(ref.tod, ref.meta.sampling_rate_hz, ref.meta.detectors, cfg, name="reference")
    scale = float(np.median(ra.sigma))
    half = np.arange(ra.n_blocks) < ra.n_blocks // 2  # crab validate's halves
    wa, wb = half[ra.win_block], ~half[ra.win_block]
    floor = M.classifier_two_sample_test(ra.win_clf_feats[wa], ra.win_clf_feats[wb], groups_a=ra.win_block[wa], groups_b=ra.win_block[wb], key=(2, 0), **kw)
    print(f"floor (held-out MC, half A vs half B): AUC {floor.auc:.3f} +- {floor.auc_sigma:.3f}")
    aucs = {}
    for seed in [1, *args.seeds]:
        path = mc["train"] if seed == 1 else args.out / f"mc_seed{seed}.h5"
        if not path.exists():
            _run("simulate", "--duration", 1800, "--detectors", 4, "--sampling-rate", 19, "--phi", 0.6, "--seed", seed, "--out", path, "--no-progress")
        s = read_tod(path)
        sa = analyse(s.tod, s.meta.sampling_rate_hz, s.meta.detectors, cfg, scale_sigma=scale, name=path.stem)
        aucs[seed] = M.classifier_two_sample_test(ra.win_clf_feats, sa.win_clf_feats, groups_a=ra.win_block, groups_b=sa.win_block, key=(2, 1), **kw).auc
        print(f"MC seed {seed}{' (the training MC)' if seed == 1 else ''}: AUC {aucs[seed]:.3f}", flush=True)
    others = np.array([a for s, a in aucs.items() if s != 1])
    if others.size:
        print(f"independent MC runs (seeds {', '.join(str(s) for s in args.seeds)}): AUC mean {others.mean():.3f}, min {others.min():.3f}, max {others.max():.3f}; "
              f"the training MC {aucs[1]:.3f}; the target 0.60")


if __name__ == "__main__":
    main()
