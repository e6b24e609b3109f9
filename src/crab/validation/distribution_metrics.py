"""The distribution metrics: statistics between blocks of two sets, judged against re-splits of the reference.

Each statistic (:data:`crab.validation.floor.Stat`) compares a selection of
blocks of one set with a selection of blocks of another: glitch amplitudes,
decay times and inter-arrival times (KS or separation power), noise profiles
per block (chi-square with block-scatter errors) and the histograms of the
per-window summary features.  :func:`distribution_tests` sets them up on the
reference with their floors and null thresholds; :func:`distribution_metrics`
judges one synthetic set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crab.analysis.window_features import WINDOW_SUMMARY_NAMES
from crab.validation import metrics as M
from crab.validation.builder import MetricBuilder
from crab.validation.config import ValidationConfig
from crab.validation.floor import ReferenceSplits, Stat, null_distribution
from crab.validation.results import MetricResult
from crab.validation.set_analysis import SetAnalysis, glitches_in_blocks


def _log_amp(an: SetAnalysis, mask: np.ndarray) -> np.ndarray:
    a = an.glitches.amplitude[glitches_in_blocks(an, mask)]
    return np.log(a[a > 0])


def stat_amplitude(a: SetAnalysis, ma: np.ndarray, b: SetAnalysis, mb: np.ndarray) -> tuple[float, dict]:
    la, lb = _log_amp(a, ma), _log_amp(b, mb)
    q = {
        "n_reference": int(la.size),
        "n_synthetic": int(lb.size),
        "median_amplitude_reference": float(np.exp(np.median(la))) if la.size else float("nan"),
        "median_amplitude_synthetic": float(np.exp(np.median(lb))) if lb.size else float("nan"),
        "ks_distance": M.ks_statistic(la, lb),
    }
    return M.scaled_ks(la, lb), q


def _decay_edges(an: SetAnalysis, cfg: ValidationConfig) -> np.ndarray:
    d = an.glitches.decay_time_s
    d = d[np.isfinite(d) & (d > 0)]
    nb = int(np.clip(d.size // 25, 3, cfg.max_bins))
    return M.quantile_edges(np.log(d), nb)


def make_stat_decay(edges: np.ndarray) -> Stat:
    def stat(a: SetAnalysis, ma: np.ndarray, b: SetAnalysis, mb: np.ndarray) -> tuple[float, dict]:
        def h(an: SetAnalysis, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            d = an.glitches.decay_time_s[glitches_in_blocks(an, m)]
            ld = np.where(np.isfinite(d) & (d > 0), np.log(np.where(d > 0, d, 1.0)), np.nan)
            return M.histogram(ld, edges, nan_bin=True), d

        ha, da = h(a, ma)
        hb, db = h(b, mb)
        q = {
            "median_decay_s_reference": float(np.nanmedian(da)) if np.isfinite(da).any() else float("nan"),
            "median_decay_s_synthetic": float(np.nanmedian(db)) if np.isfinite(db).any() else float("nan"),
            "unresolved_fraction_reference": float(np.mean(~np.isfinite(da))) if da.size else float("nan"),
            "unresolved_fraction_synthetic": float(np.mean(~np.isfinite(db))) if db.size else float("nan"),
            "separation_power": M.separation_power(ha, hb),
        }
        return M.scaled_separation_power(ha, hb), q

    return stat


def _intervals(an: SetAnalysis, mask: np.ndarray) -> np.ndarray:
    v = an.interval_s[glitches_in_blocks(an, mask)]
    v = v[np.isfinite(v)]
    return v / v.mean() if v.size and v.mean() > 0 else v


def stat_interarrival(a: SetAnalysis, ma: np.ndarray, b: SetAnalysis, mb: np.ndarray) -> tuple[float, dict]:
    ia, ib = _intervals(a, ma), _intervals(b, mb)
    return M.scaled_ks(ia, ib), {"n_reference": int(ia.size), "n_synthetic": int(ib.size), "ks_distance": M.ks_statistic(ia, ib)}


def make_stat_profile(attr: str) -> Stat:
    def stat(a: SetAnalysis, ma: np.ndarray, b: SetAnalysis, mb: np.ndarray) -> tuple[float, dict]:
        pa, pb = getattr(a, attr)[ma], getattr(b, attr)[mb]
        chi2 = M.profile_chi2(pa, pb)
        ma_, mb_ = np.nanmean(pa, axis=0), np.nanmean(pb, axis=0)
        sa = np.nanstd(pa, axis=0, ddof=1) / np.sqrt(len(pa))
        sb = np.nanstd(pb, axis=0, ddof=1) / np.sqrt(len(pb))
        return chi2, {"reference": ma_, "synthetic": mb_, "difference": mb_ - ma_, "difference_error": np.hypot(sa, sb), "n_components": int(pa.shape[1])}

    return stat


def make_stat_feature(k: int, edges: np.ndarray) -> Stat:
    def stat(a: SetAnalysis, ma: np.ndarray, b: SetAnalysis, mb: np.ndarray) -> tuple[float, dict]:
        ha = M.histogram(a.win_feats[ma[a.win_block], k], edges)
        hb = M.histogram(b.win_feats[mb[b.win_block], k], edges)
        return M.scaled_separation_power(ha, hb), {"separation_power": M.separation_power(ha, hb), "n_bins": int(len(edges) - 1)}

    return stat


@dataclass
class DistributionTests:
    """The distribution statistics set up on the reference.

    Attributes
    ----------
    stats : dict of str -> (group, description, Stat)
        Every statistic, by metric name.
    floors : dict of str -> (float, dict)
        Value and quantities of each statistic, reference half A vs half B.
    nulls : dict of str -> (threshold, mean, std)
        The ``n_sigma`` point of each statistic's null over the random re-splits
        (:func:`crab.validation.metrics.null_threshold`), with the null's mean and spread.
    """

    stats: dict[str, tuple[str, str, Stat]]
    floors: dict[str, tuple[float, dict]]
    nulls: dict[str, tuple[float, float, float]]


def distribution_statistics(ref: SetAnalysis, cfg: ValidationConfig) -> dict[str, tuple[str, str, Stat]]:
    """The statistics, by metric name: ``(group, description, stat)``; bins are set on the reference."""
    stats: dict[str, tuple[str, str, Stat]] = {
        "amplitude_distribution": ("glitches", "sqrt(n_eff) x KS distance of ln(amplitude) of all detected glitches", stat_amplitude),
        "decay_time_distribution": ("glitches", "chi2-scaled separation power of ln(decay time) histograms (+ unresolved bin)", make_stat_decay(_decay_edges(ref, cfg))),
        "interarrival_distribution": ("glitches", "sqrt(n_eff) x KS distance of inter-arrival times / their mean (per detector)", stat_interarrival),
        "noise_rms": ("noise", "chi2 of the per-detector robust RMS of the baseline-subtracted TOD (errors: block scatter)", make_stat_profile("rms")),
        "psd_octaves": ("noise", "chi2 of the log Welch PSD per octave, glitches clipped (errors: block scatter)", make_stat_profile("band_logpow")),
        "autocorrelation": ("noise", f"chi2 of the autocorrelation at lags {list(cfg.acf_lags)} samples (errors: block scatter)", make_stat_profile("acf")),
    }
    if ref.coinc_possible:
        stats["detector_correlation"] = (
            "glitches", "chi2 of the mean correlation of the TOD of detector pairs of a wafer, glitches kept (errors: block scatter)", make_stat_profile("corr"))
    for k, fname in enumerate(WINDOW_SUMMARY_NAMES):
        vals = ref.win_feats[:, k]
        n_bins = int(np.clip(len(vals) // 25, 4, cfg.max_bins))
        edges = M.quantile_edges(vals, n_bins, integer=(fname == "n_glitches"))
        stats[f"window_{fname}"] = ("windows", f"chi2-scaled separation power of per-window {fname} histograms", make_stat_feature(k, edges))
    return stats


def distribution_tests(ref: SetAnalysis, splits: ReferenceSplits, b: MetricBuilder) -> DistributionTests:
    """Set up every statistic on the reference: its floor (half A vs B) and its null threshold (random re-splits)."""
    stats = distribution_statistics(ref, b.cfg)
    nulls = {}
    floors = {}
    for name, (_, _, st) in stats.items():
        nulls[name] = M.null_threshold(null_distribution(st, ref, splits.null_masks), b.nsig(name))
        floors[name] = st(ref, splits.half_a, ref, splits.half_b)
    return DistributionTests(stats, floors, nulls)


def distribution_metrics(b: MetricBuilder, tests: DistributionTests, ref: SetAnalysis, syn: SetAnalysis, splits: ReferenceSplits) -> dict[str, MetricResult]:
    """Every distribution statistic, full reference vs the synthetic set ``syn``, beside its floor."""
    out = {}
    all_syn = np.ones(syn.n_blocks, bool)
    for name, (group, desc, st) in tests.stats.items():
        val, q = st(ref, splits.everything, syn, all_syn)
        fl, fq = tests.floors[name]
        thr, mu, sd = tests.nulls[name]
        q = dict(q, floor_quantities=fq, null_mean=mu, null_std=sd)
        out[name] = b.make(name, group, desc, val, fl, thr, f"{b.nsig(name):g}-sigma point of the null over {b.cfg.n_null} random re-splits of the reference", q)
    return out
