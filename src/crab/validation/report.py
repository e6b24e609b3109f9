"""The validation report: ``report.md``, every metric beside its floor.

Called by :func:`crab.validation.outputs.write_outputs`; every number in the
report is also in ``metrics.json``.  The plots are :mod:`crab.validation.plots`'s.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np

from crab import __version__
from crab.core.provenance import atomic_write_bytes
from crab.validation.results import MetricResult, ValidationResult


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
    multi = result.n_references > 1
    L = ["## Training sample (context, not pass/fail)\n"]
    L.append(
        "The same classifier test with the training Monte Carlo in place of the reference. A model learns from one "
        "finite sample: a set much closer to its training MC than to the reference has learned that sample's own "
        "differences from the reference (its share of the pile-up, its noise level), not only errors of its own.\n"
    )
    L.append("| compared | classifier AUC | sigma of one split's AUC under the null |")
    L.append("|---|---|---|")
    refs = f"the {result.n_references} references (mean +- sd)" if multi else "reference"
    auc = f"{fmt(ref_vs['auc'])} +- {fmt(ref_vs.get('auc_sd'), 2)}" if multi else fmt(ref_vs["auc"])
    L.append(f"| training MC vs {refs} | {auc} | {fmt(ref_vs['auc_sigma'])} |")
    for name, s in result.sets.items():
        m = s.metrics.get("classifier_auc")
        v = t["classifier_auc_sets_vs_training"][name]
        val = "n/a" if m is None else (f"{fmt(m.value)} +- {fmt(m.sd, 2)}" if multi else fmt(m.value))
        L.append(f"| `{name}` vs {refs} | {val} | {'n/a' if m is None else fmt(m.quantities.get('auc_sigma'))} |")
        L.append(f"| `{name}` vs training MC | {fmt(v['auc'])} | {fmt(v['auc_sigma'])} |")
    L.append("")
    return L


def pm(value: Any, sd: Any) -> str:
    """``value +- sd`` (just the value when sd is NaN or None)."""
    if sd is None or not np.isfinite(float(sd)):
        return fmt(value)
    return f"{fmt(value)} +- {fmt(sd, 2)}"


def _references_header(result: ValidationResult) -> list[str]:
    """What the references are, and what the floor is."""
    refs = result.references or [result.reference]
    ref = refs[0]
    if len(refs) == 1:
        return [
            (
                f"**Reference** (held-out Monte Carlo): `{ref['path']}` ({ref['kind']}), {fmt(ref['duration_s'])} s used, "
                f"{ref['n_detectors']} detectors at {fmt(ref['sampling_rate_hz'])} Hz, {ref['n_glitches']} glitches detected; "
                f"split into {ref['n_blocks']} blocks of {ref['block_samples']} samples; floor = half A (first {ref['n_blocks'] // 2} blocks) vs half B (the rest). "
                "**One reference is the weaker test** (see the warning).\n"
            )
        ]
    L = [
        (
            f"**References**: K = {len(refs)} independent held-out Monte Carlo runs, {ref['n_detectors']} detectors at "
            f"{fmt(ref['sampling_rate_hz'])} Hz; every set is scored against each. **Floor** = the references scored "
            f"against each other ({len(result.floor_pairs)} pairs: reference j as if it were a synthetic set against reference i, i < j).\n"
        ),
        "| # | file | kind | seed | duration used (s) | blocks | glitches |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(refs, start=1):
        L.append(f"| {i} | `{r['path']}` | {r['kind']} | {r.get('seed')} | {fmt(r['duration_s'])} | {r['n_blocks']} x {r['block_samples']} | {r['n_glitches']} |")
    L.append("")
    return L


def _summary_table(result: ValidationResult) -> list[str]:
    L = ["| set | kind | duration (s) | K | classifier AUC | floor AUC | dAUC | glitch rate per det-h (ref) | amplitude distribution (threshold) | targets | metrics failed |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in result.sets.items():
        k = result.key_metrics()[name]
        gq = s.metrics["glitch_rate"].quantities if "glitch_rate" in s.metrics else {}
        n_app = sum(m.passed is not None for m in s.metrics.values())
        L.append(
            f"| {name} | {s.kind} | {fmt(s.duration_s)} | {k['n_references']} | {pm(k['classifier_auc'], k['classifier_auc_sd'])} | "
            f"{pm(k['classifier_auc_floor'], k['classifier_auc_floor_sd'])} | {pm(k['classifier_dauc'], k['classifier_dauc_error'])} | "
            f"{fmt(gq.get('rate_synthetic'))} ({fmt(gq.get('rate_reference'))}) | {fmt(k['amplitude_distribution_stat'])} ({fmt(k['amplitude_distribution_threshold'])}) | "
            f"{'met' if s.targets_met else '**NOT met**'} | {s.n_failed} of {n_app}{': ' + ', '.join(s.failed()) if s.failed() else ''} |"
        )
    L.append("")
    return L


def _how_to_read(result: ValidationResult) -> str:
    cfg = result.config
    sig = f"Target metrics use {fmt(cfg.n_sigma_target)} sigma, diagnostics {fmt(cfg.n_sigma)} sigma."
    if result.n_references == 1:
        return (
            "How to read the tables: *floor* is the metric between the two halves of the reference "
            "(what the Monte Carlo's own statistical scatter gives); *synthetic* is the same metric between the "
            "synthetic set and the whole reference; dAUC = AUC - floor AUC. Every statistic is a distance: 0 is perfect, the set passes "
            "when it is at most the threshold, and the threshold is derived from the reference on every run "
            f"(rule column; see *Thresholds* below). {sig} The floor column's own "
            "PASS/FAIL shows how often the Monte Carlo fails its own thresholds by chance. K = 1: one reference is one "
            "random draw, and its halves scatter less than independent runs do; validate against several references "
            "for the stronger test.\n"
        )
    k = result.n_references
    return (
        f"How to read the tables: every metric is computed against each of the K = {k} references with the "
        "single-reference rules, and reported as the **mean +- sd** (sample standard deviation) over the references. "
        "The **floor** is the same metric for the references scored against each other (MC vs MC, mean +- sd over the pairs): "
        "what a perfect generator, one more independent Monte Carlo run, scores. The **distance** is mean - floor mean "
        f"(for the classifier dAUC), +- sqrt((sd^2 + floor sd^2) / K). Every statistic is a distance: 0 is perfect. "
        "A metric **passes** when its mean is at most its threshold, the larger of (a) the mean of its K "
        "single-reference thresholds (each derived from its reference: re-splits, Poisson errors, the classifier's "
        "halves; see *Thresholds* below) and (b) the floor's mean + n sigma x the floor's sd (where independent runs "
        f"reach). {sig} The *floor result* says whether the floor's mean is within (a), with the fraction of the pairs "
        "within their own single-reference threshold: a FAIL there means that independent runs scatter more than one "
        "reference's re-splits allow, and (b) sets the threshold.\n"
    )


def _set_tables(result: ValidationResult, s) -> list[str]:
    L = []
    if result.n_references == 1:
        L.append("| metric | role | floor (ref A vs B) | synthetic vs ref | threshold | result | floor result | quantities |")
        L.append("|---|---|---|---|---|---|---|---|")
        for m in s.metrics.values():
            thr = fmt(m.threshold) if np.isclose(m.threshold, m.floor_threshold, equal_nan=True) else f"{fmt(m.threshold)} (floor {fmt(m.floor_threshold)})"
            L.append(f"| {m.name} | {m.role} | {fmt(m.floor)} | {fmt(m.value)} | {thr} | {verdict(m.passed)} | {verdict(m.floor_passed)} | {describe(m)} |")
        L.append("")
        return L
    L.append("| metric | role | floor: MC vs MC | synthetic vs references | distance | threshold (a; b) | result | floor result (pairs) | quantities (means) |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for m in s.metrics.values():
        sp = m.spread
        thr = f"{fmt(m.threshold)} ({fmt(sp.threshold_per_reference)}; {fmt(sp.threshold_floor_scatter)})"
        n_ok = sum(p is True for p in sp.floor_passed)
        n_app = sum(p is not None for p in sp.floor_passed)
        pairs = f" ({n_ok}/{n_app})" if n_app else ""
        L.append(f"| {m.name} | {m.role} | {pm(m.floor, m.floor_sd)} | {pm(m.value, m.sd)} | {pm(m.distance, m.distance_error)} | {thr} | "
                 f"{verdict(m.passed)} | {verdict(m.floor_passed)}{pairs} | {describe(m)} |")
    L.append("")
    L.append("Against each reference (single-reference statistic; ! = beyond that reference's own threshold):\n")
    L.append("| metric | " + " | ".join(f"ref {i}" for i in range(1, result.n_references + 1)) + " |")
    L.append("|---|" + "---|" * result.n_references)
    for m in s.metrics.values():
        cells = [f"{fmt(v)}{'!' if p is False else ''}" for v, p in zip(m.spread.values, m.spread.passed)]
        L.append(f"| {m.name} | " + " | ".join(cells) + " |")
    L.append("")
    return L


def _detection_table(result: ValidationResult) -> list[str]:
    """The glitch finder's efficiency against the truth tables (:mod:`crab.validation.detection`)."""
    det = result.detection
    if not det:
        return []
    from crab.validation.detection import bin_labels

    curves = ([("reference" if result.n_references == 1 else f"references (pooled, K={result.n_references})", det["reference"])] if det.get("reference") else [])
    curves += list(det.get("sets", {}).items())
    L = ["## Detection efficiency against the truth\n",
         "Fraction of the direct hits of each truth table that the glitch finder finds, by the hit's height in the TOD "
         "(noise sigma); found / listed per bin. Sets without a truth table are not shown (see `crab.validation.detection`).\n"]
    labels = bin_labels(curves[0][1]["edges_sigma"])
    L.append("| set | " + " | ".join(labels) + " |")
    L.append("|---|" + "---|" * len(labels))
    for name, c in curves:
        cells = [f"{e:.2f} ({f}/{n})" if n else "-" for e, f, n in zip(c["efficiency"], c["found"], c["listed"])]
        L.append(f"| {name} | " + " | ".join(cells) + " |")
    L.append("")
    return L


