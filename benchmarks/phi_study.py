"""The phi study of issue 6: one wafer model conditioned on phi, against Monte Carlo at trained and held-out phi.

Usage::

    python benchmarks/phi_study.py --out phi_study                 # ~15 min on 2 cores
    python benchmarks/phi_study.py --out phi_study --epochs 30     # quicker, cruder

Steps (each skipped when its output exists, so an interrupted study resumes):

1. ``crab simulate`` training files at ``--train-phi`` (default 0.4, 0.8, 1.2 GV;
   seed 11) and held-out files at ``--heldout-phi`` (default 0.4 ... 1.2 GV
   in steps of 0.2; seed 21, so even a trained phi is compared with MC the
   model never saw);
2. ``crab train --condition phi --joint-detectors --config no_events`` on the
   training files (the generator without event inputs, with which issue 6's
   figures were measured: with event inputs the glitch rate follows phi only
   once the network has learned to drop events at high phi, not measured);
3. ``crab validate-phi`` on the held-out files (``--duration-factor`` times
   their length generated per phi): glitch rate, amplitudes, coincidences and
   pair correlation against phi, MC vs model; prints the table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

CRAB = [sys.executable, "-c", "from crab.cli import main; main()"]


def _run(*args: object) -> None:
    cmd = [*CRAB, *map(str, args)]
    print("$ crab " + " ".join(map(str, args)), flush=True)
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="study folder")
    ap.add_argument("--train-phi", type=float, nargs="+", default=[0.4, 0.8, 1.2])
    ap.add_argument("--heldout-phi", type=float, nargs="+", default=[0.4, 0.6, 0.8, 1.0, 1.2])
    ap.add_argument("--duration", default="1800", help="length of every MC file [1800 s]")
    ap.add_argument("--detectors", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=None, help="adversarial epochs (default: crab train's)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--duration-factor", type=float, default=2.0)
    args = ap.parse_args(argv)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    train_files, held_files = [], []
    for phis, seed, files, tag in ((args.train_phi, 11, train_files, "train"), (args.heldout_phi, 21, held_files, "heldout")):
        for phi in phis:
            f = out / f"mc_{tag}_phi{phi:g}.h5"
            if not f.exists():
                _run("simulate", "--duration", args.duration, "--detectors", args.detectors, "--phi", phi, "--seed", seed, "--out", f, "--no-progress")
            files.append(f)
    model = out / "model"
    if not (model / "model.pt").exists() or (model / "checkpoint.pt").exists() and not (out / "trained").exists():
        extra = [] if args.epochs is None else ["--epochs", args.epochs]
        extra += [] if args.threads is None else ["--threads", args.threads]
        resume = ["--resume"] if (model / "checkpoint.pt").exists() else ["--config", "no_events"]
        _run("train", *[x for f in train_files for x in ("--data", f)], "--condition", "phi", "--joint-detectors", "--out", model, "--quiet", *extra, *resume)
        (out / "trained").write_text("done\n")
    _run("validate-phi", "--model", model, *[x for f in held_files for x in ("-r", f)], "--duration-factor", args.duration_factor, "-o", out / "report")
    print((out / "report" / "phi.md").read_text())


if __name__ == "__main__":
    main()
