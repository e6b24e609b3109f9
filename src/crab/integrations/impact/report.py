"""The outputs of ``crab impact``: ``cl.csv``, ``map_*.fits``, ``spectra.png``, ``impact.json``.

The folder is written under a temporary name and renamed into place when
complete (as a validation report), so a stopped run leaves nothing under the
final name; ``--overwrite`` replaces only a folder holding a previous
``crab impact`` output and nothing else (:func:`crab.core.paths.check_output_dir`).

``cl.csv``: one row per multipole ``ell`` = 0 .. 3 nside - 1, C_ell in
uK_CMB^2: ``TT, EE, BB, TE, EB, TB`` of the glitch maps (binned), then
``TT_noise, EE_noise, BB_noise`` of the white-noise maps, the same with
``_deglitched`` (glitch maps with the flagged samples left out) and
``_noise_deglitched``, ``*_destriped`` with the destriper, and the shipped
``BB_r0p001`` (primordial, r = 0.001) and ``BB_lensing``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from crab.core.paths import check_free_space, check_output_dir, write_folder_atomically
from crab.core.provenance import run_record, write_json
from crab.integrations.impact.config import ImpactConfig
from crab.integrations.impact.spectra import SPECTRA, d_ell

#: The run record: its presence says that a folder holds a ``crab impact`` output.
RECORD = "impact.json"
#: What an output folder holds (a folder with anything else is never replaced).
OUTPUT_FILES = (RECORD, "cl.csv", "map_*.fits", "hits.fits", "mask.fits", "spectra.png")
#: Suffix of each map's spectra in ``cl.csv``, and which spectra are written.
_COLUMNS = {
    "cr": ("", SPECTRA),
    "noise": ("_noise", ("TT", "EE", "BB")),
    "cr_deglitched": ("_deglitched", ("TT", "EE", "BB")),
    "noise_deglitched": ("_noise_deglitched", ("TT", "EE", "BB")),
    "cr_destriped": ("_destriped", ("TT", "EE", "BB")),
}


def check_out_dir(out_dir: str | os.PathLike, *, overwrite: bool) -> Path:
    """The output folder, checked before any work (:func:`crab.core.paths.check_output_dir`)."""
    return check_output_dir(out_dir, overwrite=overwrite, marker=RECORD, owned=OUTPUT_FILES)


def check_disk(out: Path, cfg: ImpactConfig) -> None:
    """:class:`InputError` if the outputs (twice: the old folder stays until the new one is complete) do not fit."""
    npix = 12 * cfg.nside**2
    n_bytes = 2 * (8 * npix * 3 * 6 + 8 * npix * 2 + 200 * (cfg.lmax + 1) * 25 + (4 << 20))
    check_free_space(out.parent if str(out.parent) else Path("."), n_bytes, what=f"the maps and spectra of crab impact in {out}")


def cl_table(result) -> tuple[list[str], np.ndarray]:
    """Column names and rows of ``cl.csv``."""
    lmax = result.config.lmax
    names, cols = ["ell"], [np.arange(lmax + 1, dtype=np.float64)]
    for key, (suffix, which) in _COLUMNS.items():
        if key in result.spectra:
            for s in which:
                names.append(s + suffix)
                cols.append(result.spectra[key][s])
    names += ["BB_r0p001", "BB_lensing"]
    cols += [result.reference.bb_primordial(0.001, lmax), result.reference.bb_lensing[: lmax + 1]]
    return names, np.column_stack(cols)


def write_outputs(result, out: Path) -> Path:
    """Write every output of ``result`` into ``out`` atomically (temporary folder, then rename)."""
    write_folder_atomically(out, lambda tmp: _write_all(result, tmp))
    return out


def _write_all(result, folder: Path) -> None:
    import healpy as hp  # noqa: PLC0415

    cfg = result.config
    names, rows = cl_table(result)
    lines = [",".join(names)] + [",".join([str(int(r[0]))] + [f"{v:.8e}" for v in r[1:]]) for r in rows]
    (folder / "cl.csv").write_text("\n".join(lines) + "\n")
    coord = "G" if cfg.coordinates == "galactic" else "E"
    for name, m in result.maps.items():
        hp.write_map(str(folder / f"map_{name}.fits"), m, dtype=np.float64, coord=coord, column_names=["I", "Q", "U"], column_units="K_CMB", overwrite=True)
    hp.write_map(str(folder / "hits.fits"), result.hits.astype(np.float64), dtype=np.float64, coord=coord, column_names=["HITS"], overwrite=True)
    hp.write_map(str(folder / "mask.fits"), result.mask, dtype=np.float64, coord=coord, column_names=["MASK"], overwrite=True)
    plot_spectra(result, folder / "spectra.png")
    record = run_record(
        cfg.to_dict(),
        cfg.seed,
        command_name="crab impact",
        summary=result.summary,
        headline=result.headline(),
        info=result.info,
        outputs=sorted(p.name for p in folder.iterdir()) + [RECORD],
        cl_columns=names,
    )
    write_json(folder / RECORD, record)


def plot_spectra(result, path: Path) -> Path:
    """BB and EE (D_ell) of the glitch maps beside the white-noise maps and the primordial BB for r = 0.001."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    cfg, cls = result.config, result.spectra
    ell = np.arange(cfg.lmax + 1)
    sel = ell >= 2
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=False)
    styles = {
        "cr": ("glitches (binned)", "C3", "-"),
        "cr_deglitched": ("glitches, flagged samples dropped", "C1", "-"),
        "cr_destriped": ("glitches (destriped)", "C4", "-"),
        "noise": ("white noise only", "C0", "--"),
        "noise_deglitched": ("white noise, same flags", "C9", ":"),
    }
    for ax, s in zip(axes, ("BB", "EE")):
        for key, (label, color, ls) in styles.items():
            if key in cls:
                ax.loglog(ell[sel], np.abs(d_ell(cls[key][s]))[sel], color=color, ls=ls, lw=1.2, label=label)
        if s == "BB":
            ax.loglog(ell[sel], d_ell(result.reference.bb_primordial(0.001, cfg.lmax))[sel], color="k", lw=2, label="primordial BB, r = 0.001 (CAMB)")
            ax.loglog(ell[sel], d_ell(result.reference.bb_lensing[: cfg.lmax + 1])[sel], color="0.5", lw=1, ls="-.", label="lensing BB (context)")
        lo, hi = result.summary["ell_range"]
        ax.axvspan(lo, hi, color="0.92", zorder=0)
        ax.set_xlabel(r"multipole $\ell$")
        ax.set_ylabel(rf"$D_\ell^{{{s}}} = \ell(\ell+1)C_\ell/2\pi$  [$\mu K_{{CMB}}^2$]")
        ax.set_title(f"{s}: {cfg.n_detectors} detectors x {cfg.duration_s / 86400:.3g} d, nside {cfg.nside}, f_sky {result.summary['fsky']:.2f}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
