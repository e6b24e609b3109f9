"""``crab validate``: compare synthetic TOD with held-out Monte Carlo (one or several independent runs), beside the MC-vs-MC floor."""

from __future__ import annotations

from pathlib import Path

import click

from crab.cli.options import SEED, positive_float, positive_int
from crab.core.errors import InputError


def _parse_synthetic(values: tuple[str, ...]) -> dict[str, str]:
    """``NAME=PATH`` or ``PATH`` (name = file stem, made unique)."""
    out: dict[str, str] = {}
    for v in values:
        name, path = None, v
        if "=" in v and not Path(v).exists():
            name, path = v.split("=", 1)
            if not name or "/" in name:
                name, path = None, v
        base = name or Path(path).stem or "synthetic"
        n, i = base, 2
        while n in out:
            if name:
                raise InputError(f"synthetic set name {name!r} given twice")
            n, i = f"{base}_{i}", i + 1
        out[n] = path
    return out


@click.command("validate")
@click.option(
    "--reference",
    "-r",
    "references",
    required=True,
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Held-out Monte Carlo TOD file (never used for training); repeat for independent runs of one setup (other seeds): "
    "every metric is then its mean +- scatter over them, beside the references scored against each other (the stronger test).",
)
@click.option(
    "--synthetic",
    "-s",
    "synthetic",
    required=True,
    multiple=True,
    help="Synthetic TOD file to validate, as PATH or NAME=PATH; repeat for several sets (GAN, template...).",
)
@click.option("--training", "-t", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Monte Carlo the model was trained on (enables the memorisation test, and the classifier test against it as context: how close each set is to the sample it learned from).")
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Report folder: metrics.json, report.md, PNG plots (replaced if it holds a previous report).")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed (unsigned 64-bit) of the random re-splits, classifier splits and subsampling.")
@click.option("--window-samples", default=256, show_default=True, type=int, callback=positive_int, help="Window length of the per-window features, classifier and memorisation test.")
@click.option("--block-s", default=60.0, show_default=True, type=float, callback=positive_float, help="Length of the time blocks used for errors and re-splits (s).")
@click.option("--threshold-sigma", default=5.0, show_default=True, type=float, callback=positive_float, help="Glitch detection threshold (robust noise sigmas).")
@click.option("--n-sigma", default=3.0, show_default=True, type=float, callback=positive_float, help="Pass threshold of the diagnostic metrics (floor sigmas).")
@click.option("--n-sigma-target", default=2.0, show_default=True, type=float, callback=positive_float, help="Pass threshold of the target metrics (glitch rate, amplitudes, classifier).")
@click.option("--auc-target", default=0.60, show_default=True, type=click.FloatRange(0.5, 1.0), help="Classifier AUC accepted whatever the floor.")
@click.option("--n-null", default=200, show_default=True, type=click.IntRange(min=10), help="Random re-splits of each reference for the null distributions.")
@click.option("--seam-period", default=None, type=int, callback=positive_int, help="Join period of the synthetic TOD (samples); default: from the file's config, else the window length.")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option("--strict", is_flag=True, help="Exit with status 1 when a set misses a target.")
def validate(references, synthetic, training, out_dir, seed, window_samples, block_s, threshold_sigma, n_sigma, n_sigma_target, auc_target, n_null, seam_period, no_plots, strict) -> None:
    """Compare synthetic TOD with held-out Monte Carlo and write a report.

    Every metric (glitch rate, amplitudes and their power-law slope, decay
    and inter-arrival times, coincidences, noise RMS, PSD per octave,
    autocorrelation, per-window features, a classifier two-sample test,
    memorisation, seams) is shown beside its floor, what independent Monte
    Carlo scores. With several references (--reference repeated) each set
    is scored against each, every metric is reported as mean +- scatter over
    them with its distance from the floor (for the classifier, dAUC), and
    the floor is the references scored against each other. With one
    reference the floor is its two halves: the weaker test.

    \b
    Example:
      crab validate -r mc_1.h5 -r mc_2.h5 -r mc_3.h5 -r mc_4.h5 \\
          --synthetic gan=gen.h5 --synthetic template=template.h5 \\
          --training mc_train.h5 --out report/
    """
    # the stage is imported on use, so that `crab --help` and the other commands stay fast
    from crab.analysis.glitches import GlitchDetectorConfig
    from crab.validation import ValidationConfig
    from crab.validation import validate as run_validation

    cfg = ValidationConfig(
        window_samples=window_samples,
        block_s=block_s,
        n_sigma=n_sigma,
        n_sigma_target=n_sigma_target,
        auc_target=auc_target,
        n_null=n_null,
        seam_period_samples=seam_period,
        detector=GlitchDetectorConfig(threshold_sigma=threshold_sigma),
        seed=seed,
    )
    result = run_validation(list(references), _parse_synthetic(synthetic), out_dir, training=training, config=cfg, plots=not no_plots)
    click.echo(result.summary_text())
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(f"report: {Path(out_dir) / 'report.md'}  (all numbers: metrics.json)")
    if strict and not all(s.targets_met for s in result.sets.values()):
        raise SystemExit(1)
