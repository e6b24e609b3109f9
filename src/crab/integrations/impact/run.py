"""The chain of ``crab impact``: glitch TOD -> scanning -> maps -> spectra -> bias on r.

:func:`run_impact` streams the mission in time chunks (one litebird_sim
``Observation`` per chunk, :class:`crab.integrations.impact.scanning.Scan`).
For each chunk it

1. adds the generator's TOD to the observation with the litebird_sim bridge
   (:func:`crab.integrations.litebird.apply_cosmic_rays_to_observations`),
   converted to K_CMB (:func:`conversion`);
2. draws white noise at the TOD's own white-noise level
   (:func:`crab.integrations.impact.timelines.white_noise`) and, if asked, flags
   the glitches the threshold finder sees
   (:func:`crab.integrations.impact.timelines.glitch_flags`);
3. computes each pair's pointing once and adds every detector's samples to the
   binned map-maker's normal equations
   (:class:`crab.integrations.impact.mapmaking.BinnedAccumulator`): one set for
   all samples, one for the unflagged samples.

Memory is that of one chunk, whatever the duration (the destriper option
excepted: it needs every chunk's TOD).  Then the maps are solved, the spectra
computed on the common observed sky (:mod:`crab.integrations.impact.spectra`)
and everything written (:mod:`crab.integrations.impact.report`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crab.core import interrupt
from crab.core.errors import InputError
from crab.core.progress import bar
from crab.core.resources import check_memory
from crab.integrations.impact import focalplane, spectra, timelines
from crab.integrations.impact.config import ImpactConfig
from crab.integrations.impact.mapmaking import UNSEEN, BinnedAccumulator, destripe
from crab.integrations.impact.reference import ReferenceSpectra, load_reference
from crab.integrations.impact.scanning import Scan

#: Length of the TOD whose white-noise level sets the conversion and the comparison noise (s).
CALIBRATION_S = 3600.0
#: Bytes per sample of the destriper (TOD, pixel index, angle, weights and its buffers).
DESTRIPER_BYTES_PER_SAMPLE = 20


def require_litebird():
    """litebird_sim (and healpy), or an :class:`InputError` naming the extra to install."""
    try:
        import healpy  # noqa: F401, PLC0415
        import litebird_sim as lbs  # noqa: PLC0415
    except ImportError as exc:
        raise InputError(f"crab impact needs litebird_sim and healpy ({exc.name or 'litebird_sim'} is missing): install crab-tod[litebird]") from None
    return lbs


@dataclass
class ImpactResult:
    """What :func:`run_impact` computed.

    Attributes
    ----------
    config : ImpactConfig
    maps : dict of str to ndarray (3, npix)
        I, Q, U in K_CMB (``UNSEEN`` where unobserved): ``cr`` (the glitch TOD, binned),
        ``noise`` (white noise only), ``cr_deglitched`` / ``noise_deglitched`` (flagged
        samples left out), ``cr_destriped`` (litebird_sim's destriper).
    hits : ndarray (npix,)
        Samples per pixel (all detectors).
    mask : ndarray (npix,)
        Weights of the spectra (see :mod:`crab.integrations.impact.spectra`).
    spectra : dict of str to dict of str to ndarray
        For each map, TT, EE, BB, TE, EB, TB (uK_CMB^2, ell = 0 .. lmax).
    reference : ReferenceSpectra
    summary : dict
        The headline numbers (:meth:`headline`).
    info : dict
        Conversion, noise, detectors, scanning, flags, timings.
    accumulators : dict of str to BinnedAccumulator
        The normal equations (``binned``, ``deglitched``): pixel matrices and their inverses
        (the white-noise covariance of a pixel is ``sigma^2 w`` times the inverse).
    out_dir : Path, optional
    """

    config: ImpactConfig
    maps: dict[str, np.ndarray]
    hits: np.ndarray
    mask: np.ndarray
    spectra: dict[str, dict[str, np.ndarray]]
    reference: ReferenceSpectra
    summary: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    accumulators: dict[str, BinnedAccumulator] = field(default_factory=dict)
    out_dir: Path | None = None

    @property
    def ell(self) -> np.ndarray:
        return np.arange(self.config.lmax + 1)

    def headline(self) -> str:
        """The one line ``crab impact`` prints."""
        s, c = self.summary, self.config
        lo, hi = s["ell_range"]

        def part(key: str) -> str:
            v = s[key]
            return f"{v['bb_ratio']:.3g}, r bias {v['r_bias']:.3g} +- {v['r_bias_sigma']:.2g}"

        degl = f"; deglitched ({100 * s['flagged_fraction']:.2g} % of samples flagged): {part('deglitched')}" if "deglitched" in s else ""
        return (
            f"impact: CR residual BB / BB(r=0.001), mean D_ell over ell {lo}-{hi}: {part('binned')}{degl} "
            f"[{c.n_detectors} det x {c.duration_s / 86400:.3g} d, nside {c.nside}, f_sky {s['fsky']:.2f}, "
            f"{s['conversion_k_per_pw']:.3g} K_CMB/pW ({s['conversion']}), "
            + ("the glitches alone (truth), " if c.signal == "glitches" else f"the whole TOD, white noise at {s['noise_net_uk_sqrt_s']:.3g} uK sqrt(s) subtracted, ")
            + "no lensing, no foregrounds]"
        )


def run_impact(
    model: Any,
    config: ImpactConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    n_workers: int | None = None,
    progress: bool | None = None,
    allow_unfinished: bool = False,
) -> ImpactResult:
    """Run the chain (see the module docstring) and write its outputs to ``out_dir``.

    Parameters
    ----------
    model : path-like, loaded model or generator
        A stored model of any generative method (``crab train``'s folder, a template
        ``.json``), a loaded one, or a slice-exact generator carrying the same seed
        (:func:`crab.integrations.litebird.make_source`).
    config : ImpactConfig
    out_dir : path-like, optional
        Folder of the outputs (``cl.csv``, ``map_*.fits``, ``spectra.png``, ``impact.json``);
        None writes nothing.
    overwrite : bool
        Replace a folder holding a previous ``crab impact`` output.
    n_workers : int, optional
        Generator threads (default: the CPUs available); never changes the result.
    progress : bool, optional
        Progress bar (default: when stderr is a terminal; ``CRAB_PROGRESS``).
    allow_unfinished : bool
        Accept the model of an unfinished training.
    """
    cfg = config or ImpactConfig()
    lbs = require_litebird()
    t_start = time.perf_counter()
    out = None
    if out_dir is not None:
        from crab.integrations.impact.report import check_out_dir  # noqa: PLC0415

        out = check_out_dir(out_dir, overwrite=overwrite)
    source, fs, model_info = _source(model, cfg, n_workers, allow_unfinished)
    imo = focalplane.load_imo(lbs)
    channel, channel_obj = focalplane.channel_info(lbs, imo, cfg)
    net = float(cfg.net_uk_sqrt_s or channel.net_uk_sqrt_s)
    dets = focalplane.make_detectors(lbs, imo, channel_obj, channel, cfg, fs, net)
    scan = Scan(lbs, imo, focalplane.instrument(lbs, imo, cfg), dets, cfg, fs)
    _check_memory(scan, cfg, source, len(dets))
    if out is not None:
        from crab.integrations.impact.report import check_disk  # noqa: PLC0415

        check_disk(out, cfg)
    timings: dict[str, float] = {"setup": time.perf_counter() - t_start}
    cal = conversion(lbs, scan, source, cfg, channel, net)
    timings["calibration"] = time.perf_counter() - t_start - timings["setup"]
    acc, acc_flagged, destriper_obs, flagged, n_total = _accumulate(lbs, scan, source, cfg, cal, net, timings, progress)
    maps = {name: acc.solve(name) for name in ("cr", "noise")}
    seen = acc.condition_number() < cfg.mask_cond_max
    if acc_flagged is not None:
        maps.update({f"{name}_deglitched": acc_flagged.solve(name) for name in ("cr", "noise")})
        seen &= acc_flagged.condition_number() < cfg.mask_cond_max
    info: dict[str, Any] = {}
    if destriper_obs is not None:
        t = time.perf_counter()
        maps["cr_destriped"], info["destriper"] = destripe(lbs, destriper_obs, cfg.nside, scan.coordinate_system(), round(cfg.baseline_length_s * fs))
        seen &= maps["cr_destriped"][0] != UNSEEN
        timings["destriper"] = time.perf_counter() - t
        del destriper_obs
    t = time.perf_counter()
    mask = spectra.analysis_mask(seen, cfg.apodisation_deg)
    cls = {name: spectra.map_spectra(m, mask, cfg.lmax, cfg.beam_fwhm_arcmin) for name, m in maps.items()}
    ref = load_reference()
    summary = _summary(cls, ref, cfg, mask, cal, flagged / max(n_total, 1) if acc_flagged is not None else None)
    timings["spectra"] = time.perf_counter() - t
    info.update(
        model=model_info,
        channel=channel.__dict__,
        detectors=[{"name": d.name, "wafer": d.wafer, "pixel": d.pixel, "pol_angle_deg": float(np.degrees(d.pol_angle_rad)), "net_uk_sqrt_s": net} for d in dets],
        sampling_rate_hz=fs,
        scan=scan.describe(),
        calibration=cal,
        mask={"fsky": summary["fsky"], "unmasked_fraction": float(np.mean(seen)), "observed_fraction": float(np.mean(acc.seen())), "cond_max": cfg.mask_cond_max, "apodisation_deg": cfg.apodisation_deg},
        samples=n_total,
        flagged_samples=int(flagged) if acc_flagged is not None else None,
        cl_units="uK_CMB^2",
        map_units="K_CMB",
        reference=ref.source,
    )
    accs = {"binned": acc} if acc_flagged is None else {"binned": acc, "deglitched": acc_flagged}
    result = ImpactResult(cfg, maps, acc.hits, mask, cls, ref, summary, info, accs)
    timings["total_before_writing"] = time.perf_counter() - t_start
    info["timings_s"] = timings
    if out is not None:
        from crab.integrations.impact.report import write_outputs  # noqa: PLC0415

        t = time.perf_counter()
        write_outputs(result, out)
        timings["writing"] = time.perf_counter() - t
        result.out_dir = out
    timings["total"] = time.perf_counter() - t_start
    return result


def _source(model: Any, cfg: ImpactConfig, n_workers: int | None, allow_unfinished: bool) -> tuple[Any, float, dict[str, Any]]:
    """The slice-exact generator of the run, its sampling rate and a description."""
    from crab.integrations.litebird import make_source  # noqa: PLC0415

    path = None
    if isinstance(model, (str, os.PathLike)):
        from crab.models.registry import load_generation_model  # noqa: PLC0415 - torch only for a GAN

        path = str(model)
        model = load_generation_model(model, allow_unfinished=allow_unfinished)
    fs = getattr(model, "sampling_rate_hz", getattr(model, "output_rate_hz", None))
    if fs is None:
        raise InputError(f"cannot tell the sampling rate of a {type(model).__name__}: give a model or a generator with sampling_rate_hz")
    cond = None if cfg.phi_gv is None else {"phi_gv": float(cfg.phi_gv)}
    source = make_source(model, cfg.seed, float(fs), n_workers=n_workers, cond=cond)
    desc = source.describe() if hasattr(source, "describe") else {"generator": type(source).__name__}
    return source, float(fs), {"path": path, "kind": getattr(source, "kind", type(source).__name__), "generation": desc}


def conversion(lbs: Any, scan: Scan, source: Any, cfg: ImpactConfig, channel: focalplane.Channel, net_uk_sqrt_s: float) -> dict[str, Any]:
    """K_CMB per pW and the white-noise level of the comparison maps (see :class:`ImpactConfig`).

    The white-noise level ``sigma_pw`` of the generated TOD is measured on its first
    :data:`CALIBRATION_S` (the run's own detectors and samples, in pW); the comparison
    maps' white noise is ``sigma_pw`` times the conversion (per sample, K_CMB).
    """
    from crab.integrations.litebird import (  # noqa: PLC0415
        CosmicRayParams,
        apply_cosmic_rays_to_observations,
        kcmb_per_pw,
    )

    fs = scan.sampling_rate_hz
    n_cal = max(2, min(scan.n_samples, round(CALIBRATION_S * fs)))
    obs = scan.observation(scan.first_sample, n_cal)
    apply_cosmic_rays_to_observations([obs], source, params=CosmicRayParams(conversion_factor=1.0), user_seed=cfg.seed)
    sigma_pw = timelines.white_level(obs.tod)
    band = kcmb_per_pw(channel.bandcenter_ghz, channel.bandwidth_ghz, 1.0)
    if cfg.conversion_k_per_pw is not None:
        factor, how = float(cfg.conversion_k_per_pw), "explicit"
    elif cfg.conversion == "band":
        factor, how = band / cfg.optical_efficiency, f"band, optical efficiency {cfg.optical_efficiency:g}"
    else:
        if not sigma_pw > 0:
            raise InputError("the generated TOD has no white noise to match to the NET: use conversion 'band' or an explicit K_CMB per pW")
        factor, how = net_uk_sqrt_s * 1e-6 * np.sqrt(fs) / sigma_pw, "noise-matched"
    sigma_k = sigma_pw * factor
    return {
        "conversion": how,
        "conversion_k_per_pw": float(factor),
        "white_sigma_pw": float(sigma_pw),
        "noise_sigma_k": float(sigma_k),
        "noise_net_uk_sqrt_s": float(sigma_k * 1e6 / np.sqrt(fs)),
        "implied_optical_efficiency": float(band / factor) if factor > 0 else None,
        "band_k_per_pw_eta1": float(band),
        "calibration_samples": int(n_cal),
    }


def _check_memory(scan: Scan, cfg: ImpactConfig, source: Any, n_det: int) -> None:
    """:class:`InputError` if a chunk (or, with the destriper, the whole TOD) does not fit in memory."""
    n = min(scan.chunk_samples, scan.n_samples)
    per_chunk = n * (n_det * 21 + 160)  # TOD f32, noise f64, flags, glitch finder f64 copies; pointing, pixels, bincount columns
    plan = getattr(source, "plan_memory_bytes", None)
    gen = plan(n_det, n, 1 << 20) if callable(plan) else 12 * n_det * (1 << 20)
    maps = 2 * 12 * cfg.nside**2 * 8 * 30
    need = per_chunk + gen + maps
    what = f"crab impact with chunks of {cfg.chunk_s:g} s x {n_det} detectors"
    remedy = "lower chunk_s (--chunk)"
    if cfg.destriper:
        need += scan.n_samples * n_det * DESTRIPER_BYTES_PER_SAMPLE
        what += " and the destriper on all the TOD"
        remedy = "drop the destriper or make a shorter run"
    check_memory(need, what=what, remedy=remedy)


def _accumulate(lbs: Any, scan: Scan, source: Any, cfg: ImpactConfig, cal: dict[str, Any], net: float, timings: dict[str, float], progress: bool | None):
    """The chunk loop: normal equations of every map, the destriper's observations, the flag count."""
    from ducc0.healpix import Healpix_Base  # noqa: PLC0415 - installed with litebird_sim

    from crab.integrations.litebird import (  # noqa: PLC0415
        CosmicRayParams,
        apply_cosmic_rays_to_observations,
    )

    fs = scan.sampling_rate_hz
    hpx = Healpix_Base(cfg.nside, "RING")
    names = [d.name for d in scan.detectors]
    angles = np.array([d.pol_angle_rad for d in scan.detectors])
    weight = 1.0 / (fs * net**2)  # litebird_sim's: samples weighted by 1 / (f_s NET^2)
    params = CosmicRayParams(conversion_factor=cal["conversion_k_per_pw"])
    acc = BinnedAccumulator(cfg.nside, ["cr", "noise"])
    acc_flagged = BinnedAccumulator(cfg.nside, ["cr", "noise"]) if cfg.deglitch else None
    kept: list | None = [] if cfg.destriper else None
    flagged = n_total = 0
    for key in ("generation", "noise", "deglitch", "pointing", "binning"):
        timings.setdefault(key, 0.0)
    with bar(total=scan.n_chunks, desc="impact", unit="chunk", disable=None if progress is None else not progress) as pb:
        for first, n in scan.chunks():
            t = time.perf_counter()
            obs = scan.observation(first, n)
            if cfg.signal == "tod":
                apply_cosmic_rays_to_observations([obs], source, params=params, user_seed=cfg.seed)
            else:
                obs.tod[:] = _glitch_tod(obs, source, names, params, cal["conversion_k_per_pw"])
            timings["generation"] += time.perf_counter() - t
            t = time.perf_counter()
            noise = timelines.white_noise(cfg.seed, names, first, n, cal["noise_sigma_k"])
            timings["noise"] += time.perf_counter() - t
            t = time.perf_counter()
            # the finder sees what a detector would: the glitches alone get the white noise of the comparison maps
            seen_tod = obs.tod if cfg.signal == "tod" else obs.tod + noise
            flags = timelines.glitch_flags(seen_tod, fs, cfg.deglitch_threshold_sigma) if acc_flagged is not None else None
            del seen_tod
            timings["deglitch"] += time.perf_counter() - t
            for p in range(cfg.n_pairs):
                t = time.perf_counter()
                pix, psi = scan.pair_pointing(obs, p, hpx)
                timings["pointing"] += time.perf_counter() - t
                t = time.perf_counter()
                for k in (2 * p, 2 * p + 1):
                    tods = {"cr": obs.tod[k], "noise": noise[k]}
                    acc.add(pix, psi + angles[k], weight, tods)
                    if acc_flagged is not None:
                        acc_flagged.add(pix, psi + angles[k], weight, tods, keep=~flags[k])
                timings["binning"] += time.perf_counter() - t
            n_total += n * len(names)
            if flags is not None:
                flagged += int(flags.sum())
            if kept is not None:
                kept.append(obs)
            del obs, noise, flags
            interrupt.check()
            pb.update(1)
    return acc, acc_flagged, kept, flagged, n_total


def _glitch_tod(obs: Any, source: Any, names: list[str], params: Any, k_per_pw: float) -> np.ndarray:
    """The glitches the generator placed on the observation's detectors and samples (K_CMB), rendered from
    their truth rows: the same hits as the whole TOD that the bridge would add, without the model's noise."""
    from crab.generation.truth import glitch_signal  # noqa: PLC0415
    from crab.integrations.injection import assign_wafers, detector_keys  # noqa: PLC0415
    from crab.integrations.litebird import observation_wafers, observation_start_sample  # noqa: PLC0415

    keys = detector_keys(names)
    assign_wafers(source, keys, observation_wafers(obs, names, params))
    sig = glitch_signal(source, keys, observation_start_sample(obs), obs.tod.shape[1])
    if sig is None:
        raise InputError("this model's method does not list its glitches (a joint-detector GAN): use signal 'tod' (--signal tod)")
    return sig * k_per_pw


def _summary(cls: dict[str, dict[str, np.ndarray]], ref: ReferenceSpectra, cfg: ImpactConfig, mask: np.ndarray, cal: dict[str, Any], flagged_fraction: float | None) -> dict[str, Any]:
    """Headline numbers: residual BB (glitch map minus white-noise map) against r = 0.001, and the r fit."""
    lo, hi = cfg.ell_range
    fsky = float(np.mean(mask**2))
    bb_r = ref.bb_primordial(0.001, cfg.lmax)
    template = ref.bb_primordial(1.0, cfg.lmax)
    out: dict[str, Any] = {
        "ell_range": [lo, hi],
        "fsky": fsky,
        "conversion": cal["conversion"],
        "conversion_k_per_pw": cal["conversion_k_per_pw"],
        "noise_net_uk_sqrt_s": cal["noise_net_uk_sqrt_s"],
        "signal": cfg.signal,
        "definition": ("residual C_ell^BB = BB(map of the whole generated TOD) - BB(white-noise map of the same samples); " if cfg.signal == "tod"
                       else "residual C_ell^BB = BB(map of the generated glitches alone, rendered from their truth rows); ")
        +
        "bb_ratio = mean D_ell^res / mean D_ell^BB(r=0.001) over ell_range; r_bias: least squares on the r=1 tensor template, weights 2l+1",
    }
    pairs = [("binned", "cr", "noise")]
    if "cr_deglitched" in cls:
        pairs.append(("deglitched", "cr_deglitched", "noise_deglitched"))
        out["flagged_fraction"] = float(flagged_fraction or 0.0)
    for label, m, n in pairs:
        res = cls[m]["BB"] - cls[n]["BB"] if cfg.signal == "tod" else cls[m]["BB"]
        var = spectra.gaussian_variance([cls[m]["BB"], cls[n]["BB"]], fsky)
        r, sr = spectra.fit_r(res, template, (lo, hi), var)
        out[label] = {
            "bb_ratio": spectra.band_ratio(res, bb_r, (lo, hi)),
            "bb_ratio_map": spectra.band_ratio(cls[m]["BB"], bb_r, (lo, hi)),
            "bb_ratio_noise": spectra.band_ratio(cls[n]["BB"], bb_r, (lo, hi)),
            "mean_cl_bb_residual_uk2": float(np.mean(res[lo : hi + 1])),
            "r_bias": r,
            "r_bias_sigma": sr,
        }
    if "cr_destriped" in cls:
        res = cls["cr_destriped"]["BB"] - (cls["noise"]["BB"] if cfg.signal == "tod" else 0.0)
        out["destriped"] = {"bb_ratio": spectra.band_ratio(res, bb_r, (lo, hi)), "r_bias": spectra.fit_r(res, template, (lo, hi))[0]}
    return out
