"""``crab export``: make a CRAB TOD file readable by litebird_sim (see :mod:`crab.io.litebird_layout`)."""

from __future__ import annotations

from pathlib import Path

import click

from crab.cli.options import positive_float


def _finite_nonzero(ctx, param, value):
    if value is not None and not (value == value and abs(value) != float("inf") and value != 0):
        raise click.BadParameter(f"must be a finite non-zero number, got {value}")
    return value


@click.command("export")
@click.argument("input_file", metavar="INPUT", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("output_file", metavar="[OUTPUT]", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--in-place", is_flag=True, help="Add the litebird_sim layout to INPUT itself (attributes only: no copy, instant even for huge or MPI-assembled files).")
@click.option("--conversion-factor", type=float, default=1.0, show_default=True, callback=_finite_nonzero, help="Output units per input unit (e.g. K_CMB per pW); needs --units when not 1.")
@click.option("--units", type=click.Choice(["K_CMB", "mK_CMB", "uK_CMB", "K_RJ", "mK_RJ", "uK_RJ", "MJy_over_sr", "Jy_over_sr", "ADU", "Pure"]), default=None, help="litebird_sim unit of the output.  [default: the input's, shown as ADU to litebird_sim for pW]")
@click.option("--bandcenter-ghz", type=float, default=140.0, show_default=True, callback=positive_float, help="Band centre written in the detector records (litebird_sim requires > 0).")
@click.option("--bandwidth-ghz", type=float, default=42.0, show_default=True, callback=positive_float, help="Band width written in the detector records.")
@click.option("--overwrite/--no-overwrite", default=False, show_default=True, help="Replace an existing OUTPUT.")
def export(input_file: Path, output_file: Path | None, in_place: bool, conversion_factor: float, units: str | None, bandcenter_ghz: float, bandwidth_ghz: float, overwrite: bool) -> None:
    """Write INPUT (a CRAB TOD file) as OUTPUT, readable by litebird_sim.read_list_of_observations.

    The file stays a CRAB TOD file. CRAB TOD carry no pointing: identity
    quaternions stand in for the ones litebird_sim's reader requires.

    \b
    Examples:
      crab export gen.h5 gen_lbs.h5
      crab export gen.h5 gen_kcmb.h5 --conversion-factor 9.3 --units K_CMB
      crab export big_mpi_run.h5 --in-place
    """
    from crab.core.errors import InputError
    from crab.core.paths import check_output_file
    from crab.io.litebird_layout import export_tod, make_litebird_readable

    layout = {"bandcenter_ghz": bandcenter_ghz, "bandwidth_ghz": bandwidth_ghz}
    if in_place:
        if output_file is not None:
            raise InputError("give either OUTPUT or --in-place, not both")
        if conversion_factor != 1.0:
            raise InputError("--in-place does not change the samples: a --conversion-factor needs an OUTPUT file")
        make_litebird_readable(input_file, units=units, **layout)
        click.echo(f"{input_file}: litebird_sim layout added")
        return
    if output_file is None:
        raise InputError("missing OUTPUT file (or pass --in-place to modify INPUT)")
    if input_file.exists() and (output_file.resolve() == input_file.resolve() or (output_file.exists() and output_file.samefile(input_file))):
        raise InputError(f"OUTPUT {output_file} is INPUT: to add the litebird_sim layout to INPUT itself, pass --in-place instead of an OUTPUT")
    check_output_file(output_file, overwrite=overwrite)
    export_tod(input_file, output_file, conversion_factor=conversion_factor, units=units, overwrite=overwrite, **layout)
    click.echo(f"wrote {output_file}")
