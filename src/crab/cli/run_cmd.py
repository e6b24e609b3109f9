"""``crab run``: the whole pipeline on the embedded default setup."""

from __future__ import annotations

import json
from pathlib import Path

import click

from crab.cli.options import DURATION, positive_int, seed_range
from crab.core.units import format_duration
from crab.pipeline import PipelineConfig

#: Seeds of the runs beyond the run's own: ``seed + offset`` must stay an unsigned 64-bit integer.
_SEED_OFFSET = max(PipelineConfig.generate_seed_offset, PipelineConfig.selection_seed_offset)


def _check_needs(cfg: PipelineConfig, run_dir: Path) -> None:
    """Before any stage: every duration within the samples a run can address, and the disk space of every TOD file."""
    from crab.core.paths import check_free_space
    from crab.core.units import check_sample_span
    from crab.io.montecarlo_file import expected_file_bytes
    from crab.io.tod import tod_file_bytes
    from crab.physics.montecarlo_config import MonteCarloConfig

    fs = cfg.sampling_rate_hz
    mc = {"--train-duration": cfg.train_duration_s, "--heldout-duration": cfg.heldout_duration_s}
    for option, seconds in {**mc, "--generate-duration": cfg.generate_duration_s}.items():
        check_sample_span(round(seconds * fs), fs, what=f"{option} {format_duration(seconds)}")
    mc_cfg = MonteCarloConfig(n_detectors=cfg.n_detectors, sampling_rate_hz=fs, phi_gv=cfg.phi_gv)
    total = expected_file_bytes(mc_cfg, cfg.train_duration_s) + cfg.n_references * expected_file_bytes(mc_cfg, cfg.heldout_duration_s)
    if cfg.selection_duration_s is not None:
        total += expected_file_bytes(mc_cfg, cfg.selection_duration_s)
    total += 2 * tod_file_bytes(cfg.n_detectors, round(cfg.generate_duration_s * fs))  # GAN and template
    home = run_dir
    while not home.exists() and home != home.parent:
        home = home.parent
    check_free_space(home, total, what=f"crab run in {run_dir} (Monte Carlo and generated TOD)")


@click.command("run")
@click.option("--out", "run_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("crab_run"), show_default=True, help="Folder for every output of the run.")
@click.option("--seed", type=seed_range(_SEED_OFFSET), default=1, show_default=True, help="Seed of the whole run (the held-out, selection and generation runs use seed + 1000 ... 3000).")
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
@click.option("--fresh", is_flag=True, help="Start over: remove what an earlier crab run wrote in the folder (a folder holding anything else is refused).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def run(run_dir, seed, n_detectors, sampling_rate_hz, phi_gv, train_duration, heldout_duration, n_references, generate_duration, epochs, train_options, fresh, no_progress):
    """Run the paper's pipeline: MC for training and independent held-out MC
    runs, GAN training, 1 h of generation, the template baseline, and
    validation of both against every held-out run, beside the held-out runs
    against each other. Resumes an interrupted run in the same folder."""
    from crab.pipeline import check_run_dir, run_pipeline

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
    _check_needs(cfg, run_dir)
    check_run_dir(run_dir, fresh=fresh)  # before anything is printed or made (run_pipeline checks it again)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)  # a folder that cannot be made fails here, before any stage
    banner = [  # printed with the first stage, once the configuration has been checked (an error stays one line)
        (
            f"crab run: MC {format_duration(train_duration)} (+{n_references} x {format_duration(heldout_duration)} held out) x {n_detectors} detectors "
            f"at {sampling_rate_hz:g} Hz, phi {phi_gv:g} GV, seed {seed}; generating {format_duration(generate_duration)} -> {run_dir}"
        )
    ]

    def log(line: str) -> None:
        while banner:
            click.echo(banner.pop(), err=True)
        click.echo(line, err=True)

    try:
        result = run_pipeline(cfg, run_dir, progress=not no_progress, fresh=fresh, log=log)
    except BaseException:
        if created and not any(run_dir.iterdir()):
            run_dir.rmdir()  # nothing was made: leave no empty folder behind
        raise
    click.echo(result.table())
