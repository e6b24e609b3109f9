"""MPI scaling of ``crab generate``: the same work on 1 and on 2 ranks, and the speed-up.

Usage (needs the ``crab-tod[mpi]`` extra: mpi4py + the mpich wheel)::

    python benchmarks/mpi_scaling.py                       # GAN, 8 detectors x 6 h at 19 Hz
    python benchmarks/mpi_scaling.py --model runs/model    # a trained model (or a template .json)
    python benchmarks/mpi_scaling.py --detectors 16 --duration 1d --ranks 1 2 4 --json out.json

Each run is ``mpiexec -n N python benchmarks/mpi_scaling.py --worker ...``,
which calls :func:`crab.generation.mpi.generate_distributed` (the MPI branch of
``crab generate``) with one generator thread per rank, so N ranks use N
cores.  Without ``--model`` the generator is the default streaming GAN
architecture with random weights: the same code and cost per sample as a
trained model of that architecture.  The outputs of all runs are checked to
be identical (checksum) before the timings are printed.

Printed per run: wall time of the generation (first rank's start to last
rank's end, file assembly included), throughput (samples/s) and throughput
per rank, the speed-up over 1 rank; and, because wall times mean little on a
machine shared with other jobs, the CPU seconds of all ranks and the *CPU
speed-up* (CPU seconds of 1 rank over those of the busiest of N ranks: the
speed-up N free cores would give).  The wall time of the whole ``mpiexec``
(Python, torch and model start-up) is shown apart.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _model_dir(tmp: Path) -> Path:
    """The default streaming GAN with random weights, saved as a model directory."""
    import torch

    from crab.models.gan.config import ModelConfig

    from crab.models.gan.network import Generator
    from crab.models.gan.store import save_model
    from crab.physics.noise import NoiseParams
    from crab.models.gan.transform import AmplitudeTransform

    torch.manual_seed(0)
    g = Generator(ModelConfig())
    g.eval()
    d = tmp / "gan_random"
    d.mkdir()
    save_model(d, g, AmplitudeTransform(scale=0.05), 19.0, noise_params=NoiseParams(white_asd=0.01), highpass_hz=0.15)
    return d


def worker(args: argparse.Namespace) -> None:
    from crab.generation import mpi
    from crab.core import rng
    from crab.io import tod as tod_io
    from crab.generation import TodGenerator, load_generation_model, samples_for

    comm = mpi.world()
    gen = TodGenerator(load_generation_model(args.model), seed=args.seed, n_workers=args.threads)
    names = [f"L4-140_{i:03d}" for i in range(args.detectors)]
    n = samples_for(args.duration_s, gen.sampling_rate_hz)
    meta = tod_io.TodMetadata(sampling_rate_hz=gen.sampling_rate_hz, detectors=names, kind=gen.kind, seed=args.seed)
    cpu0 = time.process_time()
    stats = mpi.generate_distributed(gen, args.out, meta, [rng.detector_key(x) for x in names], 0, n, comm=comm, overwrite=True, progress=False)
    cpu = time.process_time() - cpu0
    cpus = [cpu] if comm is None else comm.gather(cpu, root=0)
    if comm is None or comm.Get_rank() == 0:
        print(json.dumps({"wall_s": stats.wall_s, "cpu_s": cpus, "samples": stats.n_detectors * stats.n_samples, "checksum": stats.checksum, "peak_rss_mb": stats.peak_rss_mb}))


def main() -> None:
    from crab.core.units import parse_duration_s

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="model directory or template .json (default: random-weight streaming GAN)")
    p.add_argument("--detectors", type=int, default=8)
    p.add_argument("--duration", default="6h", help="duration per detector (e.g. 6h, 1d)")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="generator threads per rank")
    p.add_argument("--repeat", type=int, default=1, help="runs per rank count (the fastest is kept)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--duration-s", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    mpiexec = Path(sys.executable).parent / "mpiexec"
    if not mpiexec.exists():
        sys.exit("mpiexec not found beside this Python: pip install 'crab-tod[mpi]' (mpi4py + mpich)")
    duration_s = parse_duration_s(args.duration)
    env = {**os.environ, "CRAB_PROGRESS": "0"}
    with tempfile.TemporaryDirectory(prefix="crab-mpi-bench-") as tmp:
        tmp = Path(tmp)
        model = args.model or _model_dir(tmp)
        results = []
        for n in args.ranks:
            best = None
            for rep in range(args.repeat):
                out = tmp / f"out_{n}.h5"
                cmd = [str(mpiexec), "-n", str(n), sys.executable, __file__, "--worker", "--model", str(model), "--out", str(out),
                       "--detectors", str(args.detectors), "--duration-s", str(duration_s), "--threads", str(args.threads), "--seed", str(args.seed)]
                t0 = time.perf_counter()
                r = subprocess.run(cmd, capture_output=True, text=True, env=env)
                total = time.perf_counter() - t0
                if r.returncode != 0:
                    sys.exit(f"{n} ranks failed:\n{r.stderr[-3000:]}")
                res = json.loads(r.stdout.strip().splitlines()[-1])
                res.update(ranks=n, process_wall_s=total)
                if best is None or res["wall_s"] < best["wall_s"]:
                    best = res
            results.append(best)
        sums = {r["checksum"] for r in results}
        if len(sums) != 1:
            sys.exit(f"outputs differ between rank counts: {sums}")
    base = results[0]["wall_s"]
    samples = results[0]["samples"]
    print(f"work: {args.detectors} detectors x {args.duration} = {samples:,} samples ({4 * samples / 2**20:.1f} MiB float32), "
          f"model: {args.model or 'streaming GAN (random weights)'}, {args.threads} thread(s) per rank, {os.cpu_count()} CPUs")
    base_cpu = sum(results[0]["cpu_s"])
    print(f"{'ranks':>5}  {'wall_s':>8}  {'Msamples/s':>10}  {'per rank':>9}  {'speed-up':>8}  {'cpu_s':>7}  {'cpu speed-up':>12}  {'mpiexec_s':>9}  {'rss_MiB':>7}")
    for r in results:
        thr = r["samples"] / r["wall_s"]
        cpu_speedup = base_cpu / max(r["cpu_s"])
        r.update(samples_per_s=thr, samples_per_s_per_rank=thr / r["ranks"], speedup=base / r["wall_s"], cpu_speedup=cpu_speedup,
                 samples_per_cpu_s=r["samples"] / sum(r["cpu_s"]))
        print(f"{r['ranks']:>5}  {r['wall_s']:>8.2f}  {thr / 1e6:>10.2f}  {thr / r['ranks'] / 1e6:>9.2f}  {r['speedup']:>8.2f}  "
              f"{sum(r['cpu_s']):>7.2f}  {cpu_speedup:>12.2f}  {r['process_wall_s']:>9.2f}  {r['peak_rss_mb']:>7.0f}")
    print("speed-up: wall time of 1 rank / wall time of N ranks (depends on free cores); cpu speed-up: CPU seconds of 1 rank /")
    print("CPU seconds of the busiest of N ranks (the speed-up N free cores would give; insensitive to other load on the machine).")
    print(f"outputs identical across rank counts (checksum {results[0]['checksum'][:16]}...)")
    if args.json:
        args.json.write_text(json.dumps({"detectors": args.detectors, "duration": args.duration, "threads_per_rank": args.threads, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
