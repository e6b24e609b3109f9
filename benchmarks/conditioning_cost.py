"""Cost of conditioning on phi and of joint wafer channels on GAN generation throughput (issue 6).

Usage::

    python benchmarks/conditioning_cost.py                 # 4 detectors x 1 day per run, 3 rounds
    python benchmarks/conditioning_cost.py --days 4 --rounds 5 --json out.json

Four generators of the default streaming architecture (random weights: the
cost per sample does not depend on the weights) generate the same number of
detector-samples to the checksum sink, in the same process, interleaved over
``--rounds`` rounds (best round kept):

- ``baseline``: unconditioned, one channel (every detector its own latent stream);
- ``phi``: conditioned on phi (constant ``--phi``);
- ``phi schedule``: conditioned, phi interpolated from a schedule (changes every tile);
- ``joint``: a wafer of ``--wafer-size`` detectors generated jointly, as
  ``crab train --joint-detectors`` makes it (exchangeable: the one-detector
  network run per detector on shared wafer latents plus its own);
- ``joint + phi schedule``: both;
- ``multichannel``: one network emitting all channels of the wafer at once
  (``shared_latent_dim = 0``; cheaper, but see docs/design.md).

Printed: detector-samples per second of each and its ratio to the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np


def _model(path: Path, rate: float, **cfg):
    import torch

    from crab.models.gan.config import ModelConfig

    from crab.models.gan.network import Generator
    from crab.models.gan.store import load_model, save_model
    from crab.physics.noise import NoiseParams
    from crab.models.gan.transform import AmplitudeTransform

    torch.manual_seed(0)
    g = Generator(ModelConfig(**cfg)).eval()
    path.mkdir(parents=True, exist_ok=True)
    cond = {"cond_names": ["phi_gv"], "cond_range": [(0.4, 1.2)]} if cfg.get("cond_dim") else {}
    save_model(path, g, AmplitudeTransform(0.0, 0.05, 1.0), rate, noise_params=NoiseParams(white_asd=0.01, f_knee_hz=0.02), highpass_hz=rate / 256, **cond)
    return load_model(path)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=float, default=1.0, help="duration per run (days) [1]")
    ap.add_argument("--detectors", type=int, default=4, help="detectors per run [4]")
    ap.add_argument("--wafer-size", type=int, default=4, help="channels of the joint model [4]")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best of each variant is kept [3]")
    ap.add_argument("--rate", type=float, default=19.0, help="sampling rate (Hz) [19]")
    ap.add_argument("--phi", type=float, default=0.7, help="constant phi of the conditioned runs (GV) [0.7]")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = ap.parse_args(argv)

    from crab.physics.conditions import ConditionSchedule
    from crab.generation import TodGenerator, stream_checksum
    from crab.models.gan.training import JOINT_SHARED_LATENT_DIM

    dur = args.days * 86400.0
    sched = ConditionSchedule(("phi_gv",), np.array([0.0, dur]), np.array([[0.4], [1.2]]))
    tmp = Path(tempfile.mkdtemp(prefix="crab-cond-bench-"))
    variants = {
        "baseline": (dict(), None),
        "phi": (dict(cond_dim=1), [args.phi]),
        "phi schedule": (dict(cond_dim=1), sched),
        "joint": (dict(out_channels=args.wafer_size, shared_latent_dim=JOINT_SHARED_LATENT_DIM), None),
        "joint + phi schedule": (dict(out_channels=args.wafer_size, shared_latent_dim=JOINT_SHARED_LATENT_DIM, cond_dim=1), sched),
        "multichannel": (dict(out_channels=args.wafer_size), None),
    }
    gens = {name: TodGenerator(_model(tmp / name.replace(" ", "_"), args.rate, **cfg), 7, cond=cond) for name, (cfg, cond) in variants.items()}
    print(f"CRAB conditioning cost on {len(os.sched_getaffinity(0))} CPUs (load average {os.getloadavg()[0]:.2f}): "
          f"{args.detectors} detectors x {args.days:g} d per run, {args.rounds} interleaved rounds", flush=True)
    for g in gens.values():  # warm-up
        stream_checksum(g, 3600.0, args.detectors, progress=False)
    best: dict[str, float] = {n: 0.0 for n in gens}
    for _ in range(args.rounds):
        for name, g in gens.items():
            st = stream_checksum(g, dur, args.detectors, progress=False)
            best[name] = max(best[name], st.samples_per_s)
    base = best["baseline"]
    res = {"days": args.days, "detectors": args.detectors, "rounds": args.rounds, "samples_per_s": best, "ratio_to_baseline": {n: v / base for n, v in best.items()},
           "load_after": os.getloadavg()}
    for name, v in best.items():
        print(f"{name:<22} {v / 1e6:8.2f} Msamples/s   ratio to baseline {v / base:5.2f}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
