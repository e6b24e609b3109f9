"""Training the GAN (paper, sections 3.2-3.3): :func:`train`.

:func:`train` reads the data, derives the architecture from them once
(:func:`model_config_for_data`), builds the networks and runs

1. **discriminator pretraining** (``d_pretrain_epochs``): the generator is
   fixed, the discriminator learns real windows against the untrained
   generator's output;
2. **adversarial training** (``epochs``): per generator step,
   ``d_steps_per_g_step`` discriminator steps (losses: :mod:`crab.models.gan.losses`);

and after every epoch evaluates on training and validation data (history),
computes the sample-quality statistic (:mod:`crab.models.gan.quality`) of windows made
exactly as generation will make them (:mod:`crab.models.gan.evaluation`), and writes a
checkpoint atomically (:mod:`crab.models.gan.checkpoint`).  When the statistic improves,
``best.pt`` and ``model.pt`` (the file generation loads, :func:`crab.models.gan.store.save_model`)
are written too.  The hyper-parameters are :class:`crab.models.gan.config.TrainConfig`.

Randomness
----------
Weights are initialised from ``torch.manual_seed`` derived from
``crab.core.rng.generator(seed, "training", 1)``.  Every epoch draws its crops,
latents and gradient-penalty mixes from a ``torch.Generator`` seeded from
``crab.core.rng.generator(seed, "training", 0, epoch)``: the stream is keyed on
the epoch, so a run resumed at an epoch boundary draws exactly what the
uninterrupted run would.  The evaluation latents are fixed streams
(``"training", 2`` and ``3``) that do not touch the training streams.  The
global torch RNG state is saved in the checkpoint as well.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from crab import __version__
from crab.core import interrupt
from crab.core.errors import InputError
from crab.core.paths import check_creatable_folder, is_stale_temporary, remove_contents, replaceable_contents
from crab.core.progress import bar
from crab.core.provenance import atomic_write_bytes, run_record, write_json
from crab.models.glitch_layer.direct_population import fit_direct_hits
from crab.models.glitch_layer.wafer_fit import subtract_wafer_layer
from crab.models.gan.pulses import init_additive_glitches
from crab.models.dataset import TodSource, TrainingData, WindowSampler, load_tod_sources, prepare_training_data
from crab.models.gan.checkpoint import (
    BEST_FILE,
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    check_resume,
    checkpoint_config,
    checkpoint_train_config,
    load_checkpoint,
    norm_value,
    to_bytes,
)
from crab.models.gan.config import ModelConfig, TrainConfig
from crab.models.gan.evaluation import calibrate_batchnorm, calibrated_noise_params, generate_windows, seed_from, window_latents
from crab.models.gan.history import History
from crab.models.gan.losses import d_losses, d_stats, feature_matching_loss, g_loss_fn, gradient_penalty
from crab.models.gan.network import Discriminator, Generator, normalize_cond
from crab.models.gan.quality import quality_floor, sample_quality
from crab.models.gan.store import MODEL_FILE, SNAPSHOT_DIR, TRAINING_RECORD_KEY, TRAINING_STATE_FILE, save_model, write_training_state
from crab.models.gan.transform import AmplitudeTransform
from crab.physics.noise import NoiseParams

__all__ = ["TrainConfig", "TrainResult", "checkpoint_train_config", "load_checkpoint", "model_config_for_data", "train"]

#: history.png is redrawn at most this often (s), and after the last epoch.
PLOT_INTERVAL_S = 20.0

#: What a model directory holds, all written by training (and ``crab train --select-with``: ``selection.json``):
#: patterns for :func:`crab.core.paths.replaceable_contents`, what
#: ``--overwrite`` may remove.  Its run record is ``config.json``.
MODEL_DIR_FILES = (
    "config.json", CHECKPOINT_FILE, BEST_FILE, MODEL_FILE, TRAINING_STATE_FILE, "history.csv", "history.json", "history.png",
    "selection.json", f"{SNAPSHOT_DIR}/epoch_*/{MODEL_FILE}",
)
MODEL_DIR_RECORD = "config.json"

#: Shared (wafer) latent channels of a joint-detector generator (``TrainConfig.joint_detectors``).
JOINT_SHARED_LATENT_DIM = 8


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    out_dir: Path
    epochs_done: int
    best_epoch: int | None
    best_quality: float | None
    quality_floor: float | None
    history: History
    seconds: float
    data: TrainingData | None = field(default=None, repr=False)


def output_bounds(data: TrainingData, margin: float) -> tuple[float, float]:
    """``(min - margin, max + margin)`` of the transformed training series (the generator's output bound)."""
    lo = min(float(np.min(s)) for s in data.train)
    hi = max(float(np.max(s)) for s in data.train)
    return (lo - float(margin), hi + float(margin))


def _optimizer(kind: str, params, lr: float, momentum: float, betas) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas))


