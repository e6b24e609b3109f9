"""The rate metrics: glitch rate, power-law slope of the amplitudes, coincidence rate.

Compared by a z-score with Poisson (or maximum-likelihood) errors, inflated
where the reference shows more scatter than they allow (a wafer hit seen by
several detectors at once): rates by ``sqrt(dispersion index)`` of the
counts in the reference's blocks, the slope by :func:`slope_error_inflation`.
"""

from __future__ import annotations

import numpy as np

from crab.validation import metrics as M
from crab.validation.builder import MetricBuilder
from crab.validation.config import ValidationConfig
from crab.validation.floor import ReferenceSplits
from crab.validation.results import MetricResult
from crab.validation.set_analysis import SetAnalysis, glitches_in_blocks


def slope_cut(ref: SetAnalysis, cfg: ValidationConfig) -> float:
    """The amplitude (TOD units) above which the power-law slope is fitted: ``slope_cut_sigma`` median reference noise sigmas."""
    return cfg.slope_cut_sigma * float(np.median(ref.sigma))


def slope_error_inflation(ref: SetAnalysis, splits: ReferenceSplits, cfg: ValidationConfig) -> float:
    """Factor (>= 1) on the maximum-likelihood errors of the slope, for correlated amplitudes.

    ``sqrt(var(alpha_A - alpha_B) / mean(sigma_A^2 + sigma_B^2))`` over the
    random re-splits of the reference (1 with fewer than three usable re-splits).
    """
    a_cut = slope_cut(ref, cfg)

    def slope(m: np.ndarray) -> tuple[float, float, int]:
        return M.powerlaw_slope_mle(ref.glitches.amplitude[glitches_in_blocks(ref, m)], a_cut)

    diffs, var_ml = [], []
    for m in splits.null_masks:
        s1, e1, _ = slope(m)
        s2, e2, _ = slope(~m)
        if np.isfinite(s1) and np.isfinite(s2):
            diffs.append(s1 - s2)
            var_ml.append(e1**2 + e2**2)
    ratio = float(np.var(diffs, ddof=1) / np.mean(var_ml)) if len(diffs) > 2 else 1.0
    return float(np.sqrt(max(1.0, ratio)))


def rate_metrics(b: MetricBuilder, ref: SetAnalysis, syn: SetAnalysis, splits: ReferenceSplits, slope_inflation: float) -> dict[str, MetricResult]:
    """Glitch rate, power-law slope of the amplitudes and (with wafer pairs) coincidence rate of ``syn`` vs ``ref``.

    ``slope_inflation`` is :func:`slope_error_inflation` of the reference.
    """
    cfg = b.cfg
    half_a, half_b = splits.half_a, splits.half_b
    out = {}
    all_ref = splits.everything
    all_syn = np.ones(syn.n_blocks, bool)
    d_ref = max(1.0, M.dispersion_index(ref.block_counts))
    d_syn = max(1.0, M.dispersion_index(syn.block_counts))

    def rate(an: SetAnalysis, m: np.ndarray, disp: float) -> tuple[float, float, int]:
        n = int(np.sum(an.block_counts[m]))
        r, e = M.poisson_rate(n, an.exposure_det_h(m))
        return r, e * np.sqrt(disp), n

    ra, ea, na = rate(ref, half_a, d_ref)
    rb, eb, nb_ = rate(ref, half_b, d_ref)
    rr, er, nr = rate(ref, all_ref, d_ref)
    rs, es, ns = rate(syn, all_syn, d_syn)
    floor = abs(M.rate_zscore(ra, ea, rb, eb))
    val = abs(M.rate_zscore(rr, er, rs, es))
    nsig = b.nsig("glitch_rate")
    out["glitch_rate"] = b.make(
        "glitch_rate",
        "glitches",
        "|z| of the glitch rate per detector-hour (Poisson errors x sqrt(dispersion index))",
        val,
        floor,
        nsig,
        f"|z| <= {nsig:g}",
        {
            "rate_reference": rr,
            "rate_reference_error": er,
            "rate_synthetic": rs,
            "rate_synthetic_error": es,
            "rate_half_a": ra,
            "rate_half_b": rb,
            "n_reference": nr,
            "n_synthetic": ns,
            "dispersion_index_reference": d_ref,
            "dispersion_index_synthetic": d_syn,
            "unit": "glitches per detector-hour",
        },
    )
    # power-law slope above a common absolute amplitude
    a_cut = slope_cut(ref, cfg)

    def slope(an: SetAnalysis, m: np.ndarray) -> tuple[float, float, int]:
        return M.powerlaw_slope_mle(an.glitches.amplitude[glitches_in_blocks(an, m)], a_cut)

    infl = slope_inflation
    sa, esa, nsa = slope(ref, half_a)
    sb, esb, nsb = slope(ref, half_b)
    sr, esr, nsr = slope(ref, all_ref)
    ss, ess, nss = slope(syn, all_syn)
    esa, esb, esr, ess = esa * infl, esb * infl, esr * infl, ess * infl
    nsig = b.nsig("amplitude_slope")
    fz = abs(M.rate_zscore(sa, esa, sb, esb)) if min(nsa, nsb) >= 5 else float("nan")
    vz = abs(M.rate_zscore(sr, esr, ss, ess)) if min(nsr, nss) >= 5 else float("nan")
    if nsr >= 5 and nss < 5:
        vz = float("inf")  # the reference has a power-law tail, the synthetic set none
    out["amplitude_slope"] = b.make(
        "amplitude_slope",
        "glitches",
        f"|z| of the power-law slope alpha (dN/dA ~ A^-alpha, max. likelihood) above {a_cut:.3g} (= {cfg.slope_cut_sigma:g} ref. sigma); errors x sqrt(re-split scatter / ML variance) if > 1",
        vz,
        fz,
        nsig,
        f"|z| <= {nsig:g}",
        {"alpha_reference": sr, "alpha_reference_error": esr, "alpha_synthetic": ss, "alpha_synthetic_error": ess, "alpha_half_a": sa, "alpha_half_b": sb, "n_reference": nsr, "n_synthetic": nss, "amplitude_cut": a_cut, "error_inflation": infl},
    )
    # coincidences
    if ref.coinc_possible and syn.coinc_possible:
        dc = max(1.0, M.dispersion_index(np.bincount(ref.coinc_block, minlength=ref.n_blocks)))

        def crate(an: SetAnalysis, m: np.ndarray, disp: float) -> tuple[float, float, int]:
            n = int(np.sum(m[an.coinc_block]))
            r, e = M.poisson_rate(n, an.hours(m))
            return r, e * np.sqrt(disp), n

        ca, eca, _ = crate(ref, half_a, dc)
        cb, ecb, _ = crate(ref, half_b, dc)
        cr, ecr, ncr = crate(ref, all_ref, dc)
        cs, ecs, ncs = crate(syn, all_syn, 1.0)
        nsig = b.nsig("coincidence_rate")
        out["coincidence_rate"] = b.make(
            "coincidence_rate",
            "glitches",
            f"|z| of the rate of glitches coincident (within {cfg.detector.coincidence_window_s:g} s) in >= 2 detectors of a wafer",
            abs(M.rate_zscore(cr, ecr, cs, ecs)),
            abs(M.rate_zscore(ca, eca, cb, ecb)),
            nsig,
            f"|z| <= {nsig:g}",
            {"rate_reference": cr, "rate_reference_error": ecr, "rate_synthetic": cs, "rate_synthetic_error": ecs, "n_reference": ncr, "n_synthetic": ncs, "unit": "coincidences per hour"},
        )
    return out
