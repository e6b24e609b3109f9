"""Validation of a conditioned model against Monte Carlo at several solar modulation potentials.

For every reference Monte Carlo file (each made at one ``phi_gv``, recorded
in its configuration), :func:`validate_phi` generates TOD of the same length
and detector count with the model at that ``phi``, and compares, with the
same glitch detector as :func:`crab.validation.validate.validate`:

- the glitch rate per detector-hour (Poisson errors, inflated by the
  dispersion of the per-block counts);
- the amplitude distribution: median amplitude and the ``sqrt(n_eff) x KS``
  statistic of ln(amplitude), with its 2-sigma threshold from random
  re-splits of the reference (as :mod:`crab.validation.distribution_metrics`);
- the rate of coincidences (glitches within the coincidence window on >= 2
  detectors of a wafer) per hour;
- the mean correlation of the TOD of detector pairs of a wafer.

Each ``phi`` is marked *trained* when a training file of the model had that
value, *held out* otherwise: a held-out ``phi`` tests interpolation.  Writes
``phi.json`` (all numbers), ``phi.md`` (table) and ``phi.png`` (each quantity
against ``phi``, Monte Carlo and model, with errors).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from crab import __version__
from crab.core.errors import InputError
from crab.core.paths import check_output_dir
from crab.core.provenance import to_jsonable, write_json
from crab.generation import TodGenerator
from crab.io.tod import read_tod
from crab.validation import metrics as M
from crab.validation.config import ValidationConfig
from crab.validation.distribution_metrics import stat_amplitude
from crab.validation.floor import null_distribution, null_masks
from crab.validation.set_analysis import analyse

#: The file whose presence says that a folder holds a previous phi report (and may be written into).
PHI_REPORT_MARKER = "phi.json"

__all__ = ["PhiPoint", "validate_phi", "trained_phis"]


@dataclass
class PhiPoint:
    """Monte Carlo vs model at one ``phi`` (rates per detector-hour, coincidences per hour)."""

    phi_gv: float
    trained: bool
    reference: str
    duration_s: float
    n_detectors: int
    rate_mc: float
    rate_mc_error: float
    rate_model: float
    rate_model_error: float
    median_amplitude_mc: float
    median_amplitude_model: float
    amplitude_ks_stat: float
    amplitude_ks_threshold: float
    coincidence_rate_mc: float
    coincidence_rate_mc_error: float
    coincidence_rate_model: float
    coincidence_rate_model_error: float
    correlation_mc: float
    correlation_mc_error: float
    correlation_model: float
    correlation_model_error: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate_z(self) -> float:
        return M.rate_zscore(self.rate_mc, self.rate_mc_error, self.rate_model, self.rate_model_error)

    @property
    def coincidence_z(self) -> float:
        return M.rate_zscore(self.coincidence_rate_mc, self.coincidence_rate_mc_error, self.coincidence_rate_model, self.coincidence_rate_model_error)

    def to_dict(self) -> dict[str, Any]:
        d = to_jsonable(self.__dict__)
        d.update(rate_z=self.rate_z, coincidence_z=self.coincidence_z)
        return d


def trained_phis(model) -> list[float]:
    """The ``phi_gv`` values of the model's training files (from ``config.json`` next to ``model.pt``)."""
    path = getattr(model, "path", None)
    if path is None:
        return []
    cfg = Path(path).parent / "config.json" if Path(path).is_file() else Path(path) / "config.json"
    try:
        files = json.loads(cfg.read_text()).get("data_files", [])
    except (OSError, ValueError):
        return []
    return sorted({float(f["cond"]["phi_gv"]) for f in files if "phi_gv" in (f.get("cond") or {})})


def _rate(counts_per_block: np.ndarray, exposure_h: float) -> tuple[float, float]:
    n = float(counts_per_block.sum())
    r, e = M.poisson_rate(n, exposure_h)
    return r, e * np.sqrt(max(1.0, M.dispersion_index(counts_per_block)))


def _summarise(an) -> dict[str, Any]:
    nb = an.n_blocks
    allb = np.ones(nb, bool)
    rate, rate_e = _rate(an.block_counts, an.exposure_det_h(allb))
    cc = np.bincount(an.coinc_block, minlength=nb).astype(float)
    crate, crate_e = _rate(cc, an.hours(allb))
    corr = an.corr[:, 0]
    ok = np.isfinite(corr)
    c_mean = float(np.mean(corr[ok])) if ok.any() else float("nan")
    c_err = float(np.std(corr[ok], ddof=1) / np.sqrt(ok.sum())) if ok.sum() > 1 else float("nan")
    return {"rate": rate, "rate_error": rate_e, "coinc": crate, "coinc_error": crate_e, "corr": c_mean, "corr_error": c_err}