class _Mean:
    """Running means of named scalars."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, **kv: float) -> None:
        for k, v in kv.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


def _check_model_config(model_config: ModelConfig, cfg: TrainConfig, n_ch: int) -> None:
    """InputError if ``model_config`` contradicts the training's conditions or detectors."""
    if model_config.cond_dim not in (0, len(cfg.condition_on)):
        raise InputError(f"model_config.cond_dim is {model_config.cond_dim} but training is conditioned on {list(cfg.condition_on)}; set condition_on instead")
    if model_config.out_channels not in (1, n_ch):
        raise InputError(f"model_config.out_channels is {model_config.out_channels}; use joint_detectors to generate the detectors of a file jointly")


def model_config_for_data(model_config: ModelConfig, cfg: TrainConfig, data: TrainingData, n_ch: int) -> ModelConfig:
    """The architecture trained: ``model_config`` with what the training data and ``cfg`` fix.

    Window length (``cfg.window_samples``), conditions (``cfg.condition_on``), output
    channels ``n_ch`` (detectors generated jointly) with a shared wafer latent
    (:data:`JOINT_SHARED_LATENT_DIM` unless set), the output bounds (range of the
    transformed training data +- ``cfg.output_bound_margin``) and ``k`` of the
    amplitude transform where the networks need it.
    """
    shared = (model_config.shared_latent_dim or JOINT_SHARED_LATENT_DIM) if n_ch > 1 else 0
    derived: dict[str, Any] = dict(window_samples=cfg.window_samples, cond_dim=len(cfg.condition_on), out_channels=n_ch, shared_latent_dim=shared)
    if cfg.output_bound_margin is not None:
        derived["output_bounds"] = output_bounds(data, cfg.output_bound_margin)
    if model_config.has_additive_glitches or model_config.discriminator_peak_view:
        derived["transform_out_scale"] = float(data.transform.out_scale)
    return dataclasses.replace(model_config, **derived)


def _prepare_out_dir(out: Path, resume: bool, overwrite: bool) -> list[Path]:
    """Check ``out`` before any work; return what ``overwrite`` will remove (only what training wrote there)."""
    if resume:
        return []
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    if out.exists() and any(not is_stale_temporary(e.name) for e in out.iterdir()):
        if not overwrite:
            raise InputError(f"model folder {out} exists and is not empty; use --resume to continue its training or --overwrite to replace it")
        return replaceable_contents(out, MODEL_DIR_FILES, marker=MODEL_DIR_RECORD, what="model folder", option="--overwrite")
    check_creatable_folder(out, option="--out")
    return []


def _check_variance(sources: Sequence[TodSource]) -> None:
    """InputError naming the first detector whose TOD is constant: nothing to learn (and no noise to fit)."""
    for s in sources:
        for i, row in enumerate(s.tod):
            if row.size and not np.ptp(row) > 0:
                name = s.detectors[i] if i < len(s.detectors) else str(i)
                raise InputError(
                    f"{s.path}: detector {name} has no variance (all {row.size} samples are {float(row[0]):g}); "
                    "training needs TOD with noise and glitches, e.g. from `crab simulate`"
                )


def _discard(out: Path, created: bool) -> None:
    """After a failure before the first checkpoint: remove what training wrote in ``out`` (and ``out`` if it made it)."""
    try:
        remove_contents(replaceable_contents(out, MODEL_DIR_FILES, marker=MODEL_DIR_RECORD, what="model folder", option="cleaning up"))
    except (InputError, OSError):
        return  # something else is there now: leave it all
    if created:
        try:
            out.rmdir()
        except OSError:
            pass


