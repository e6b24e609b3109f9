"""Cost of the events as inputs of the GAN's network (``ModelConfig.event_inputs``) per generated tile.

Usage::

    python benchmarks/event_inputs_cost.py                 # 6 rounds of 20 tiles each
    python benchmarks/event_inputs_cost.py --rounds 10 --tiles 40

Two generators of the default streaming architecture, random weights (the
cost per sample does not depend on the weights), no wafer layer, one torch
thread, generate the same tiles of one detector in the same process,
interleaved over ``--rounds`` rounds (the best round of each kept):

- ``default``: the events only place the additive glitches;
- ``event inputs``: the events and their learned pulses are inputs of the
  network's last stage too (``--config event_inputs``).

Printed: milliseconds per 16384-sample tile of each and their ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds [6]")
    ap.add_argument("--tiles", type=int, default=20, help="tiles per round [20]")
    args = ap.parse_args(argv)

    import torch

    from crab.generation import load_generation_model
    from crab.models.gan.config import ModelConfig
    from crab.models.gan.network import Generator
    from crab.models.gan.store import save_model
    from crab.models.gan.transform import AmplitudeTransform
    from crab.physics.noise import NoiseParams

    torch.set_num_threads(1)
    sources = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, inputs in (("default", False), ("event inputs", True)):
            torch.manual_seed(0)
            d = Path(tmp) / name.replace(" ", "_")
            d.mkdir()
            save_model(d, Generator(ModelConfig(event_inputs=inputs)).eval(), AmplitudeTransform(scale=0.05), 19.0,
                       noise_params=NoiseParams(white_asd=0.01), highpass_hz=0.15)
            src = load_generation_model(d).tile_source(7)
            src.prepare(1)
            src.tile(0, 0)  # warm-up
            sources[name] = src
    best = {name: float("inf") for name in sources}
    for r in range(args.rounds):
        for name, src in sources.items():
            t0 = time.perf_counter()
            for i in range(args.tiles):
                src.tile(0, 1 + r * args.tiles + i)
            best[name] = min(best[name], (time.perf_counter() - t0) / args.tiles)
    for name, t in best.items():
        print(f"{name:13s} {1e3 * t:6.2f} ms per {sources[name].tile_samples}-sample tile")
    print(f"event inputs / default: {best['event inputs'] / best['default']:.2f}x the time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
