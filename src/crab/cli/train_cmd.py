"""``crab train``: train the GAN on Monte Carlo TOD (see :mod:`crab.models.gan.training`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from crab.cli.options import nonnegative_float, positive_float, positive_int


def _nonneg_int(ctx, param, value):
    if value is not None and value < 0:
        raise click.BadParameter(f"must be >= 0, got {value}")
    return value


def _channel_list(ctx, param, value):
    """Callback: comma-separated positive integers -> tuple."""
    if value is None:
        return None
    try:
        out = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 32,32,16,8,8, got {value!r}") from None
    if not all(c >= 1 for c in out):
        raise click.BadParameter(f"channels must be >= 1, got {value!r}")
    return out


#: CLI option -> TrainConfig field (options left out keep the default, or the checkpoint's value with --resume)
_FIELDS = {
    "epochs": "epochs",
    "seed": "seed",
    "window_samples": "window_samples",
    "loss": "loss",
    "batch_size": "batch_size",
    "windows_per_epoch": "windows_per_epoch",
    "d_pretrain_epochs": "d_pretrain_epochs",
    "d_steps": "d_steps_per_g_step",
    "d_optimizer": "d_optimizer",
    "g_optimizer": "g_optimizer",
    "d_lr": "d_lr",
    "g_lr": "g_lr",
    "label_smoothing": "label_smoothing",
    "synthetic_weight": "synthetic_weight",
    "feature_weight": "feature_weight",
    "ema_decay": "ema_decay",
    "highpass_hz": "highpass_hz",
    "val_fraction": "val_fraction",
    "threads": "num_threads",
    "joint_detectors": "joint_detectors",
    "snapshot_every": "snapshot_every",
    "lr_decay_epochs": "lr_decay_epochs",
    "lr_decay_final": "lr_decay_final",
}

#: CLI options that set ModelConfig fields of the same name (a new training only)
_MODEL_FIELDS = (
    "latent_dim", "generator_arch", "event_channels", "event_threshold", "event_subsample", "event_kernel", "additive_glitches", "discriminator_peak_view",
    "spectral_norm", "generator_channels", "causal_pulses",
)


@click.command("train")
@click.option("--data", "data", multiple=True, required=True, type=click.Path(path_type=Path), help="Training TOD: a crab HDF5 file (from `crab simulate`) or a .npz with 'tod' and 'sampling_rate_hz'. Repeat for several files.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Model directory to write (model.pt, checkpoints, history).")
@click.option("--epochs", type=int, default=None, callback=positive_int, help="Adversarial epochs (after discriminator pretraining).  [default: 90]")
@click.option("--seed", type=int, default=None, callback=_nonneg_int, help="Seed of every random stream.  [default: 1]")
@click.option("--resume", is_flag=True, help="Continue the training stored in --out (checkpoint.pt); ends where an uninterrupted run would.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
@click.option("--window-samples", type=int, default=None, callback=positive_int, help="Window length in samples (multiple of 16).  [default: 256]")
@click.option("--loss", type=click.Choice(["bce", "wgan-gp"]), default=None, help="Adversarial loss.")
@click.option("--batch-size", type=int, default=None, callback=positive_int)
@click.option("--windows-per-epoch", type=int, default=None, callback=positive_int, help="Real windows per epoch (random crops).")
@click.option("--d-pretrain-epochs", type=int, default=None, callback=_nonneg_int, help="Discriminator-only epochs before adversarial training.")
@click.option("--d-steps", type=int, default=None, callback=positive_int, help="Discriminator steps per generator step.")
@click.option("--d-optimizer", type=click.Choice(["sgd", "adam"]), default=None)
@click.option("--g-optimizer", type=click.Choice(["sgd", "adam"]), default=None)
@click.option("--d-lr", type=float, default=None, callback=positive_float)
@click.option("--g-lr", type=float, default=None, callback=positive_float)
@click.option("--label-smoothing", type=float, default=None, help="One-sided label smoothing (real target 1 - s).")
@click.option("--synthetic-weight", type=float, default=None, callback=positive_float, help="Weight of the synthetic term of the discriminator loss.")
@click.option("--feature-weight", type=float, default=None, callback=nonnegative_float, help="Weight of the feature-matching term of the generator loss (0 disables). [default: 0.5]")
@click.option("--lr-decay-epochs", type=int, default=None, callback=_nonneg_int, help="Decay both learning rates linearly over the last N adversarial epochs (0: constant).  [default: 0]")
@click.option("--lr-decay-final", type=float, default=None, help="Fraction of the learning rates reached in the last epoch of --lr-decay-epochs.  [default: 0.1]")
@click.option("--ema-decay", type=float, default=None, help="EMA of the generator weights (0 disables).")
@click.option("--highpass-hz", type=float, default=None, help="High-pass cut before windowing (Hz; 0 disables). [default: sampling rate / (4 x window)]")
@click.option("--val-fraction", type=float, default=None, help="Last fraction of each series kept for validation.")
@click.option("--latent-dim", type=int, default=None, callback=positive_int, help="Latent channels of the generator.")
@click.option(
    "--event-channels",
    type=int,
    default=None,
    callback=_nonneg_int,
    help="Full-resolution event channels of the streaming generator: sparse point-process inputs (|z| > --event-threshold) beside its Gaussian noise channel; 0: none. [default: 3]",
)
@click.option("--event-threshold", type=float, default=None, callback=positive_float, help="Threshold of the event channels (standard-normal units; 2.5: 1.2 %% of samples).")
@click.option("--event-subsample/--no-event-subsample", default=None, help="Place each event at a random time between two samples (or at a sample). [default: between]")
@click.option("--event-kernel", type=int, default=None, callback=_nonneg_int, help="Taps (odd) of a learned pulse filter of the event channels (their rise and decay); 0: none. [default: 33]")
@click.option(
    "--additive-glitches/--no-additive-glitches",
    default=None,
    help="Add the glitches of the event channels in TOD units (amplitude x learned pulse, before the amplitude transform) or let the network draw them. [default: add]",
)
@click.option(
    "--causal-pulses/--no-causal-pulses",
    default=None,
    help="Additive glitches: hold the pulse taps before the event at 0 (nothing is seen before a hit). [default: off]",
)
@click.option(
    "--discriminator-peak-view/--no-discriminator-peak-view",
    default=None,
    help="Also show the discriminator each window in TOD units divided by its maximum (the largest glitch's shape at any height), not only the asinh-compressed window. [default: on]",
)
@click.option(
    "--generator-channels",
    default=None,
    callback=_channel_list,
    help="Channels of the generator's coarse stage and four upsampling stages, comma-separated, coarse to fine. [default: 32,32,16,8,8]",
)
@click.option("--spectral-norm/--no-spectral-norm", default=None, help="Spectral normalisation of the discriminator's layers. [default: off]")
@click.option("--generator-arch", type=click.Choice(["streaming", "paper"]), default=None, help="Streaming (fully convolutional, default) or the paper's dense-input generator.")
@click.option("--threads", type=int, default=None, callback=positive_int, help="Torch CPU threads.")
@click.option("--condition", "condition_on", multiple=True, help="Condition both networks on this quantity of the files (phi: the solar modulation potential; give files at several phi).")
@click.option("--joint-detectors", is_flag=True, default=None, help="Generate the detectors of a file jointly (one multi-channel window per wafer: simultaneous common-mode glitches).")
@click.option("--snapshot-every", type=int, default=None, callback=_nonneg_int, help="Also write the generation model of every N-th adversarial epoch to OUT/snapshots/epoch_NNNN (0: none; see benchmarks/training_trajectory.py).  [default: 0]")
@click.option("--recipe", type=click.Choice(["default", "paper"]), default="default", show_default=True, help="Starting hyper-parameters: CRAB's defaults (WGAN-GP) or the paper's (BCE, SGD for D, Adam for G); options given here override them.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(data, out, resume, overwrite, quiet, recipe, **opts):
    """Train the GAN on TOD from `crab simulate` (or your own Monte Carlo).

    \b
    Examples:
      crab train --data mc.h5 --out model_dir --epochs 200 --seed 1
      crab train --data mc_phi04.h5 --data mc_phi08.h5 --data mc_phi12.h5 --condition phi --joint-detectors --out phi_model
    """
    from crab.core.errors import InputError
    from crab.models.gan.network import ModelConfig
    from crab.models.gan.training import TrainConfig, checkpoint_train_config, train as run_training

    if resume and overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    condition_on = opts.pop("condition_on")
    mkw = {k: v for k in _MODEL_FIELDS if (v := opts.pop(k)) is not None}
    overrides = {_FIELDS[k]: v for k, v in opts.items() if v is not None}
    if condition_on:
        overrides["condition_on"] = tuple(condition_on)
    model_config = None
    if resume:
        base = checkpoint_train_config(out)
        fixed = ["--" + k.replace("_", "-") for k in mkw] + (["--recipe"] if recipe != "default" else [])
        if fixed:
            raise InputError(f"{', '.join(fixed)} cannot change when resuming: the network and the recipe are the checkpoint's")
    else:
        base = TrainConfig.paper() if recipe == "paper" else TrainConfig()
        if "event_channels" in mkw:
            # one Gaussian full-resolution noise channel plus the event channels (upsample_factor latents each)
            base_model = ModelConfig()
            noise_dim = base_model.upsample_factor * (1 + mkw["event_channels"])
            mkw["noise_dim"] = noise_dim
            mkw.setdefault("latent_dim", base_model.latent_dim - base_model.noise_dim + noise_dim)
        try:
            model_config = ModelConfig(**mkw, window_samples=overrides.get("window_samples", base.window_samples))
        except ValueError as exc:
            raise InputError(str(exc)) from None
    cfg = TrainConfig.from_dict({**dataclasses.asdict(base), **overrides})
    result = run_training(list(data), out, cfg, model_config, resume=resume, overwrite=overwrite, progress=not quiet)
    best = "none" if result.best_quality is None else f"{result.best_quality:.3f} at epoch {result.best_epoch}"
    click.echo(
        f"trained {result.epochs_done} epochs in {result.seconds:.0f} s; sample-quality statistic {best} "
        f"(real-vs-real floor {result.quality_floor:.3f}); model: {Path(out) / 'model.pt'}; history: {Path(out) / 'history.png'}"
    )