def train(
    data: Sequence[str | os.PathLike | TodSource],
    out_dir: str | os.PathLike,
    train_config: TrainConfig | None = None,
    model_config: ModelConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train a GAN on TOD files (or :class:`~crab.models.dataset.TodSource` arrays) into ``out_dir``.

    Parameters
    ----------
    data : sequence of path-like or TodSource
        ``crab`` HDF5 files or ``.npz`` files (``tod``, ``sampling_rate_hz``).
    out_dir : path-like
        Model directory (see ``docs/design.md``).
    train_config : TrainConfig, optional
        Hyper-parameters; with ``resume`` and None, the checkpoint's.
    model_config : ModelConfig, optional
        Architecture; ``window_samples`` is taken from ``train_config``.  With
        ``resume`` and None, the checkpoint's.
    resume : bool
        Continue from ``out_dir/checkpoint.pt``; the run ends where an
        uninterrupted run with the same configuration would.
    overwrite : bool
        Replace a non-empty ``out_dir`` (without ``resume``).
    progress : bool
        Draw a progress bar (epoch, losses, quality, ETA).

    Raises
    ------
    InputError, FileFormatError
        Bad data or configuration (nothing is written).
    ModelCompatibilityError
        ``resume`` with no checkpoint or an incompatible one.
    """
    t_start = time.time()
    out = Path(out_dir)

    # ---- data and configuration, checked before anything is written
    sources = [d if isinstance(d, TodSource) else None for d in data]
    paths = [d for d in data if not isinstance(d, TodSource)]
    loaded = iter(load_tod_sources(paths)) if paths else iter(())
    sources = [s if s is not None else next(loaded) for s in sources]
    if not sources:
        raise InputError("no training data given (pass at least one --data FILE)")
    if len({round(s.sampling_rate_hz, 9) for s in sources}) > 1:
        raise InputError("training data have different sampling rates: " + ", ".join(f"{s.path.name}: {s.sampling_rate_hz:g} Hz" for s in sources))
    _check_variance(sources)
    ck = load_checkpoint(out) if resume else None
    cfg = train_config or (checkpoint_config(ck, str(out / CHECKPOINT_FILE)) if ck else TrainConfig())
    if model_config is None:
        model_config = ModelConfig.from_dict(ck["model_config"], str(out / CHECKPOINT_FILE)) if ck else ModelConfig()
    n_ch = int(sources[0].tod.shape[0]) if cfg.joint_detectors else 1
    _check_model_config(model_config, cfg, n_ch)
    replaced = _prepare_out_dir(out, resume, overwrite)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)  # a folder that cannot be made fails here, before any work
    try:
        layer, sources, layer_note = _wafer_layer(cfg, sources, progress)
        direct = None
        if cfg.fit_pulses and ck is None and model_config.has_additive_glitches:
            direct = fit_direct_hits(sources, kernel=model_config.event_kernel, n_bands=model_config.pulse_bands, n_phases=model_config.pulse_phases if model_config.event_subsample else 1)
        data_ = prepare_training_data(
            sources,
            window_samples=cfg.window_samples,
            val_fraction=cfg.val_fraction,
            highpass_hz=cfg.highpass_hz,
            channels=n_ch,
            transform_noise_multiple=cfg.transform_noise_multiple,
            transform=AmplitudeTransform.from_dict(ck["transform"]) if ck else None,
            noise_params=NoiseParams(**ck["noise_params"]) if ck else None,
            cond_names=cfg.condition_on,
            highpass_clip_sigma=cfg.highpass_clip_sigma,
        )
        mcfg = model_config_for_data(model_config, cfg, data_, n_ch)
        if ck is not None:
            check_resume(ck, cfg, mcfg, sources, out / CHECKPOINT_FILE)
    except BaseException:
        if created:
            _discard(out, created)
        raise
    old_threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)

    if replaced:
        remove_contents(replaced)  # only what an earlier training wrote (checked by _prepare_out_dir)
    try:
        return _run(cfg, mcfg, data_, sources, out, ck, progress, t_start, layer, layer_note, direct)
    except BaseException:
        if not resume and not (out / CHECKPOINT_FILE).exists():
            _discard(out, created)
        raise
    finally:
        torch.set_num_threads(old_threads)


def _wafer_layer(cfg: TrainConfig, sources: list[TodSource], progress: bool):
    """``(layer, sources, note)``: the wafer layer fitted and subtracted (:func:`subtract_wafer_layer`) when it applies."""
    if not cfg.wafer_layer:
        return None, sources, "wafer layer off (wafer_layer = false)"
    if cfg.condition_on or cfg.joint_detectors:
        return None, sources, "no wafer layer with conditions or joint detectors: the network learns the wafer's signal"
    layer, residual, note = subtract_wafer_layer(sources)
    if progress:
        print(note, file=sys.stderr)
    return layer, residual, note


def _run(cfg: TrainConfig, mcfg: ModelConfig, data: TrainingData, sources, out: Path, ck: dict | None, progress: bool, t_start: float,
         layer=None, layer_note: str = "", direct=None) -> TrainResult:
    B, W = cfg.batch_size, cfg.window_samples
    tf = data.transform

    # ---- networks and optimisers
    torch.manual_seed(seed_from(cfg.seed, 1))
    G, D = Generator(mcfg), Discriminator(mcfg)
    pulses = None
    if direct is not None and G.additive is not None:  # a resumed run takes its weights from the checkpoint
        pulses = init_additive_glitches(G.additive, direct, scale=tf.scale, sampling_rate_hz=data.sampling_rate_hz)
    ema = copy.deepcopy(G).requires_grad_(False) if cfg.ema_decay > 0 else None
    opt_d = _optimizer(cfg.d_optimizer, D.parameters(), cfg.d_lr, cfg.d_momentum, cfg.d_betas)
    opt_g = _optimizer(cfg.g_optimizer, G.parameters(), cfg.g_lr, cfg.g_momentum, cfg.g_betas)

    # ---- data
    sampler = WindowSampler(data.train, W)
    val_real = torch.as_tensor(data.val_windows(max_windows=cfg.val_windows))
    # conditions, normalised for the networks: per training series, per validation window
    cond_pool = val_cond = None
    if data.cond_names:
        cond_pool = torch.as_tensor(normalize_cond(data.train_cond, data.cond_range), dtype=torch.float32)
        val_cond = torch.as_tensor(normalize_cond(data.val_windows_cond(max_windows=cfg.val_windows), data.cond_range), dtype=torch.float32)
    val_real_tod = tf.inverse(val_real.numpy().astype(np.float64))
    n_ref = min(len(val_real), cfg.quality_windows)
    floor = quality_floor(val_real_tod, tf.inverse(data.train_windows(max_windows=n_ref).astype(np.float64)), data.noise_sigma)
    z_val = window_latents(G, len(val_real), torch.Generator().manual_seed(seed_from(cfg.seed, 4)))
    z_quality = window_latents(G, cfg.quality_windows, torch.Generator().manual_seed(seed_from(cfg.seed, 3)))
    q_cond = None if val_cond is None else val_cond[torch.arange(cfg.quality_windows) % len(val_cond)]  # as the validation windows

    def part(c: torch.Tensor | None, i: int) -> torch.Tensor | None:
        return None if c is None else c[i : i + B]

    # ---- state (fresh or resumed)
    history = History(meta={"quality_floor": floor, "loss": cfg.loss, "n_val_windows": len(val_real), "n_quality_windows": cfg.quality_windows})
    start_epoch, best_quality, best_epoch = 0, math.inf, None
    if ck is not None:
        G.load_state_dict(ck["generator"])
        D.load_state_dict(ck["discriminator"])
        if ema is not None:
            ema.load_state_dict(ck["ema"])
        opt_g.load_state_dict(ck["opt_g"])
        opt_d.load_state_dict(ck["opt_d"])
        torch.set_rng_state(ck["torch_rng_state"])
        history = History.from_dict(ck["history"])
        start_epoch = int(ck["epoch"])
        best_quality = float(ck["best_quality"]) if ck["best_quality"] is not None else math.inf
        best_epoch = ck["best_epoch"]
    if G.additive is not None and G.additive.law_fitted:  # fitted direct hits (table and law) are kept, fresh or resumed; training learns the rest
        G.additive.table.requires_grad_(False)
    record = run_record(cfg, cfg.seed, model_config=mcfg.to_dict(), data_files=data.files, detectors=data.detectors, sampling_rate_hz=data.sampling_rate_hz, units=data.units,
                        transform=tf.to_dict(), noise_params=data.noise_params.to_dict(), noise_sigma=data.noise_sigma, highpass_hz=data.highpass_hz, quality_floor=floor,
                        resumed_from_epoch=start_epoch if ck is not None else None)
    write_json(out / MODEL_DIR_RECORD, record)
    write_training_state(out, finished=False, epoch=start_epoch, epochs=cfg.total_epochs)

    def checkpoint(epoch: int) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "crab_version": __version__, "epoch": epoch,
            "train_config": cfg.to_dict(), "model_config": mcfg.to_dict(),
            "generator": G.state_dict(), "discriminator": D.state_dict(), "ema": None if ema is None else ema.state_dict(),
            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "torch_rng_state": torch.get_rng_state(),
            "history": history.to_dict(), "best_quality": None if not math.isfinite(best_quality) else best_quality, "best_epoch": best_epoch,
            "transform": tf.to_dict(), "noise_params": data.noise_params.to_dict(), "noise_sigma": data.noise_sigma,
            "sampling_rate_hz": data.sampling_rate_hz, "window_samples": W, "highpass_hz": data.highpass_hz,
            "detectors": data.detectors, "units": data.units, "data_files": data.files,
        }

    n_d_steps = cfg.windows_per_epoch // B
    last_plot = -math.inf
    pbar = bar(total=cfg.total_epochs, desc="train", unit="epoch", disable=not progress, initial=start_epoch)
    for epoch in range(start_epoch + 1, cfg.total_epochs + 1):
        t0 = time.time()
        pretrain = epoch <= cfg.d_pretrain_epochs
        gen = torch.Generator().manual_seed(seed_from(cfg.seed, 0, epoch))
        G.train()
        D.train()
        stats = _Mean()
        for step in range(n_d_steps):
            interrupt.check()  # a stop signal swallowed by a callback still stops training
            # -- discriminator step: real crops against the generator's current output
            real, which = sampler.sample_with_series(B, gen)
            c = None if cond_pool is None else cond_pool[which]  # fakes take the conditions of the real batch
            with torch.no_grad():
                fake = generate_windows(G, window_latents(G, B, gen), c)
            lr, lf = D(real, c), D(fake, c)
            d_loss, g_loss_now = d_losses(cfg, lr, lf)
            loss = d_loss
            if cfg.loss == "wgan-gp":
                gp = gradient_penalty(D, real, fake, gen, c)
                loss = d_loss + cfg.gp_weight * gp
                if cfg.drift_weight:
                    loss = loss + cfg.drift_weight * (lr**2).mean()
                stats.add(gp=gp.item())
            opt_d.zero_grad(set_to_none=True)
            loss.backward()
            opt_d.step()
            stats.add(d_loss=d_loss.item(), **d_stats(cfg, lr.detach(), lf.detach()))
            if pretrain:  # the generator stays fixed; its loss is only recorded
                stats.add(g_loss=g_loss_now.item())
                continue
            if (step + 1) % cfg.d_steps_per_g_step:
                continue
            # -- generator step
            fake = generate_windows(G, window_latents(G, B, gen), c)
            D.requires_grad_(False)
            g_loss = g_loss_fn(cfg, D(fake, c))
            if cfg.feature_weight:
                fm = feature_matching_loss(fake, sampler.sample(B, gen))
                stats.add(feature_loss=fm.item())
                g_loss = g_loss + cfg.feature_weight * fm
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            D.requires_grad_(True)
            stats.add(g_loss=g_loss.item())
            if ema is not None:
                with torch.no_grad():
                    for pe, p in zip(ema.parameters(), G.parameters()):
                        pe.lerp_(p, 1.0 - cfg.ema_decay)
                    for be, b in zip(ema.buffers(), G.buffers()):
                        be.copy_(b)
        train_stats = stats.means()

        # -- validation: D on held-out real windows and on the generator's windows (training mode, as in the loop)
        G_val = copy.deepcopy(G)  # a copy, so batch-norm running statistics are untouched
        val = _Mean()
        with torch.no_grad():
            for i in range(0, len(val_real), B):
                real = val_real[i : i + B]
                fake = generate_windows(G_val, z_val[i : i + B], part(val_cond, i))
                if len(real) < 2:
                    continue
                lr, lf = D(real, part(val_cond, i)), D(fake, part(val_cond, i))
                d_loss, g_loss = d_losses(cfg, lr, lf)
                val.add(d_loss=float(d_loss), g_loss=float(g_loss), **d_stats(cfg, lr, lf))
        val_stats = val.means()

        # -- sample quality of what generation would produce (EMA weights, recalibrated BN, eval mode)
        G_eval = calibrate_batchnorm(ema if ema is not None else G, cfg.bn_calibration_batches, B, cfg.seed, cond_pool)
        with torch.no_grad():
            fake_q = torch.cat([generate_windows(G_eval, z_quality[i : i + B], part(q_cond, i)) for i in range(0, len(z_quality), B)])
        quality, _ = sample_quality(val_real_tod, tf.inverse(fake_q.numpy().astype(np.float64)), data.noise_sigma)

        row = {"epoch": epoch, "phase": "pretrain" if pretrain else "gan", "quality": quality, "train_gp": train_stats.get("gp"), "seconds": time.time() - t0}
        row.update({f"train_{k}": v for k, v in train_stats.items() if k != "gp"})
        row.update({f"val_{k}": v for k, v in val_stats.items()})
        history.append(row)

        # -- the generation model (adversarial epochs only) where it goes: the best model, a snapshot;
        #    then best.pt and the checkpoint, each written atomically
        is_best = not pretrain and quality < best_quality
        model_dirs = [out] if is_best else []
        if not pretrain and cfg.snapshot_every and (epoch - cfg.d_pretrain_epochs) % cfg.snapshot_every == 0:
            model_dirs.append(out / SNAPSHOT_DIR / f"epoch_{epoch:04d}")
        if model_dirs:
            slow = calibrated_noise_params(G_eval, data, cfg.seed) if cfg.slow_noise_calibration else data.noise_params  # once for all
            for where in model_dirs:
                where.mkdir(parents=True, exist_ok=True)
                save_model(where, G_eval, tf, data.sampling_rate_hz, units=data.units, noise_params=slow, highpass_hz=data.highpass_hz,
                           detectors_trained=data.detectors, epoch=epoch, quality=quality, quality_floor=floor, noise_sigma=data.noise_sigma,
                           cond_names=data.cond_names, cond_range=data.cond_range,
                           wafer_layer=None if layer is None else layer.to_dict(), wafer_layer_note=layer_note, initial_pulses=pulses,
                           train_config={k: norm_value(v) for k, v in cfg.to_dict().items()}, **{TRAINING_RECORD_KEY: TRAINING_STATE_FILE})
        if is_best:
            best_quality, best_epoch = quality, epoch
            atomic_write_bytes(out / BEST_FILE, to_bytes(checkpoint(epoch)))
        atomic_write_bytes(out / CHECKPOINT_FILE, to_bytes(checkpoint(epoch)))
        write_training_state(out, finished=False, epoch=epoch, epochs=cfg.total_epochs)
        final = epoch == cfg.total_epochs
        plot = final or time.time() - last_plot >= PLOT_INTERVAL_S
        history.save(out, plot=plot)
        last_plot = time.time() if plot else last_plot
        pbar.update(1)
        pbar.set_postfix(D=f"{train_stats['d_loss']:.3f}", G=f"{train_stats['g_loss']:.3f}", q=f"{quality:.3f}", best=f"{best_quality:.3f}" if math.isfinite(best_quality) else "-")
    pbar.close()
    if not (out / "history.png").exists():
        history.save(out)
    write_training_state(out, finished=True, epoch=cfg.total_epochs, epochs=cfg.total_epochs)
    return TrainResult(out_dir=out, epochs_done=cfg.total_epochs, best_epoch=best_epoch, best_quality=best_quality if math.isfinite(best_quality) else None,
                       quality_floor=floor, history=history, seconds=time.time() - t_start, data=data)
