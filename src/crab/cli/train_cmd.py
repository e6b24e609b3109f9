"""``crab train``: train the GAN on Monte Carlo TOD (see :mod:`crab.models.gan.training`).

Hyper-parameters come from a TOML configuration file (``--config``, :mod:`crab.models.gan.config_file`);
the options given on the command line override it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from crab.cli.options import SEED, nonnegative_int, positive_int


#: Epochs between the snapshots scored by --select-with (unless --snapshot-every says otherwise).
SELECT_EVERY = 10

#: CLI option -> TrainConfig field (options left out keep the file's value, the default, or the checkpoint's with --resume)
_FIELDS = {"epochs": "epochs", "seed": "seed", "threads": "num_threads", "joint_detectors": "joint_detectors", "snapshot_every": "snapshot_every"}


@click.command("train")
@click.option("--data", "data", multiple=True, required=True, type=click.Path(path_type=Path), help="Training TOD: a crab HDF5 file (from `crab simulate`) or a .npz with 'tod' and 'sampling_rate_hz'. Repeat for several files.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Model directory to write (model.pt, checkpoints, history, config.json).")
@click.option("--config", "config", default=None, help="Configuration: a TOML file with [model] and [train] tables, or a shipped name (paper, two_event_channels, no_events, ...); the options here override it.")
@click.option("--epochs", type=int, default=None, callback=positive_int, help="Adversarial epochs (after discriminator pretraining).  [default: 90]")
@click.option("--seed", type=SEED, default=None, help="Seed of every random stream, unsigned 64-bit.  [default: 1]")
@click.option("--resume", is_flag=True, help="Continue the training stored in --out (checkpoint.pt); ends where an uninterrupted run would.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
@click.option("--condition", "condition_on", multiple=True, help="Condition both networks on this quantity of the files (phi: the solar modulation potential; give files at several phi).")
@click.option("--joint-detectors", is_flag=True, default=None, help="Generate the detectors of a file jointly (one multi-channel window per wafer: simultaneous common-mode glitches).")
@click.option("--threads", type=int, default=None, callback=positive_int, help="Torch CPU threads.")
@click.option("--snapshot-every", type=int, default=None, callback=nonnegative_int, help="Also write the generation model of every N-th adversarial epoch to OUT/snapshots/epoch_NNNN (0: none).  [default: 0]")
@click.option("--select-with", "selection", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Selection Monte Carlo (not a test reference): keep the snapshot with the lowest classifier AUC against it (snapshots every 10 epochs unless --snapshot-every).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(data, out, config, resume, overwrite, quiet, selection, **opts):
    """Train the GAN on TOD from `crab simulate` (or your own Monte Carlo).

    \b
    Examples:
      crab train --data mc.h5 --out model_dir --epochs 200 --seed 1
      crab train --data mc.h5 --out paper_model --config paper
      crab train --data mc.h5 --out model_dir --select-with mc_selection.h5
      crab train --data mc_phi04.h5 --data mc_phi08.h5 --data mc_phi12.h5 --condition phi --joint-detectors --out phi_model
    """
    from crab.core.errors import InputError
    from crab.models.gan.config import ModelConfig, TrainConfig
    from crab.models.gan.config_file import model_overrides, read_config_file
    from crab.models.gan.training import checkpoint_train_config, train as run_training

    if resume and overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    if resume and config is not None:
        raise InputError("--config cannot change when resuming: the network and the recipe are the checkpoint's")
    condition_on = opts.pop("condition_on")
    overrides = {_FIELDS[k]: v for k, v in opts.items() if v is not None}
    if condition_on:
        overrides["condition_on"] = tuple(condition_on)
    if selection is not None:
        if not selection.is_file():
            raise InputError(f"--select-with {selection}: no such file (a Monte Carlo run from `crab simulate`)")
        overrides.setdefault("snapshot_every", min(SELECT_EVERY, overrides.get("epochs") or SELECT_EVERY))
    model_config = None
    if resume:
        base = checkpoint_train_config(out).to_dict()
    else:
        settings = read_config_file(config) if config is not None else {"model": {}, "train": {}}
        base = {**dataclasses.asdict(TrainConfig()), **settings["train"]}
        try:
            model_config = ModelConfig(**model_overrides(settings["model"]), window_samples=base["window_samples"])
        except (TypeError, ValueError) as exc:
            raise InputError(f"--config {config}: {exc}") from None
    try:
        cfg = TrainConfig.from_dict({**base, **overrides})
    except TypeError as exc:
        raise InputError(f"--config {config}: {exc}") from None
    result = run_training(list(data), out, cfg, model_config, resume=resume, overwrite=overwrite, progress=not quiet)
    best = "none" if result.best_quality is None else f"{result.best_quality:.3f} at epoch {result.best_epoch}"
    click.echo(
        f"trained {result.epochs_done} epochs in {result.seconds:.0f} s; sample-quality statistic {best} "
        f"(real-vs-real floor {result.quality_floor:.3f}); model: {Path(out) / 'model.pt'}; history: {Path(out) / 'history.png'}"
    )
    if selection is not None:
        from crab.validation.selection import select_snapshot

        chosen = select_snapshot(out, selection, log=None if quiet else lambda line: click.echo(line, err=True))
        click.echo(f"selected epoch {chosen['chosen_epoch']} (classifier AUC {chosen['chosen_auc']:.3f} against {selection}); model: {Path(out) / 'model.pt'}")
