"""``crab simulate`` (physics Monte Carlo -> TOD file) and ``crab inspect`` (summary, plots)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from crab.core.errors import FileFormatError, InputError
from crab.cli.options import DURATION, DURATION_OR_ZERO, SEED, positive_float, positive_int


def _load_config(path: str | None):
    """A MonteCarloConfig from a JSON file or from the ``config`` of an existing TOD file."""
    from crab.physics.montecarlo_config import MonteCarloConfig

    if path is None:
        return MonteCarloConfig()
    p = Path(path)
    if p.suffix.lower() in (".h5", ".hdf5"):
        from crab.io.tod import read_metadata

        meta, _ = read_metadata(p)
        if not meta.config:
            raise InputError(f"{p} has no Monte Carlo configuration to reuse")
        return MonteCarloConfig.from_dict(meta.config)
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"cannot read configuration {p}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"configuration {p} is not valid JSON: {exc}") from None
    if isinstance(data, dict) and "config" in data and isinstance(data["config"], dict) and "n_detectors" not in data:
        data = data["config"]  # a run record
    if not isinstance(data, dict):
        raise InputError(f"configuration {p} must hold a JSON object")
    return MonteCarloConfig.from_dict(data)


@click.command("simulate")
@click.option("--duration", type=DURATION, default="1800", show_default=True, help="Simulated time: seconds or with a unit (90s, 30min, 2h, 3d, 3y).")
@click.option("--detectors", type=int, default=None, callback=positive_int, help="Detectors on the wafer  [default: 4]")
@click.option("--sampling-rate", type=float, default=None, callback=positive_float, help="Output sampling rate in Hz  [default: 19]")
@click.option("--phi", type=float, default=None, help="Solar modulation potential in GV, 0.4 (minimum) to 1.4 (maximum)  [default: 0.6]")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Random seed, unsigned 64-bit (same seed, same bytes).")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output HDF5 TOD file.")
@click.option("--shield-g-cm2", type=float, default=None, help="Aluminium-equivalent shield areal density in g/cm^2  [default: 2]")
@click.option("--internal-rate", type=float, default=None, callback=positive_float, help="Integration rate in Hz (rounded to a multiple of the sampling rate)  [default: 20000]")
@click.option("--wafer-side-mm", type=float, default=None, callback=positive_float, help="Side of the square wafer in mm  [default: 30]")
@click.option("--no-noise", is_flag=True, help="Leave out the detector noise (glitches only).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="Start from a configuration: a JSON file or an earlier TOD file; options given here override it.")
@click.option("--chunk", type=DURATION, default="300s", show_default=True, help="Time simulated and written per step (memory only; the result does not depend on it).")
@click.option("--overwrite", is_flag=True, help="Replace the output file if it exists.")
@click.option("--no-progress", is_flag=True, help="Do not show the progress bar.")
def simulate(duration, detectors, sampling_rate, phi, seed, out, shield_g_cm2, internal_rate, wafer_side_mm, no_noise, config_path, chunk, overwrite, no_progress):
    """Run the physics Monte Carlo and write TOD (pW) with the truth of every hit.

    Example: crab simulate --duration 1800 --detectors 4 --sampling-rate 19 --phi 0.6 --seed 1 --out mc.h5
    """
    import dataclasses

    from crab.core.paths import check_output_file
    from crab.io.montecarlo_file import simulate_to_file
    from crab.physics.montecarlo import MonteCarloSimulator

    cfg = _load_config(config_path)
    if detectors is not None:
        cfg.n_detectors = detectors
    if sampling_rate is not None:
        cfg.sampling_rate_hz = sampling_rate
    if phi is not None:
        cfg.phi_gv = phi
    if internal_rate is not None:
        cfg.internal_rate_hz = internal_rate
    if shield_g_cm2 is not None:
        cfg.shield = dataclasses.replace(cfg.shield, areal_density_g_cm2=shield_g_cm2)
    if wafer_side_mm is not None:
        cfg.wafer = dataclasses.replace(cfg.wafer, side_mm=wafer_side_mm)
    if no_noise:
        cfg.add_noise = False
    out_path = check_output_file(out, overwrite=overwrite)
    MonteCarloSimulator(cfg, seed)  # validates everything before any output is created
    t0 = time.perf_counter()
    path = simulate_to_file(cfg, duration, seed, out_path, chunk_s=chunk, progress=not no_progress, overwrite=overwrite)
    wall = time.perf_counter() - t0
    from crab.io.tod import read_metadata, read_tod

    meta, n = read_metadata(path)
    ev = read_tod(path, n_samples=0, check_finite=False).events
    counts = ev.count_by_kind() if ev is not None else {}
    click.echo(
        f"wrote {path}: {meta.n_detectors} detectors x {n} samples ({n / meta.sampling_rate_hz:g} s at {meta.sampling_rate_hz:g} Hz), "
        f"{counts.get('direct', 0)} direct and {counts.get('wafer', 0)} wafer hits; "
        f"{wall:.1f} s wall ({n / meta.sampling_rate_hz / max(wall, 1e-9):.0f} simulated s per s)"
    )


def _check_plot_dir(out: Path) -> None:
    """InputError unless the PNG files of ``crab inspect --plot`` can be written in ``out`` (made with its parents)."""
    from crab.core.paths import check_creatable_folder

    check_creatable_folder(out, option="--plot")


@click.command("inspect")
@click.argument("file", type=click.Path(dir_okay=True))
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False), default=None, help="Write PNG plots (TOD stretch with hits, energy spectra) into this folder.")
@click.option("--start", type=DURATION_OR_ZERO, default="0", show_default=True, help="Start of the plotted stretch.")
@click.option("--length", type=DURATION, default="60s", show_default=True, help="Length of the plotted stretch.")
def inspect(file, plot_dir, start, length):
    """Summarise a TOD file: duration, detectors, rate, events by kind; optionally plot it."""
    from crab.validation.inspect import format_summary, summarize_tod_file, write_inspection_plots

    if plot_dir is not None:
        _check_plot_dir(Path(plot_dir))
    summary = summarize_tod_file(file)
    if plot_dir is not None and start >= summary["duration_s"]:
        raise InputError(f"--start {start:g} s is beyond the end of the file ({summary['duration_s']:g} s)")
    if plot_dir is not None:
        Path(plot_dir).mkdir(parents=True, exist_ok=True)  # a folder it may not make fails here, before any output
    click.echo(format_summary(summary))
    if plot_dir is not None:
        for p in write_inspection_plots(file, plot_dir, start_s=start, length_s=length):
            click.echo(f"wrote {p}")
