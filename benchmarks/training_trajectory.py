"""Classifier AUC along training: a snapshot of the generation model every few epochs, each validated on held-out MC.

Usage::

    python benchmarks/training_trajectory.py --out traj --seeds 1 4                 # 90 epochs, a snapshot every 2
    python benchmarks/training_trajectory.py --out traj --seeds 1 --epochs 130 --every 5 --splits 8

Steps (each skipped when its output exists, so an interrupted run resumes):

1. the training and held-out MC of ``crab run`` (``fidelity_study.ensure_mc``);
2. per seed, ``crab train --snapshot-every N`` (extra ``crab train`` options
   after ``--``, e.g. ``-- --config two_event_channels``), which writes the generation model of every N-th epoch to
   ``model/snapshots/epoch_NNNN``;
3. per snapshot, ``crab generate`` 1 h of 4 detectors (seed 2001, as
   ``crab run``) and the classifier two-sample test of ``crab validate``
   against the held-out MC (its window features and MLP, mean of
   ``--splits`` random splits; with 8 splits the figure of the last epoch is
   ``crab validate``'s).

Printed: per seed and snapshot, the epoch, the sample-quality statistic by
which ``crab train`` keeps its best epoch (``history.csv``), and the AUC; the
epoch ``crab train`` kept is marked.  It shows how the AUC falls with
training, how much it moves from one epoch to the next on its plateau, and
whether the kept epoch is a good one (docs/experiments.md, "Training
trajectories").
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity_study import HeldoutClassifier, _run, ensure_mc  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="study folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--epochs", type=int, default=None, help="adversarial epochs (default: crab train's)")
    ap.add_argument("--every", type=int, default=2, help="a snapshot every this many epochs")
    ap.add_argument("--splits", type=int, default=4, help="classifier splits per snapshot (crab validate: 8)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("train_options", nargs="*", help="more crab train options (after --)")
    args = ap.parse_args(argv)

    from crab.models.gan.store import load_model

    mc = ensure_mc(args.out)
    clf = HeldoutClassifier(mc["heldout"])
    for seed in args.seeds:
        d = args.out / f"s{seed}"
        model = d / "model"
        if not (model / "model.pt").exists():
            extra = [] if args.epochs is None else ["--epochs", args.epochs]
            extra += [] if args.threads is None else ["--threads", args.threads]
            _run("train", "--data", mc["train"], "--out", model, "--seed", seed, "--quiet", "--overwrite", "--snapshot-every", args.every, *extra, *args.train_options)
        history = {int(r["epoch"]): float(r["quality"]) for r in csv.DictReader((model / "history.csv").open())}
        kept = load_model(model).extra["epoch"]
        print(f"\nseed {seed}: epoch, sample-quality statistic, classifier AUC vs held-out MC (mean of {args.splits} splits); * = the epoch crab train kept")
        for snap in sorted((model / "snapshots").glob("epoch_*")):
            epoch = int(snap.name.split("_")[1])
            gan = d / f"gan_{snap.name}.h5"
            if not gan.exists():
                _run("generate", "--model", snap, "--duration", "1h", "--detectors", 4, "--seed", 2001, "--out", gan, "--no-progress", quiet=True)
            print(f"  {epoch:4d}{'*' if epoch == kept else ' '}  {history.get(epoch, float('nan')):.4f}  {clf.auc(gan, args.splits):.3f}", flush=True)


if __name__ == "__main__":
    main()
