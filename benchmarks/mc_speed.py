"""Speed of the physics Monte Carlo: simulated seconds per wall-clock second.

Usage::

    python benchmarks/mc_speed.py                       # 1800 s, 1 and 4 detectors
    python benchmarks/mc_speed.py --duration 600 --detectors 1 4 16 --repeat 3

For each wafer size it runs :func:`crab.physics.montecarlo.simulate` (in memory, the
default configuration: 19 Hz, internal rate ~20 kHz, noise on) and prints the
best of ``--repeat`` runs, with the process CPU time next to the wall time
(on a shared machine the wall time is noisy; CPU time shows the work done).
It also prints the hit rates and typical glitch amplitudes of the run.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from crab.core.stats import robust_sigma
from crab.physics.montecarlo import simulate
from crab.physics.montecarlo_config import MonteCarloConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=1800.0, help="simulated seconds per run (default 1800)")
    ap.add_argument("--detectors", type=int, nargs="+", default=[1, 4], help="wafer sizes to time (default 1 4)")
    ap.add_argument("--sampling-rate", type=float, default=19.0)
    ap.add_argument("--repeat", type=int, default=1, help="runs per size; the best is reported")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'detectors':>9} {'sim s':>7} {'wall s':>8} {'cpu s':>7} {'sim s / wall s':>15} {'sim s / cpu s':>14}")
    for n in args.detectors:
        cfg = MonteCarloConfig(n_detectors=n, sampling_rate_hz=args.sampling_rate)
        best = None
        for _ in range(args.repeat):
            w0, c0 = time.perf_counter(), time.process_time()
            tod, ev, _ = simulate(cfg, args.duration, args.seed)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            if best is None or wall < best[0]:
                best = (wall, cpu, tod, ev)
        wall, cpu, tod, ev = best
        print(f"{n:>9d} {args.duration:>7.0f} {wall:>8.2f} {cpu:>7.2f} {args.duration / wall:>15.0f} {args.duration / cpu:>14.0f}")
        direct = ev.select(ev.kind == 0)
        sig = np.median([robust_sigma(r) for r in tod])
        peaks = []
        base = np.median(tod, axis=1)
        for t, d in zip(direct.time_s, direct.detector):
            k = int(np.ceil(t * cfg.sampling_rate_hz))
            if k + 4 < tod.shape[1]:
                peaks.append(tod[d, k : k + 4].max() - base[d])
        print(
            f"{'':>9} direct {len(direct) / args.duration / n:.3f} Hz/detector, wafer {np.sum(ev.kind == 1) / args.duration:.1f} Hz; "
            f"noise {sig:.2e} pW rms; direct-hit peak median {np.median(peaks) / sig:.0f} sigma (5-95 %: "
            f"{np.percentile(peaks, 5) / sig:.0f}-{np.percentile(peaks, 95) / sig:.0f})"
        )


if __name__ == "__main__":
    main()
