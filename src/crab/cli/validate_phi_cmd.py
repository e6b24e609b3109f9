"""``crab validate-phi``: a phi-conditioned model against Monte Carlo at several phi (see :mod:`crab.validation.phi`)."""

from __future__ import annotations

from pathlib import Path

import click

from crab.cli.options import SEED, positive_float


@click.command("validate-phi")
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path), help="Model directory of a model trained with --condition phi.")
@click.option("--reference", "-r", "references", multiple=True, required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Held-out Monte Carlo file at one phi (from `crab simulate --phi`); repeat for several phi, including some the model never saw.")
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for phi.json, phi.md and phi.png.")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Generation seed (unsigned 64-bit).")
@click.option("--duration-factor", default=1.0, show_default=True, type=float, callback=positive_float, help="Generated duration / reference duration.")
@click.option("--allow-extrapolation", is_flag=True, help="Accept reference phi outside the trained range.")
@click.option("--allow-unfinished", is_flag=True, help="Accept the model of a training that did not finish.")
@click.option("--no-plots", is_flag=True, help="Skip phi.png.")
def validate_phi(model_path, references, out_dir, seed, duration_factor, allow_extrapolation, allow_unfinished, no_plots):
    """Glitch rate, amplitudes, coincidences and correlation against phi: model vs Monte Carlo.

    \b
    Example:
      crab validate-phi --model phi_model -r mc_phi0.6.h5 -r mc_phi1.0.h5 -o phi_report
    """
    # the stage is imported on use, so that `crab --help` and the other commands stay fast
    from crab.generation import load_generation_model
    from crab.validation import validate_phi as run

    model = load_generation_model(model_path, method="gan", allow_unfinished=allow_unfinished)
    points = run(model, list(references), out_dir, seed=seed, duration_factor=duration_factor, allow_extrapolation=allow_extrapolation, plots=not no_plots)
    for p in points:
        click.echo(
            f"phi {p.phi_gv:g} GV ({'trained' if p.trained else 'held out'}): glitch rate MC {p.rate_mc:.0f} ± {p.rate_mc_error:.0f}, "
            f"model {p.rate_model:.0f} ± {p.rate_model_error:.0f} per det-h (z {p.rate_z:+.2f}); coincidences MC {p.coincidence_rate_mc:.0f}, "
            f"model {p.coincidence_rate_model:.0f} per h; amplitude KS {p.amplitude_ks_stat:.2f} (2-sigma {p.amplitude_ks_threshold:.2f})"
        )
    click.echo(f"report: {Path(out_dir) / 'phi.md'}")
