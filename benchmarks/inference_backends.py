"""Inference backends of the streaming generator on one engine tile: the compiled form against torch.

Usage::

    python benchmarks/inference_backends.py                    # default architecture, random weights
    python benchmarks/inference_backends.py --model runs/model # a trained model directory
    python benchmarks/inference_backends.py --repeats 40 --json out.json

In one process, on the latents of one tile of the generation engine
(``DEFAULT_TILE_LATENTS`` latent steps plus ``margin_latents`` on each side,
drawn as :class:`crab.models.gan.source.GanSource` draws them) and with one
torch thread (as the engine's workers), it times:

``compiled``
    :func:`crab.models.gan.inference.compile_generator`, the form the engine uses;
``inference_mode``
    the torch module under ``torch.inference_mode``;
``jit.trace``
    ``torch.jit.trace`` of the module;
``jit.trace+freeze``
    the same after ``torch.jit.freeze`` (constants folded);
``torch.compile``
    ``torch.compile`` of the module, if it works on this machine (it needs a
    C compiler); a failure is reported, not raised.

The backends run in turns (one call of each per round), so that a change of
the machine's load hits all of them alike; the figure of each is the median
of its rounds.  It prints samples/s per backend, the ratio to
``inference_mode``, and the largest absolute difference of the tile's samples
(transformed units) to the module's output.  Without ``--model`` the
generator is ``ModelConfig()`` (the default architecture) with random weights
and batch-norm statistics: inference costs the same per sample as a trained
model of that architecture.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np


def random_default_generator(seed: int = 0):
    """A generator of the default architecture (``ModelConfig()``) with random weights and batch-norm
    statistics, in eval mode (``transform_out_scale`` and ``output_bounds`` as a trainer sets them)."""
    import torch

    from crab.models.gan.config import ModelConfig

    from crab.models.gan.network import Generator

    torch.manual_seed(seed)
    g = Generator(ModelConfig(transform_out_scale=1.5, output_bounds=(-2.0, 6.0)))
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.1)
            elif isinstance(m, torch.nn.Conv1d):
                m.weight.normal_(0.0, 1.5 / np.sqrt(m.weight[0].numel()))
    return g.eval()


def tile_latents(generator, tile_latents: int, seed: int = 7):
    """The latents of tile 0 of detector 0 as the engine draws them: torch (steps, z_dim) float32."""
    import torch

    from crab.models.gan.latent import latent_sequence, stream_key

    m = generator.margin_latents
    z_dim = int(generator.latent_shape(1, 1)[1])
    return torch.from_numpy(latent_sequence(stream_key(seed, "gan_latent", 0), -m, tile_latents + 2 * m, z_dim))


def backends(generator, z, cond):
    """``{name: callable() -> (channels, samples) numpy output aligned with the module's}`` and
    ``{name: error}`` of the backends that could not be built; plus the module's output."""
    import torch

    from crab.models.gan.inference import compile_generator

    x = z.T.contiguous()[None]
    c_np = None if cond is None else cond.astype(np.float64)
    c_t = None if cond is None else torch.from_numpy(cond.astype(np.float32))[None]
    args = (x,) if c_t is None else (x, c_t)
    compiled = compile_generator(generator)
    runs = {}
    failed = {}

    def compiled_run():
        y = compiled.generate(z, c_np)
        out = np.full((y.shape[0], x.shape[-1] * generator.cfg.upsample_factor), np.nan, np.float32)
        out[:, compiled.offset : compiled.offset + y.shape[1]] = y
        return out

    runs["compiled"] = compiled_run
    runs["inference_mode"] = lambda: generator(*args)[0].numpy()
    try:
        with torch.no_grad():
            traced = torch.jit.trace(generator, args, check_trace=False)
        runs["jit.trace"] = lambda: traced(*args)[0].numpy()
        with torch.no_grad():
            frozen = torch.jit.freeze(torch.jit.trace(generator, args, check_trace=False).eval())
        runs["jit.trace+freeze"] = lambda: frozen(*args)[0].numpy()
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        failed["jit.trace"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    try:
        t0 = time.perf_counter()
        fn = torch.compile(generator, dynamic=False)
        with torch.inference_mode():
            fn(*args)  # compiles
        print(f"torch.compile: compiled in {time.perf_counter() - t0:.1f} s", flush=True)
        runs["torch.compile"] = lambda: fn(*args)[0].numpy()
    except Exception as exc:  # noqa: BLE001 - reported, not raised (e.g. no C compiler)
        failed["torch.compile"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return runs, failed


def main(argv=None) -> int:
    from crab.models.gan.source import DEFAULT_TILE_LATENTS

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="trained model directory (default: the default architecture with random weights)")
    p.add_argument("--tile-latents", type=int, default=DEFAULT_TILE_LATENTS, help="latent steps per tile (default: the engine's)")
    p.add_argument("--repeats", type=int, default=20, help="timed rounds (each backend once per round)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the engine's workers use 1)")
    p.add_argument("--json", help="write the figures to this file")
    a = p.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    if a.model:
        from crab.models.gan.store import load_model

        model = load_model(a.model)
        generator = model.generator.eval()
        cond = None if not model.model_config.cond_dim else np.zeros(model.model_config.cond_dim)  # middle of the trained range
    else:
        generator = random_default_generator()
        cond = None
    cfg = generator.cfg
    f, m = cfg.upsample_factor, generator.margin_latents
    tile_samples = a.tile_latents * f
    z = tile_latents(generator, a.tile_latents)
    print(f"generator: {'model ' + a.model if a.model else 'ModelConfig() with random weights'}; out_channels {cfg.out_channels}")
    print(f"tile: {a.tile_latents} latent steps + 2 x {m} margin = {z.shape[0]} steps, {tile_samples} output samples; torch {torch.__version__}, {a.threads} thread(s)")
    print("load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)

    runs, failed = backends(generator, z, cond)
    lo = f * m
    times = {name: [] for name in runs}
    outputs = {}
    with torch.inference_mode():
        for name, fn in runs.items():  # warm-up, and the outputs compared
            outputs[name] = fn()[:, lo : lo + tile_samples]
        for _ in range(a.repeats):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    ref = outputs["inference_mode"]
    scale = float(np.max(np.abs(ref)))
    base = statistics.median(times["inference_mode"])
    rows = []
    print(f"\n{'backend':<18} {'ms/tile':>9} {'samples/s':>12} {'vs inference_mode':>18} {'max |diff|':>11} {'relative':>9}")
    for name in runs:
        t = statistics.median(times[name])
        diff = float(np.max(np.abs(outputs[name] - ref)))
        rate = tile_samples * cfg.out_channels / t
        rows.append({"backend": name, "seconds_per_tile": t, "samples_per_s": rate, "ratio_to_inference_mode": base / t, "max_abs_diff": diff, "max_rel_diff": diff / scale})
        print(f"{name:<18} {1e3 * t:9.2f} {rate:12.4g} {base / t:17.2f}x {diff:11.2e} {diff / scale:9.1e}")
    for name, err in failed.items():
        print(f"{name:<18} failed: {err}")
    print("load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"tile_samples": tile_samples, "threads": a.threads, "repeats": a.repeats, "output_scale": scale, "backends": rows, "failed": failed}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
