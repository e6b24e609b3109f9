"""Speed and memory of ``crab impact`` (issue 23's target: 30 d x 8 detectors at nside 64 in <= 10 min on 2 cores, < 4 GB).

Usage::

    python benchmarks/impact_speed.py --model crab_run/model                 # the target case: 30 days
    python benchmarks/impact_speed.py --model crab_run/model --days 3        # shorter: per-day cost, extrapolated
    python benchmarks/impact_speed.py --model crab_run/template.json --days 1 --no-deglitch

Runs :func:`crab.integrations.impact.run_impact` in this process (outputs in a
temporary folder, removed after), restricted to ``--cores`` CPUs, and prints
the wall time, the peak RSS (``VmHWM``) and their ratios to the target, the
time of each stage, and the headline line.  ``--days`` below 30 also prints
the 30-day time extrapolated linearly from the chunk loop (an estimate, said
so); only a 30-day run measures the target.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 600.0
TARGET_RSS_MIB = 4096.0
LOOP_STAGES = ("generation", "noise", "deglitch", "pointing", "binning")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model folder (crab train) or template .json")
    ap.add_argument("--days", type=float, default=30.0, help="simulated days (default 30: the target)")
    ap.add_argument("--detectors", type=int, default=8)
    ap.add_argument("--nside", type=int, default=64)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--cores", type=int, default=2, help="CPUs the run may use (sched_setaffinity)")
    ap.add_argument("--no-deglitch", action="store_true", help="skip the deglitched maps")
    args = ap.parse_args()

    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))[: args.cores]
        os.sched_setaffinity(0, cpus)
    from crab.generation import peak_rss_mb
    from crab.integrations.impact import ImpactConfig, run_impact

    cfg = ImpactConfig(duration_s=args.days * 86400.0, n_detectors=args.detectors, nside=args.nside, seed=args.seed, deglitch=not args.no_deglitch)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; {len(os.sched_getaffinity(0))} cores", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="crab-impact-bench-") as tmp:
        t0 = time.perf_counter()
        res = run_impact(args.model, cfg, Path(tmp) / "out", progress=False)
        wall = time.perf_counter() - t0
    rss = peak_rss_mb()
    tm = res.info["timings_s"]
    loop = sum(tm.get(k, 0.0) for k in LOOP_STAGES)
    print(res.headline())
    print("stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in tm.items()))
    print(f"case: {args.days:g} d x {args.detectors} detectors, nside {args.nside}, model {args.model}, deglitch {cfg.deglitch}")
    print(f"wall time {wall:.1f} s ({wall / TARGET_S:.2f} x the 600 s target), peak RSS {rss:.0f} MiB ({rss / TARGET_RSS_MIB:.2f} x the 4 GiB target)")
    if args.days < 30:
        est = wall - loop + loop * 30.0 / args.days
        print(f"extrapolated to 30 d (chunk loop scaled linearly, an estimate): {est:.0f} s ({est / TARGET_S:.2f} x the target)")


if __name__ == "__main__":
    main()
