"""``crab run``: the whole pipeline on the embedded default setup."""

from __future__ import annotations

import json
from pathlib import Path

import click

from crab.cli.options import DURATION, positive_int
from crab.core.units import format_duration


@click.command("run")
@click.option("--out", "run_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("crab_run"), show_default=True, help="Folder for every output of the run.")
@click.option("--seed", type=click.IntRange(min=0), default=1, show_default=True, help="Seed of the whole run.")
@click.option("--detectors", "n_detectors", type=int, default=4, show_default=True, callback=positive_int, help="Detectors on the wafer.")
@click.option("--sampling-rate", "sampling_rate_hz", type=float, default=19.0, show_default=True, help="Sampling rate (Hz).")
@click.option("--phi", "phi_gv", type=float, default=0.6, show_default=True, help="Solar modulation potential (GV).")
@click.option("--train-duration", type=DURATION, default="1800s", show_default=True, help="Length of the training Monte Carlo.")
@click.option("--heldout-duration", type=DURATION, default="1800s", show_default=True, help="Length of each held-out Monte Carlo run.")
@click.option("--references", "n_references", type=int, default=4, show_default=True, callback=positive_int,
              help="Independent held-out Monte Carlo runs to validate against (scatter over them, and MC-vs-MC floor); 1 is the weaker test.")
@click.option("--generate-duration", type=DURATION, default="1h", show_default=True, help="Length of the generated TOD (GAN and template).")
@click.option("--epochs", type=int, default=None, callback=positive_int, help="Training epochs (default: the training default).")
@click.option("--train-option", "train_options", multiple=True, metavar="KEY=VALUE", help="Override a training hyper-parameter (JSON value), e.g. --train-option loss='\"wgan-gp\"'.")
@click.option("--fresh", is_flag=True, help="Delete the run folder first instead of resuming.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def run(run_dir, seed, n_detectors, sampling_rate_hz, phi_gv, train_duration, heldout_duration, n_references, generate_duration, epochs, train_options, fresh, no_progress):
    """Run the paper's pipeline: MC for training and independent held-out MC
    runs, GAN training, 1 h of generation, the template baseline, and
    validation of both against every held-out run, beside the held-out runs
    against each other. Resumes an interrupted run in the same folder."""
    from crab.pipeline import PipelineConfig, run_pipeline

    overrides = {}
    for item in train_options:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--train-option")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    cfg = PipelineConfig(
        seed=seed,
        n_detectors=n_detectors,
        sampling_rate_hz=sampling_rate_hz,
        phi_gv=phi_gv,
        train_duration_s=train_duration,
        heldout_duration_s=heldout_duration,
        n_references=n_references,
        generate_duration_s=generate_duration,
        epochs=epochs,
        train_overrides=overrides,
    )
    click.echo(
        f"crab run: MC {format_duration(train_duration)} (+{n_references} x {format_duration(heldout_duration)} held out) x {n_detectors} detectors "
        f"at {sampling_rate_hz:g} Hz, phi {phi_gv:g} GV, seed {seed}; generating {format_duration(generate_duration)} -> {run_dir}",
        err=True,
    )
    result = run_pipeline(cfg, run_dir, progress=not no_progress, fresh=fresh, log=lambda s: click.echo(s, err=True))
    click.echo(result.table())
