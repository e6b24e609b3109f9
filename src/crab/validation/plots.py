"""The validation plots (PNG, matplotlib's Agg backend), written beside ``report.md``.

With several references the plots show the first reference (and, in the
amplitude survival plot, the others in grey); the classifier ROC of a set is
its test against the first reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crab.analysis.window_features import WINDOW_SUMMARY_NAMES
from crab.validation.results import ValidationResult

_COLORS = ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:olive"]


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
    others = pd.get("references", [ref])[1:]
    ref_label = "reference" if not others else "reference 1"

    def save(fig, name: str) -> None:
        p = out_dir / f"{name}.png"
        fig.tight_layout()
        fig.savefig(p, dpi=90)
        plt.close(fig)
        out.append(p)

    # amplitudes: survival function log-log with the slope fits
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    sets = [(ref_label, ref.glitches.amplitude, "k")] + [(n, syn[n].glitches.amplitude, colors[n]) for n in names]
    for label, a, c in sets:
        a = np.sort(a[a > 0])
        if a.size:
            ax[0].loglog(a, 1.0 - np.arange(a.size) / a.size, drawstyle="steps-post", color=c, label=f"{label} (n={a.size})")
            ax[1].hist(np.log10(a), bins=40, histtype="step", density=True, color=c, label=label)
    # grey: the reference's halves, or the other references
    ref_a = ref.glitch_block < ref.n_blocks // 2
    grey = [(o.glitches.amplitude, "--") for o in others] or [(ref.glitches.amplitude[ref_a], ":"), (ref.glitches.amplitude[~ref_a], "--")]
    for hx, ls in grey:
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
                sl = q.get("alpha_reference") if label == ref_label else result.sets[label].metrics["amplitude_slope"].quantities.get("alpha_synthetic")
                a = a[a > 0]
                if sl and np.isfinite(sl) and a.size:
                    frac = np.mean(a >= cut)
                    xx = np.geomspace(cut, max(a.max(), cut * 1.01), 20)
                    ax[0].loglog(xx, frac * (xx / cut) ** (1 - sl), color=c, lw=0.8, ls="-.", label=f"{label}: alpha = {sl:.2f}")
    ax[0].set_xlabel("glitch amplitude (TOD units)")
    ax[0].set_ylabel("fraction of glitches above")
    ax[0].legend(fontsize=7)
    ax[0].set_title(f"Amplitude survival function (grey: {'the other references' if others else 'reference halves'})")
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
        for label, an, c in [(ref_label, ref, "k")] + [(n, syn[n], colors[n]) for n in names]:
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
    for label, an, c in [(ref_label, ref, "k")] + [(n, syn[n], colors[n]) for n in names]:
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
    ax[0].loglog(f[m], ref.psd_mean[m], color="k", label=ref_label)
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
                ax[1].errorbar(centres * 0.96, d0, e0, fmt="s", color="0.5", label="floor (B vs A)" if not others else "floor (B vs A, mean of the references)", ms=3)
    ax[1].axhline(0, color="k", lw=0.6)
    ax[1].set_xscale("log")
    ax[1].set_xlabel("octave centre (Hz)")
    ax[1].set_ylabel("ln(PSD / PSD_ref) per octave")
    ax[1].set_title("PSD per octave vs reference")
    ax[1].legend(fontsize=7)
    lags = np.array(result.config.acf_lags)
    for label, an, c in [(ref_label, ref, "k")] + [(n, syn[n], colors[n]) for n in names]:
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
        for label, v, c in zip([ref_label] + names, vals, ["k"] + [colors[n] for n in names]):
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
        ax[0].plot(clf["floor"].fpr, clf["floor"].tpr, color="0.5", label=f"{pd.get('classifier_floor_label', 'floor (ref A vs B)')}: AUC {clf['floor'].auc:.3f}")
    for n in names:
        if n in clf:
            ax[0].plot(clf[n].fpr, clf[n].tpr, color=colors[n], label=f"{n}: AUC {clf[n].auc:.3f}")
    ax[0].plot([0, 1], [0, 1], color="k", lw=0.5, ls="--")
    ax[0].set_xlabel("false positive rate (reference called synthetic)")
    ax[0].set_ylabel("true positive rate")
    ax[0].set_title("Classifier two-sample test (held-out windows" + (", against reference 1)" if others else ")"))
    ax[0].legend(fontsize=7)
    mem = pd.get("memorisation", {})
    if "floor" in mem and len(mem["floor"]):
        vals = [np.maximum(mem["floor"], -1.0)] + [np.maximum(mem[n], -1.0) for n in names if n in mem]
        allv = np.concatenate(vals)
        bins = np.linspace(allv.min(), allv.max() + 1e-9, 50)
        ax[1].hist(vals[0], bins=bins, histtype="stepfilled", color="0.8", density=True, label=f"floor: {ref_label} half A")
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
    for ax_, (label, an, c) in zip(axs[:, 0], [(ref_label, ref, "k")] + [(n, syn[n], colors[n]) for n in names]):
        x = an.example[0]
        ax_.plot(np.arange(x.size) / fs, x, color=c, lw=0.6)
        ax_.set_ylabel("TOD")
        ax_.set_title(f"{label}: detector 0, first {x.size / fs:.0f} s", fontsize=9, loc="left")
    axs[-1, 0].set_xlabel("time (s)")
    save(fig, "tod_examples")

    det = result.detection
    if det:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        curves = ([("reference" if not others else f"references (K={1 + len(others)}, pooled)", det["reference"], "k")] if det.get("reference") else [])
        curves += [(n, det["sets"][n], colors.get(n, "C0")) for n in det.get("sets", {})]
        for i, (label, c, col) in enumerate(curves):
            e = np.asarray(c["edges_sigma"], dtype=float)
            x = np.sqrt(e[:-1] * np.where(np.isfinite(e[1:]), e[1:], 2 * e[:-1])).clip(min=1.0) * (1 + 0.03 * i)
            ax.errorbar(x, c["efficiency"], yerr=c["error"], marker="o", ms=4, capsize=2, color=col, label=f"{label} ({c['n_hits']} direct hits)")
        ax.set_xscale("log")
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("height of the hit in the TOD (noise sigma)")
        ax.set_ylabel("fraction found by the glitch finder")
        ax.set_title("Detection efficiency against the truth table")
        ax.legend(fontsize=7)
        save(fig, "detection_efficiency")
    return out