def validate_phi(
    model,
    references: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    duration_factor: float = 1.0,
    allow_extrapolation: bool = False,
    validation_config=None,
    plots: bool = True,
) -> list[PhiPoint]:
    """Compare a phi-conditioned model with Monte Carlo files made at several ``phi``.

    Parameters
    ----------
    model : TrainedModel
        A model conditioned on ``phi_gv`` (``crab train --condition phi``).
    references : sequence of path-like
        ``crab simulate`` files; each records its ``phi_gv``.  Use files the
        model was not trained on (another seed), some at a ``phi`` it never saw.
    out_dir : path-like, optional
        Where ``phi.json``, ``phi.md`` and ``phi.png`` go (nothing written if None): a
        new or empty folder, or one holding a previous ``phi.json``, in an existing folder.
    seed : int
        Generation seed (the same for every ``phi``).
    duration_factor : float
        Generated duration / reference duration (more model TOD shrinks its errors).
    allow_extrapolation : bool
        Accept a reference ``phi`` outside the trained range.
    validation_config : ValidationConfig, optional
        Glitch detector and block length (default: :class:`crab.validation.config.ValidationConfig`).
    plots : bool
        Write ``phi.png``.
    """
    if list(getattr(model, "cond_names", []) or []) != ["phi_gv"]:
        raise InputError(f"the model is conditioned on {list(getattr(model, 'cond_names', []) or [])}, not on ['phi_gv']: train it with --condition phi")
    if not references:
        raise InputError("give at least one reference Monte Carlo file (--reference)")
    if not duration_factor > 0:
        raise InputError(f"duration_factor must be > 0, got {duration_factor}")
    if out_dir is not None:
        check_output_dir(out_dir, overwrite=True, marker=PHI_REPORT_MARKER)
    cfg = validation_config or ValidationConfig()
    fs = float(model.sampling_rate_hz)
    trained = trained_phis(model)
    points: list[PhiPoint] = []
    t0 = time.time()
    for path in references:
        ref = read_tod(path)
        if abs(ref.meta.sampling_rate_hz - fs) > 1e-9 * fs:
            raise InputError(f"{path} is sampled at {ref.meta.sampling_rate_hz:g} Hz but the model at {fs:g} Hz")
        phi = (ref.meta.config or {}).get("phi_gv")
        if phi is None:
            raise InputError(f"{path} does not record phi_gv in its configuration (expected a `crab simulate` file)")
        phi = float(phi)
        n_det, n = ref.tod.shape
        gen = TodGenerator(model, seed, cond={"phi_gv": phi}, allow_extrapolation=allow_extrapolation)
        syn = gen.generate(n_det, 0, int(round(n * duration_factor)))
        names = gen.detector_names(n_det) if gen.source.rows > 1 else list(ref.meta.detectors)  # joint model: its wafers
        ref_an = analyse(ref.tod, fs, list(ref.meta.detectors), cfg, name=f"MC phi={phi:g}")
        syn_an = analyse(syn, fs, names, cfg, scale_sigma=float(np.median(ref_an.sigma)), name=f"model phi={phi:g}")
        thr, _, _ = M.null_threshold(null_distribution(stat_amplitude, ref_an, null_masks(cfg, ref_an.n_blocks)), cfg.n_sigma_target)
        ks, q = stat_amplitude(ref_an, np.ones(ref_an.n_blocks, bool), syn_an, np.ones(syn_an.n_blocks, bool))
        a, b = _summarise(ref_an), _summarise(syn_an)
        points.append(
            PhiPoint(
                phi_gv=phi,
                trained=any(abs(phi - p) < 1e-9 for p in trained),
                reference=str(path),
                duration_s=n / fs,
                n_detectors=n_det,
                rate_mc=a["rate"], rate_mc_error=a["rate_error"], rate_model=b["rate"], rate_model_error=b["rate_error"],
                median_amplitude_mc=q["median_amplitude_reference"], median_amplitude_model=q["median_amplitude_synthetic"],
                amplitude_ks_stat=ks, amplitude_ks_threshold=thr,
                coincidence_rate_mc=a["coinc"], coincidence_rate_mc_error=a["coinc_error"],
                coincidence_rate_model=b["coinc"], coincidence_rate_model_error=b["coinc_error"],
                correlation_mc=a["corr"], correlation_mc_error=a["corr_error"], correlation_model=b["corr"], correlation_model_error=b["corr_error"],
                extra={"n_glitches_mc": len(ref_an.glitches), "n_glitches_model": len(syn_an.glitches), "model_duration_s": syn.shape[1] / fs},
            )
        )
    points.sort(key=lambda p: p.phi_gv)
    if out_dir is not None:
        _write(points, Path(out_dir), model, seed, trained, time.time() - t0, plots)
    return points