def markdown(result: ValidationResult, figures: list[Path] | None = None) -> str:
    """The whole report as Markdown text."""
    cfg = result.config
    ref = result.reference
    L: list[str] = []
    L.append("# CRAB validation report\n")
    L.append(f"Written {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} by crab {__version__} in {result.elapsed_s:.1f} s.\n")
    L.extend(_references_header(result))
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
    L.extend(_summary_table(result))
    L.append(_how_to_read(result))

    if result.auc_vs_training() is not None:
        L.extend(_training_context(result))

    for name, s in result.sets.items():
        L.append(f"## Set `{name}`\n")
        L.append(f"File `{s.path}` ({s.kind}), {fmt(s.duration_s)} s x {s.n_detectors} detectors; seam period {s.seam_period_samples} samples, phase {s.seam_phase_samples} ({s.seam_period_source}).\n")
        L.extend(_set_tables(result, s))

    L.extend(_detection_table(result))

    L.append("## Metrics and thresholds\n")
    first = next(iter(result.sets.values()), None)
    if first is not None:
        L.append("| metric | statistic | threshold rule |")
        L.append("|---|---|---|")
        for m in first.metrics.values():
            L.append(f"| {m.name} | {m.description} | {m.rule} |")
        L.append("")
    L.append(
        ("Single-reference thresholds" if result.n_references > 1 else "Thresholds")
        + " come from the reference on every run, never from a per-run choice:\n\n"
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
