"""``crab impact``: what the generated cosmic-ray glitches do to LiteBIRD maps and to r (needs crab-tod[litebird])."""

from __future__ import annotations

from pathlib import Path

import click

from crab.cli.options import (
    DURATION,
    DURATION_OR_ZERO,
    SEED,
    positive_float,
    positive_int,
)


@click.command("impact")
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path), help="Generative model: a `crab train` folder or a template model (.json); any method.")
@click.option("--duration", default="30d", show_default=True, type=DURATION, help="Observation time: 2h, 30d ...")
@click.option("--detectors", default=8, show_default=True, type=int, callback=positive_int, help="Detectors: pairs with orthogonal polarisation (0/90, 45/135 deg); even, >= 4.")
@click.option("--nside", default=64, show_default=True, type=int, callback=positive_int, help="HEALPix nside of the maps.")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the glitches and of the white noise of the comparison maps.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder: cl.csv, map_*.fits, spectra.png, impact.json.")
@click.option("--start", default="0", show_default=True, type=DURATION_OR_ZERO, help="Mission time of the first sample.")
@click.option("--chunk", "chunk_s", default="1d", show_default=True, type=DURATION, help="Time per litebird_sim observation (bounds memory).")
@click.option("--channel", default="M1-140", show_default=True, help="IMO channel (litebird_sim's shipped IMO): pixels, band, NET.")
@click.option("--net", "net_uk_sqrt_s", type=float, callback=positive_float, help="NET of one detector (uK_CMB sqrt(s)); default: the channel's in the IMO.")
@click.option("--conversion", type=click.Choice(["noise", "band"]), default="noise", show_default=True, help="pW to K_CMB: noise = the TOD's white noise set to the NET; band = kcmb_per_pw of the channel's band.")
@click.option("--optical-efficiency", default=1.0, show_default=True, type=float, help="Optical efficiency of --conversion band.")
@click.option("--k-per-pw", "conversion_k_per_pw", type=float, callback=positive_float, help="Explicit K_CMB per pW (overrides --conversion).")
@click.option("--wafer-size", "detectors_per_wafer", type=int, callback=positive_int, help="Detectors per wafer (sharing its hits); default: all on one wafer.")
@click.option("--phi", "phi_gv", type=float, callback=positive_float, help="Solar modulation potential (GV) of a phi-conditioned model.")
@click.option("--signal", type=click.Choice(["glitches", "tod"]), default="glitches", show_default=True, help="What is mapped: the generated glitches alone (rendered from their truth), or the whole generated TOD (the model's noise too, white noise subtracted from the spectra).")
@click.option("--deglitch/--no-deglitch", default=True, show_default=True, help="Also map with the samples flagged by CRAB's glitch finder left out.")
@click.option("--threshold-sigma", "deglitch_threshold_sigma", default=5.0, show_default=True, type=float, callback=positive_float, help="Threshold of the glitch finder (robust sigmas).")
@click.option("--destriper", is_flag=True, help="Also run litebird_sim's destriper (all the TOD in memory: short runs).")
@click.option("--baseline", "baseline_length_s", default="60s", show_default=True, type=DURATION, help="Destriper baseline length.")
@click.option("--coordinates", type=click.Choice(["ecliptic", "galactic"]), default="ecliptic", show_default=True, help="Coordinates of the maps.")
@click.option("--ell-min", default=2, show_default=True, type=click.IntRange(0), help="Lowest multipole of the headline and of the r fit.")
@click.option("--ell-max", default=200, show_default=True, type=click.IntRange(1), help="Highest multipole (cut to 3 nside - 1).")
@click.option("--apodisation", "apodisation_deg", default=5.0, show_default=True, type=click.FloatRange(0), help="Mask apodisation (deg); 0: binary mask.")
@click.option("--beam-fwhm", "beam_fwhm_arcmin", default=0.0, show_default=True, type=click.FloatRange(0), help="Gaussian beam deconvolved from the spectra (arcmin); 0: none.")
@click.option("--workers", type=int, callback=positive_int, help="Generator threads (default: CPUs available); does not change the output.")
@click.option("--overwrite", is_flag=True, help="Replace an output folder of a previous crab impact.")
@click.option("--allow-unfinished", is_flag=True, help="Accept the model of a training that did not finish.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def impact(model_path, duration, detectors, nside, seed, out_dir, start, chunk_s, channel, net_uk_sqrt_s, conversion, optical_efficiency, conversion_k_per_pw,
           detectors_per_wafer, phi_gv, signal, deglitch, deglitch_threshold_sigma, destriper, baseline_length_s, coordinates, ell_min, ell_max, apodisation_deg,
           beam_fwhm_arcmin, workers, overwrite, allow_unfinished, no_progress):
    """Scan generated glitch TOD with LiteBIRD's scanning, make maps and spectra, compare BB with r = 0.001.

    Prints one line: the BB power of the residual (the map of the generated glitches alone, or
    with --signal tod the whole TOD's map minus white-noise maps of the same samples) averaged over ell (D_ell) relative to the primordial BB for r = 0.001, and
    the bias on r of a least-squares template fit (no lensing, no foregrounds), binned and
    after deglitching.  See docs/impact.md.

    \b
    Examples:
      crab impact --model crab_run/model --duration 30d --detectors 8 --nside 64 --seed 3 --out impact/
      crab impact --model crab_run/template.json --duration 2d --nside 32 --destriper --out impact_tpl/
    """
    from crab.integrations.impact import ImpactConfig, require_litebird, run_impact

    require_litebird()  # before anything else: one line naming the extra when it is missing
    cfg = ImpactConfig(
        duration_s=duration, n_detectors=detectors, nside=nside, seed=seed, start_s=start, chunk_s=chunk_s, channel=channel, net_uk_sqrt_s=net_uk_sqrt_s,
        conversion=conversion, optical_efficiency=optical_efficiency, conversion_k_per_pw=conversion_k_per_pw, detectors_per_wafer=detectors_per_wafer,
        phi_gv=phi_gv, signal=signal, deglitch=deglitch, deglitch_threshold_sigma=deglitch_threshold_sigma, destriper=destriper, baseline_length_s=baseline_length_s,
        coordinates=coordinates, ell_min=ell_min, ell_max=ell_max, apodisation_deg=apodisation_deg, beam_fwhm_arcmin=beam_fwhm_arcmin,
    )
    res = run_impact(model_path, cfg, out_dir, overwrite=overwrite, n_workers=workers, progress=False if no_progress else None, allow_unfinished=allow_unfinished)
    click.echo(res.headline())
    t = res.info["timings_s"]
    click.echo(f"outputs: {res.out_dir} (cl.csv, map_*.fits, spectra.png, impact.json); {t['total']:.1f} s", err=True)
