"""The validation report: ``report.md`` (tables beside the floor) and PNG plots.

Called by :func:`crab.validation.outputs.write_outputs`; every number in the report
is also in ``metrics.json``.  Plots use matplotlib's Agg backend.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np

from crab import __version__
from crab.analysis.window_features import WINDOW_SUMMARY_NAMES
from crab.core.provenance import atomic_write_bytes
from crab.validation.results import MetricResult, ValidationResult

_COLORS = ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:olive"]


# --------------------------------------------------------------------------- formatting
def fmt(v: Any, digits: int = 3) -> str:
    """A number with ``digits`` significant digits; n/a for None/NaN."""
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    if np.isnan(x):
        return "n/a"
    if np.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits}g}"
    return f"{x:.{max(digits - 1, 1)}e}"


def verdict(p: bool | None) -> str:
    return "n/a" if p is None else ("PASS" if p else "**FAIL**")


def describe(m: MetricResult) -> str:
    """The physical quantities behind a metric, in a few words."""
    q = m.quantities
    g = q.get
    try:
        if m.name == "glitch_rate":
            return f"ref {fmt(g('rate_reference'))} ± {fmt(g('rate_reference_error'), 2)}, syn {fmt(g('rate_synthetic'))} ± {fmt(g('rate_synthetic_error'), 2)} per det-h"
        if m.name == "amplitude_slope":
            return f"alpha ref {fmt(g('alpha_reference'))} ± {fmt(g('alpha_reference_error'), 2)}, syn {fmt(g('alpha_synthetic'))} ± {fmt(g('alpha_synthetic_error'), 2)} (A > {fmt(g('amplitude_cut'))})"
        if m.name == "amplitude_distribution":
            return f"median ref {fmt(g('median_amplitude_reference'))}, syn {fmt(g('median_amplitude_synthetic'))}; KS D {fmt(g('ks_distance'), 2)}"
        if m.name == "decay_time_distribution":
            return (
                f"median ref {fmt(g('median_decay_s_reference'))} s, syn {fmt(g('median_decay_s_synthetic'))} s; "
                f"unresolved {fmt(100 * g('unresolved_fraction_reference', np.nan), 2)}% / {fmt(100 * g('unresolved_fraction_synthetic', np.nan), 2)}%"
            )
        if m.name == "interarrival_distribution":
            return f"KS D {fmt(g('ks_distance'), 2)} (n {g('n_reference')} / {g('n_synthetic')})"
        if m.name == "coincidence_rate":
            return f"ref {fmt(g('rate_reference'))} ± {fmt(g('rate_reference_error'), 2)}, syn {fmt(g('rate_synthetic'))} ± {fmt(g('rate_synthetic_error'), 2)} per h"
        if m.name == "detector_correlation":
            r, s_ = np.asarray(g("reference"), float), np.asarray(g("synthetic"), float)
            return f"mean pair correlation ref {fmt(r[0])}, syn {fmt(s_[0])}" if r.size else ""
        if m.name == "noise_rms":
            r, s_ = np.mean(g("reference")), np.mean(g("synthetic"))
            return f"mean ref {fmt(r)}, syn {fmt(s_)} (ratio {fmt(s_ / r if r else np.nan)})"
        if m.name == "psd_octaves":
            d, e = np.asarray(g("difference"), float), np.asarray(g("difference_error"), float)
            k = int(np.nanargmax(np.abs(d) / np.where(e > 0, e, np.inf))) if d.size else 0
            return f"largest: octave {k}, ln(P_syn / P_ref) = {fmt(d[k], 2)} ± {fmt(e[k], 2)}" if d.size else ""
        if m.name == "autocorrelation":
            r, s_ = np.asarray(g("reference")), np.asarray(g("synthetic"))
            return f"lag-1 ref {fmt(r[0])}, syn {fmt(s_[0])}" if r.size else ""
        if m.group == "windows":
            return f"SP {fmt(g('separation_power'), 2)} ({g('n_bins')} bins)"
        if m.name == "classifier_auc":
            sp = np.asarray(g("auc_splits", []), dtype=float)
            spread = f"{sp.size} splits, {fmt(sp.min(), 2)}-{fmt(sp.max(), 2)}; " if sp.size > 1 else ""
            return f"{spread}sigma {fmt(g('auc_sigma'), 2)}, {g('n_test_per_class')} test windows/class; train AUC {fmt(g('train_auc'), 2)}"
        if m.name == "memorisation":
            if not q:
                return m.rule
            return f"exact copies {fmt(100 * g('exact_copy_fraction', np.nan), 2)}%; median ln ratio {fmt(g('median_log_ratio'), 2)} (floor {fmt(g('median_log_ratio_floor'), 2)})"
        if m.group == "seams":
            return f"period {g('period_samples')} samples, signed {fmt(g('signed_value'), 2)}"
    except (TypeError, ValueError, IndexError):
        return ""
    return ""


# --------------------------------------------------------------------------- markdown
def _training_context(result: ValidationResult) -> list[str]:
    """The section on the training sample: the classifier test against the training MC beside the reference."""
    t = result.training
    ref_vs = t["classifier_auc_vs_reference"]
    L = ["## Training sample (context, not pass/fail)\n"]
    L.append(
        "The same classifier test with the training Monte Carlo in place of the reference. A model learns from one "
        "finite sample: a set much closer to its training MC than to the reference has learned that sample's own "
        "differences from the reference (its share of the pile-up, its noise level), not only errors of its own.\n"
    )
    L.append("| compared | classifier AUC | sigma of one split's AUC under the null |")
    L.append("|---|---|---|")
    L.append(f"| training MC vs reference | {fmt(ref_vs['auc'])} | {fmt(ref_vs['auc_sigma'])} |")
    for name, s in result.sets.items():
        m = s.metrics.get("classifier_auc")
        v = t["classifier_auc_sets_vs_training"][name]
        L.append(f"| `{name}` vs reference | {fmt(None if m is None else m.value)} | {'n/a' if m is None else fmt(m.quantities.get('auc_sigma'))} |")
        L.append(f"| `{name}` vs training MC | {fmt(v['auc'])} | {fmt(v['auc_sigma'])} |")
    L.append("")
    return L


def markdown(result: ValidationResult, figures: list[Path] | None = None) -> str:
    """The whole report as Markdown text."""
    cfg = result.config
    ref = result.reference
    L: list[str] = []
    L.append("# CRAB validation report\n")
    L.append(f"Written {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} by crab {__version__} in {result.elapsed_s:.1f} s.\n")
    L.append(
        f"**Reference** (held-out Monte Carlo): `{ref['path']}` ({ref['kind']}), {fmt(ref['duration_s'])} s used, "
        f"{ref['n_detectors']} detectors at {fmt(ref['sampling_rate_hz'])} Hz, {ref['n_glitches']} glitches detected; "
        f"split into {ref['n_blocks']} blocks of {ref['block_samples']} samples; floor = half A (first {ref['n_blocks'] // 2} blocks) vs half B (the rest).\n"
    )
    if result.training:
        L.append(f"**Training data** (memorisation test, training-sample context): `{result.training['path']}`, {fmt(result.training['duration_s'])} s x {result.training['n_detectors']} detectors.\n")
    else:
        L.append("**Training data**: not given, memorisation test not run.\n")
    if result.warnings:
        L.append("**Warnings**:\n")
        L.extend(f"- {w}" for w in result.warnings)
        L.append("")

    L.append("## Summary\n")
    L.append(
        f"Targets (issue 5): classifier AUC <= {fmt(cfg.auc_target)} (or within {fmt(cfg.n_sigma_target)} sigma of the floor AUC), "
        f"glitch rate and amplitude distribution (and slope) within {fmt(cfg.n_sigma_target)} sigma of the floor.\n"
    )
    L.append("| set | kind | duration (s) | classifier AUC (floor) | glitch rate per det-h (ref) | amplitude distribution (threshold) | targets | metrics failed |")
    L.append("|---|---|---|---|---|---|---|---|")
    for name, s in result.sets.items():
        k = result.key_metrics()[name]
        gq = s.metrics["glitch_rate"].quantities if "glitch_rate" in s.metrics else {}
        n_app = sum(m.passed is not None for m in s.metrics.values())
        L.append(
            f"| {name} | {s.kind} | {fmt(s.duration_s)} | {fmt(k['classifier_auc'])} ({fmt(k['classifier_auc_floor'])}) | "
            f"{fmt(gq.get('rate_synthetic'))} ({fmt(gq.get('rate_reference'))}) | {fmt(k['amplitude_distribution_stat'])} ({fmt(k['amplitude_distribution_threshold'])}) | "
            f"{'met' if s.targets_met else '**NOT met**'} | {s.n_failed} of {n_app}{': ' + ', '.join(s.failed()) if s.failed() else ''} |"
        )
    L.append("")
    L.append(
        "How to read the tables: *floor* is the metric between the two halves of the reference "
        "(what the Monte Carlo's own statistical scatter gives); *synthetic* is the same metric between the "
        "synthetic set and the whole reference. Every statistic is a distance: 0 is perfect, the set passes "
        "when it is at most the threshold, and the threshold is derived from the reference on every run "
        "(rule column; see *Thresholds* below). Target metrics use "
        f"{fmt(cfg.n_sigma_target)} sigma, diagnostics {fmt(cfg.n_sigma)} sigma. The floor column's own "
        "PASS/FAIL shows how often the Monte Carlo fails its own thresholds by chance.\n"
    )

    if result.auc_vs_training() is not None:
        L.extend(_training_context(result))

    for name, s in result.sets.items():
        L.append(f"## Set `{name}`\n")
        L.append(f"File `{s.path}` ({s.kind}), {fmt(s.duration_s)} s x {s.n_detectors} detectors; seam period {s.seam_period_samples} samples, phase {s.seam_phase_samples} ({s.seam_period_source}).\n")
        L.append("| metric | role | floor (ref A vs B) | synthetic vs ref | threshold | result | floor result | quantities |")
        L.append("|---|---|---|---|---|---|---|---|")
        for m in s.metrics.values():
            thr = fmt(m.threshold) if np.isclose(m.threshold, m.floor_threshold, equal_nan=True) else f"{fmt(m.threshold)} (floor {fmt(m.floor_threshold)})"
            L.append(f"| {m.name} | {m.role} | {fmt(m.floor)} | {fmt(m.value)} | {thr} | {verdict(m.passed)} | {verdict(m.floor_passed)} | {describe(m)} |")
        L.append("")

    L.append("## Metrics and thresholds\n")
    first = next(iter(result.sets.values()), None)
    if first is not None:
        L.append("| metric | statistic | threshold rule |")
        L.append("|---|---|---|")
        for m in first.metrics.values():
            L.append(f"| {m.name} | {m.description} | {m.rule} |")
        L.append("")
    L.append(
        "Thresholds come from the reference on every run, never from a per-run choice:\n\n"
        f"- *null re-splits*: the reference's {ref['n_blocks']} time blocks are split at random into two halves "
        f"{cfg.n_null} times; the statistic between the halves is its distribution under 'same parent'; the threshold "
        "is its n-sigma point (the quantile at the two-sided normal coverage of n sigma, 95.45 % for 2, 99.73 % for 3, of a "
        "scaled chi-square matched to the null's mean and variance). Distribution distances are scaled by the sample sizes "
        "(sqrt(n_eff) x KS distance; 4 SP / (1/n_a + 1/n_b) for the separation power SP = 0.5 sum (p - q)^2 / (p + q)), "
        "so the null of the halves applies to the full reference against a synthetic set of any length.\n"
        "- *rates and slope*: z-score with Poisson (maximum-likelihood for the slope) errors, inflated when the reference "
        "scatters more than they allow (correlated glitches, e.g. wafer hits seen by several detectors): by sqrt(dispersion "
        "index) of the counts in the reference's blocks for rates, by sqrt(var(alpha_A - alpha_B) / (sigma_A^2 + sigma_B^2)) "
        "over the random re-splits for the slope; threshold |z| <= n sigma.\n"
        f"- *classifier*: AUC on held-out windows (train and test windows from different time blocks); threshold max({fmt(cfg.auc_target)}, floor AUC + n sigma x the AUC spread of "
        "an uninformative classifier).\n"
        "- *memorisation*: ln(distance to the nearest training window / distance to the nearest window of reference half B) "
        f"for every window; the fraction of synthetic windows below the {fmt(cfg.memorisation_quantile)} quantile of reference "
        "half-A windows must stay within n binomial sigma of that quantile.\n"
        "- *seams*: the join statistics at the synthetic set's tile period, against their distribution over random join "
        "phases in the reference (which has no joins).\n"
    )
    d = cfg.detector
    L.append("## Glitch detector\n")
    L.append(
        f"Running-median baseline over {fmt(d.baseline_window_s)} s; noise sigma = max(MAD of first differences / sqrt 2, "
        f"1.4826 MAD) of the baseline-subtracted TOD, per detector; threshold {fmt(d.threshold_sigma)} sigma; runs separated by "
        f"<= {d.merge_gap_samples} samples merged; amplitude = peak of the baseline-subtracted TOD; integral over the extent "
        f"above {fmt(d.tail_sigma)} sigma (<= {fmt(d.max_tail_s)} s after the peak); decay time from a weighted log-linear fit of "
        f"the samples after the peak above {fmt(d.decay_min_sigma)} sigma (unresolved if none); coincidences: peaks within "
        f"{fmt(d.coincidence_window_s)} s chained across the detectors of a wafer. See `crab.analysis.glitches`.\n"
    )
    if figures:
        L.append("## Figures\n")
        for f in figures:
            L.append(f"### {f.stem.replace('_', ' ')}\n")
            L.append(f"![{f.stem}]({f.name})\n")
    L.append("All numbers: `metrics.json`.\n")
    return "\n".join(L)


def write_markdown(result: ValidationResult, path: Path, figures: list[Path] | None = None) -> Path:
    """Write :func:`markdown` of ``result`` to ``path`` atomically; returns ``path``."""
    return atomic_write_bytes(path, markdown(result, figures).encode())


# --------------------------------------------------------------------------- plots
def write_plots(result: ValidationResult, out_dir: Path) -> list[Path]:
    """Write the PNG plots into ``out_dir``; returns their paths."""
    # matplotlib is imported on use: it is heavy and only the plots need it
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    pd = result.plot_data
    if not pd:
        return []
    ref = pd["reference"]
    syn = pd["synthetic"]
    names = list(syn)
    colors = {n: _COLORS[i % len(_COLORS)] for i, n in enumerate(names)}
    out: list[Path] = []
    half = ref.n_blocks // 2
    ref_a = ref.glitch_block < half

    def save(fig, name: str) -> None:
        p = out_dir / f"{name}.png"
        fig.tight_layout()
        fig.savefig(p, dpi=90)
        plt.close(fig)
        out.append(p)

    # amplitudes: survival function log-log with the slope fits
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    sets = [("reference", ref.glitches.amplitude, "k")] + [(n, syn[n].glitches.amplitude, colors[n]) for n in names]
    for label, a, c in sets:
        a = np.sort(a[a > 0])
        if a.size:
            ax[0].loglog(a, 1.0 - np.arange(a.size) / a.size, drawstyle="steps-post", color=c, label=f"{label} (n={a.size})")
            ax[1].hist(np.log10(a), bins=40, histtype="step", density=True, color=c, label=label)
    for hx, ls in ((ref.glitches.amplitude[ref_a], ":"), (ref.glitches.amplitude[~ref_a], "--")):
        a = np.sort(hx[hx > 0])
        if a.size:
            ax[0].loglog(a, 1.0 - np.arange(a.size) / a.size, drawstyle="steps-post", color="0.5", ls=ls, lw=0.8)
    first = next(iter(result.sets.values()), None)
    if first is not None and "amplitude_slope" in first.metrics:
        q = first.metrics["amplitude_slope"].quantities
        cut = q.get("amplitude_cut")
        if cut:
            ax[0].axvline(cut, color="0.6", lw=0.8)
            for label, a, c in sets:
                sl = q.get("alpha_reference") if label == "reference" else result.sets[label].metrics["amplitude_slope"].quantities.get("alpha_synthetic")
                a = a[a > 0]
                if sl and np.isfinite(sl) and a.size:
                    frac = np.mean(a >= cut)
                    xx = np.geomspace(cut, max(a.max(), cut * 1.01), 20)
                    ax[0].loglog(xx, frac * (xx / cut) ** (1 - sl), color=c, lw=0.8, ls="-.", label=f"{label}: alpha = {sl:.2f}")
    ax[0].set_xlabel("glitch amplitude (TOD units)")
    ax[0].set_ylabel("fraction of glitches above")
    ax[0].legend(fontsize=7)
    ax[0].set_title("Amplitude survival function (grey: reference halves)")
    ax[1].set_xlabel("log10 amplitude")
    ax[1].set_ylabel("density")
    ax[1].set_title("Amplitude distribution")
    save(fig, "amplitudes")

    # decay times and inter-arrival times
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    allv = [d[np.isfinite(d) & (d > 0)] for d in [ref.glitches.decay_time_s] + [syn[n].glitches.decay_time_s for n in names]]
    allv = np.concatenate(allv) if allv else np.zeros(0)
    if allv.size:
        bins = np.geomspace(max(allv.min(), 1e-4), allv.max() * 1.01, 40)
        for label, an, c in [("reference", ref, "k")] + [(n, syn[n], colors[n]) for n in names]:
            d = an.glitches.decay_time_s
            fin = d[np.isfinite(d) & (d > 0)]
            if fin.size == 0:
                continue
            ax[0].hist(fin, bins=bins, histtype="step", density=True, color=c, label=f"{label} (unresolved {100 * np.mean(~np.isfinite(d)) if d.size else 0:.0f}%)")
        ax[0].set_xscale("log")
    ax[0].set_xlabel("decay time (s)")
    ax[0].set_ylabel("density")
    ax[0].set_title("Decay time of detected glitches")
    ax[0].legend(fontsize=7)
    bins = np.linspace(0, 6, 40)
    for label, an, c in [("reference", ref, "k")] + [(n, syn[n], colors[n]) for n in names]:
        v = an.interval_s[np.isfinite(an.interval_s)]
        if v.size and v.mean() > 0:
            ax[1].hist(v / v.mean(), bins=bins, histtype="step", density=True, color=c, label=label)
    ax[1].plot(bins, np.exp(-bins), color="0.5", ls="--", label="Poisson: exp(-x)")
    ax[1].set_yscale("log")
    ax[1].set_xlabel("inter-arrival time / mean (per detector)")
    ax[1].set_ylabel("density")
    ax[1].set_title("Inter-arrival times")
    ax[1].legend(fontsize=7)
    save(fig, "decay_interarrival")

    # noise: PSD, per-octave ratio, autocorrelation
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    f = ref.psd_freq
    m = f > 0
    ax[0].loglog(f[m], ref.psd_mean[m], color="k", label="reference")
    for n in names:
        ax[0].loglog(syn[n].psd_freq[m], syn[n].psd_mean[m], color=colors[n], label=n, alpha=0.8)
    ax[0].set_xlabel("frequency (Hz)")
    ax[0].set_ylabel("PSD (units^2/Hz), glitches clipped")
    ax[0].set_title(f"PSD (blocks of {ref.block_samples} samples)")
    ax[0].legend(fontsize=7)
    centres = np.sqrt(ref.band_edges[:-1] * ref.band_edges[1:])
    for i, n in enumerate(names):
        q = result.sets[n].metrics["psd_octaves"].quantities
        d, e = np.asarray(q.get("difference"), float), np.asarray(q.get("difference_error"), float)
        if d.size == centres.size:
            ax[1].errorbar(centres * (1 + 0.04 * i), d, e, fmt="o", color=colors[n], label=n, ms=3)
        if i == 0:
            fq = q.get("floor_quantities", {})
            d0, e0 = np.asarray(fq.get("difference", []), float), np.asarray(fq.get("difference_error", []), float)
            if d0.size == centres.size:
                ax[1].errorbar(centres * 0.96, d0, e0, fmt="s", color="0.5", label="floor (B vs A)", ms=3)
    ax[1].axhline(0, color="k", lw=0.6)
    ax[1].set_xscale("log")
    ax[1].set_xlabel("octave centre (Hz)")
    ax[1].set_ylabel("ln(PSD / PSD_ref) per octave")
    ax[1].set_title("PSD per octave vs reference")
    ax[1].legend(fontsize=7)
    lags = np.array(result.config.acf_lags)
    for label, an, c in [("reference", ref, "k")] + [(n, syn[n], colors[n]) for n in names]:
        mu = np.nanmean(an.acf, axis=0)
        se = np.nanstd(an.acf, axis=0, ddof=1) / np.sqrt(len(an.acf))
        ax[2].errorbar(lags, mu, se, marker="o", color=c, label=label, ms=3, capsize=2)
    ax[2].set_xlabel("lag (samples)")
    ax[2].set_ylabel("autocorrelation")
    ax[2].set_title("Autocorrelation (baseline-subtracted, clipped)")
    ax[2].legend(fontsize=7)
    save(fig, "noise")

    # per-window features
    fig, axs = plt.subplots(1, len(WINDOW_SUMMARY_NAMES), figsize=(18, 3.6))
    for k, (ax_, fname) in enumerate(zip(axs, WINDOW_SUMMARY_NAMES)):
        vals = [ref.win_feats[:, k]] + [syn[n].win_feats[:, k] for n in names]
        allv = np.concatenate(vals)
        if fname == "n_glitches":
            bins = np.arange(-0.5, np.quantile(allv, 0.995) + 1.5)
        else:
            lo, hi = np.quantile(allv, [0.005, 0.995])
            bins = np.linspace(lo, hi if hi > lo else lo + 1, 40)
        for label, v, c in zip(["reference"] + names, vals, ["k"] + [colors[n] for n in names]):
            ax_.hist(np.clip(v, bins[0], bins[-1]), bins=bins, histtype="step", density=True, color=c, label=label)
        ax_.set_title(f"window {fname}")
        if fname in ("max", "kurtosis", "integral"):
            ax_.set_yscale("log")
    axs[0].legend(fontsize=7)
    save(fig, "window_features")

    # classifier ROC and memorisation
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    clf = pd.get("classifier", {})
    if "floor" in clf:
        ax[0].plot(clf["floor"].fpr, clf["floor"].tpr, color="0.5", label=f"floor (ref A vs B): AUC {clf['floor'].auc:.3f}")
    for n in names:
        if n in clf:
            ax[0].plot(clf[n].fpr, clf[n].tpr, color=colors[n], label=f"{n}: AUC {clf[n].auc:.3f}")
    ax[0].plot([0, 1], [0, 1], color="k", lw=0.5, ls="--")
    ax[0].set_xlabel("false positive rate (reference called synthetic)")
    ax[0].set_ylabel("true positive rate")
    ax[0].set_title("Classifier two-sample test (held-out windows)")
    ax[0].legend(fontsize=7)
    mem = pd.get("memorisation", {})
    if "floor" in mem and len(mem["floor"]):
        vals = [np.maximum(mem["floor"], -1.0)] + [np.maximum(mem[n], -1.0) for n in names if n in mem]
        allv = np.concatenate(vals)
        bins = np.linspace(allv.min(), allv.max() + 1e-9, 50)
        ax[1].hist(vals[0], bins=bins, histtype="stepfilled", color="0.8", density=True, label="floor: reference half A")
        for n in names:
            if n in mem:
                ax[1].hist(np.maximum(mem[n], -1.0), bins=bins, histtype="step", density=True, color=colors[n], label=n)
        lvl = next((s.metrics["memorisation"].quantities.get("log_ratio_level") for s in result.sets.values() if "memorisation" in s.metrics), None)
        if lvl is not None:
            ax[1].axvline(lvl, color="k", ls="--", lw=0.8, label=f"{result.config.memorisation_quantile:g} quantile of the floor")
        ax[1].set_xlabel("ln(d to training / d to held-out)  (clipped at -1; copies far left)")
        ax[1].set_ylabel("density")
        ax[1].legend(fontsize=7)
    else:
        ax[1].text(0.5, 0.5, "memorisation test not run\n(no training data)", ha="center", va="center", transform=ax[1].transAxes)
    ax[1].set_title("Memorisation: nearest-window distances")
    save(fig, "classifier_memorisation")

    # example stretches of TOD
    rows = 1 + len(names)
    fig, axs = plt.subplots(rows, 1, figsize=(12, 1.9 * rows), sharex=True, squeeze=False)
    fs = ref.sampling_rate_hz
    for ax_, (label, an, c) in zip(axs[:, 0], [("reference", ref, "k")] + [(n, syn[n], colors[n]) for n in names]):
        x = an.example[0]
        ax_.plot(np.arange(x.size) / fs, x, color=c, lw=0.6)
        ax_.set_ylabel("TOD")
        ax_.set_title(f"{label}: detector 0, first {x.size / fs:.0f} s", fontsize=9, loc="left")
    axs[-1, 0].set_xlabel("time (s)")
    save(fig, "tod_examples")
    return out
