"""``crab generate``: TOD of any length from a trained model or the template baseline."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from crab.core.errors import InputError
from crab.cli.options import DURATION, DURATION_OR_ZERO, SEED, positive_int
from crab.models.registry import method_names, method_of


def _conditions(phi_gv: float | None, schedule: Path | None, cond: tuple[str, ...]):
    """The ConditionSchedule asked on the command line (None when no condition was given)."""
    from crab.physics.conditions import ConditionSchedule, cond_name

    given = [n for n, v in (("--phi", phi_gv), ("--phi-schedule", schedule), ("--cond", cond or None)) if v is not None]
    if len(given) > 1:
        raise InputError(f"give the conditions one way: {' or '.join(given)}")
    if schedule is not None:
        return ConditionSchedule.from_csv(schedule)
    if phi_gv is not None:
        return ConditionSchedule.constant({"phi_gv": phi_gv})
    if not cond:
        return None
    got: dict[str, float] = {}
    for v in cond:
        if "=" not in v:
            raise InputError(f"--cond expects NAME=VALUE, got {v!r}")
        k, _, x = v.partition("=")
        name = cond_name(k.strip())  # an unknown condition is named as such
        try:
            got[name] = float(x)
        except ValueError:
            raise InputError(f"--cond {k}: {x!r} is not a number") from None
    return ConditionSchedule.constant(got)


@click.command("generate")
@click.option("--model", "model_path", type=click.Path(path_type=Path), help="Trained model directory (`crab train`), or a template model (.json) to reuse.")
@click.option("--method", type=click.Choice(method_names()), default=None, help="Generative method (default: recognised from --model; the template with --fit).")
@click.option("--fit", "fit_path", type=click.Path(path_type=Path), help="Template method: fit the template on this Monte Carlo file (with /events truth).")
@click.option("--save-template", type=click.Path(path_type=Path), help="With --fit: also save the fitted template model here (.json or folder).")
@click.option("--duration", required=True, type=DURATION, help="Duration to generate: 3600, 2h, 10d, 3y ...")
@click.option("--detectors", default=1, show_default=True, type=int, callback=positive_int, help="Number of detectors (keys 0..n-1).")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed (unsigned 64-bit): with the detector and the time, it fixes every sample.")
@click.option("--start", default="0", show_default=True, type=DURATION_OR_ZERO, help="Time of the first sample: the same samples as that slice of a run from 0.")
@click.option("--out", "out", type=str, help="Output HDF5 file, or '-' to stream raw float32 to stdout.")
@click.option("--checksum-only", is_flag=True, help="Generate and print the SHA-256 checksum only (no output; for benchmarks).")
@click.option("--chunk-samples", default=1 << 20, show_default=True, type=int, callback=positive_int, help="Samples per detector generated and written at a time.")
@click.option("--sampling-rate", "sampling_rate_hz", type=float, help="Required sampling rate (Hz): an error if the model was made for another.")
@click.option("--phi", "phi_gv", type=float, help="Solar modulation potential (GV) for a model conditioned on phi, constant over the run.")
@click.option("--phi-schedule", type=click.Path(dir_okay=False, path_type=Path), help="CSV of (time, phi) for a mission history, linearly interpolated in time (see crab.physics.conditions).")
@click.option("--allow-extrapolation", is_flag=True, help="Accept conditions outside the range the model was trained on.")
@click.option("--cond", multiple=True, help="Condition of a conditioned model, NAME=VALUE (e.g. phi_gv=0.6); repeatable.")
@click.option("--wafer-size", type=int, callback=positive_int, help="Detectors per wafer sharing its hits (keys k // N); default: the wafer the model was fitted on; 1: every detector on its own wafer.")
@click.option("--workers", type=int, callback=positive_int, help="Worker threads (default: CPUs available); does not change the output.")
@click.option("--truth/--no-truth", default=True, show_default=True, help="Write the /events table of the generated glitches (time, detector or wafer, amplitude, family) into the output file. It lists every wafer hit (about 15 per second per wafer, mostly below the noise): with crab run's model and one detector it adds 4x the TOD's size and makes generation 6x slower; --no-truth for long runs that do not need it.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("--allow-unfinished", is_flag=True, help="Accept the model of a training that did not finish (killed or interrupted; `crab train --resume` finishes it).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def generate(
    model_path, method, fit_path, save_template, duration, detectors, seed, start, out, checksum_only, chunk_samples, sampling_rate_hz,
    phi_gv, phi_schedule, allow_extrapolation, cond, wafer_size, workers, truth, overwrite, allow_unfinished, no_progress,
):
    """Generate TOD of any length, streamed in chunks, seam-free and reproducible.

    \b
    Examples:
      crab generate --model model_dir --duration 3y --detectors 4 --seed 7 --out gen.h5
      crab generate --model model_dir --duration 1d --start 2d --out slice.h5
      crab generate --method template --fit mc.h5 --save-template tpl.json --duration 1d --out tpl.h5
      crab generate --model model_dir --duration 3y --checksum-only
      crab generate --model model_dir --duration 1d --detectors 64 --wafer-size 16 --out wafers.h5
      crab generate --model phi_model --phi 0.7 --duration 1d --out gen.h5
      crab generate --model phi_model --phi-schedule mission_phi.csv --duration 3y --detectors 8 --out gen.h5
    """
    from crab import generation as G
    from crab.core.paths import check_output_file

    if method is None:  # recognised from the model; the template when fitting now
        method = "template" if fit_path is not None else (method_of(model_path) if model_path is not None else None) or method_names()[0]
    if checksum_only and out is not None:
        raise InputError("give either --out or --checksum-only, not both")
    if not checksum_only and out is None:
        raise InputError("say where the TOD goes: --out FILE.h5, --out - (raw float32 on stdout) or --checksum-only")
    if sampling_rate_hz is not None and not sampling_rate_hz > 0:
        raise InputError(f"--sampling-rate must be positive, got {sampling_rate_hz}")
    out_path = None if out in (None, "-") else check_output_file(out, overwrite=overwrite)

    if method != "template" and (fit_path is not None or save_template is not None):
        raise InputError("--fit and --save-template belong to --method template")
    if method == "template" and fit_path is not None:
        from crab.models.template import fit_template_file, save_template as _save

        model = fit_template_file(fit_path)
        if sampling_rate_hz is not None and abs(model.sampling_rate_hz - sampling_rate_hz) > 1e-9 * sampling_rate_hz:
            raise InputError(f"{fit_path} is sampled at {model.sampling_rate_hz:g} Hz, but {sampling_rate_hz:g} Hz was asked")
        if save_template is not None:
            model.path = _save(model, save_template)
            click.echo(f"template model saved to {model.path}", err=True)
    elif model_path is not None:
        model = G.load_generation_model(model_path, method=method, sampling_rate_hz=sampling_rate_hz, allow_unfinished=allow_unfinished)
    elif method == "template":
        raise InputError("the template method needs --fit MC.h5 (fit now) or --model TEMPLATE.json (reuse a fit)")
    else:
        raise InputError("give --model MODEL_DIR (a directory written by `crab train`)")

    conditions = _conditions(phi_gv, phi_schedule, cond)
    options = {k: v for k, v in (("cond", conditions), ("allow_extrapolation", allow_extrapolation or None)) if v is not None}
    if model.kind != "gan" and options:
        raise InputError("--phi, --phi-schedule, --cond and --allow-extrapolation apply to conditioned GAN models only")
    gen = G.TodGenerator(model, seed, n_workers=workers, wafer_size=wafer_size, **options)
    progress = False if no_progress else None
    run_config = {"command": "crab generate", "fit": None if fit_path is None else str(fit_path)}

    if checksum_only or out == "-":  # under mpirun these sinks would repeat the whole job on every rank
        from crab.generation import mpi

        mpi.require_serial("--checksum-only" if checksum_only else "--out -")
    if checksum_only:
        stats = G.stream_checksum(gen, duration, detectors, start_s=start, chunk_samples=chunk_samples, progress=progress)
        click.echo(stats.checksum)
    elif out == "-":
        stats = G.stream_raw(gen, sys.stdout.buffer, duration, detectors, start_s=start, chunk_samples=chunk_samples, progress=progress)
    else:
        stats = G.generate_to_file(
            gen, out_path, duration, detectors, start_s=start, chunk_samples=chunk_samples, overwrite=overwrite, progress=progress, run_config=run_config,
            truth=truth,
        )
    if G.is_root_process():
        where = f" -> {stats.path}" if stats.path else ""
        click.echo(f"{gen.kind}: {stats.summary()}{where}", err=True)