def _table(points: list[PhiPoint]) -> str:
    rows = [
        "| phi (GV) | in training | glitch rate MC (/det/h) | model | z | median amplitude MC | model | amplitude KS (2-sigma thr.) | coincidences MC (/h) | model | z | pair correlation MC | model |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        rows.append(
            f"| {p.phi_gv:g} | {'yes' if p.trained else '**held out**'} | {p.rate_mc:.0f} ± {p.rate_mc_error:.0f} | {p.rate_model:.0f} ± {p.rate_model_error:.0f} | {p.rate_z:+.2f} "
            f"| {p.median_amplitude_mc:.3g} | {p.median_amplitude_model:.3g} | {p.amplitude_ks_stat:.2f} ({p.amplitude_ks_threshold:.2f}) "
            f"| {p.coincidence_rate_mc:.0f} ± {p.coincidence_rate_mc_error:.0f} | {p.coincidence_rate_model:.0f} ± {p.coincidence_rate_model_error:.0f} | {p.coincidence_z:+.2f} "
            f"| {p.correlation_mc:.3f} ± {p.correlation_mc_error:.3f} | {p.correlation_model:.3f} ± {p.correlation_model_error:.3f} |"
        )
    return "\n".join(rows)


def _write(points: list[PhiPoint], out: Path, model, seed: int, trained: list[float], seconds: float, plots: bool) -> None:
    out.mkdir(exist_ok=True)
    write_json(out / "phi.json", {"crab_version": __version__, "model": str(getattr(model, "path", None)), "seed": seed, "trained_phi_gv": trained,
                                  "cond_range": model.cond_range, "seconds": seconds, "points": [p.to_dict() for p in points]})
    md = [
        "# CRAB: model vs Monte Carlo against the solar modulation potential",
        "",
        f"Model `{getattr(model, 'path', None)}` (trained on phi = {', '.join(f'{p:g}' for p in trained) or 'unknown'} GV, range {model.cond_range}); "
        f"generation seed {seed}; written by crab {__version__} in {seconds:.1f} s.",
        "",
        "Errors are Poisson, inflated by the dispersion of the per-block counts; *z* is (model - MC) / combined error. "
        "The amplitude statistic is sqrt(n_eff) x KS distance of ln(amplitude); its threshold is the 2-sigma point of random re-splits of the MC.",
        "",
        _table(points),
        "",
    ]
    if plots:
        md += ["![rate, amplitude, coincidences and correlation against phi](phi.png)", ""]
        _plot(points, out / "phi.png")
    tmp = out / ".phi.md.tmp"
    tmp.write_text("\n".join(md))
    tmp.replace(out / "phi.md")


def _plot(points: list[PhiPoint], path: Path) -> None:
    """Plot every quantity against phi, Monte Carlo and model, into ``path`` (PNG)."""
    # matplotlib is imported on use: it is heavy and only the plot needs it
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    phi = np.array([p.phi_gv for p in points])
    held = np.array([not p.trained for p in points])
    panels = [
        ("glitch rate (per detector-hour)", "rate_mc", "rate_mc_error", "rate_model", "rate_model_error"),
        ("median glitch amplitude (TOD units)", "median_amplitude_mc", None, "median_amplitude_model", None),
        ("coincidences (per hour)", "coincidence_rate_mc", "coincidence_rate_mc_error", "coincidence_rate_model", "coincidence_rate_model_error"),
        ("pair correlation of a wafer", "correlation_mc", "correlation_mc_error", "correlation_model", "correlation_model_error"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for ax, (title, a, ae, b, be) in zip(axes, panels):
        for attr, err, color, label, dx in ((a, ae, "k", "Monte Carlo", -0.006), (b, be, "tab:red", "model", 0.006)):
            y = np.array([getattr(p, attr) for p in points])
            e = None if err is None else np.array([getattr(p, err) for p in points])
            ax.errorbar(phi + dx, y, e, fmt="-", color=color, alpha=0.4)
            for mask, mfc, suffix in ((~held, color, ""), (held, "white", " (held-out phi)")):
                if mask.any():
                    ax.errorbar(phi[mask] + dx, y[mask], None if e is None else e[mask], fmt="o", color=color, mfc=mfc, label=label + suffix, capsize=2)
        ax.set_xlabel("phi (GV)")
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name("." + path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
