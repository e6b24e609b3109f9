"""Summary and plots of a TOD file, for ``crab inspect``.

- :func:`summarize_tod_file` reads a file's metadata, truth table and samples
  (streamed, bounded memory) and returns a dict of numbers;
- :func:`format_summary` turns it into the text ``crab inspect`` prints;
- :func:`plot_tod_stretch` draws a stretch of TOD with the hits marked;
- :func:`plot_energy_spectrum` draws the deposited-energy spectra by species
  and kind;
- :func:`write_inspection_plots` writes both as PNGs into a folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from crab.core.errors import InputError
from crab.core.units import format_duration
from crab.io.tod import (
    EVENT_KIND_DIRECT,
    EVENT_KIND_LABELS,
    EVENT_KIND_WAFER,
    EventTable,
    iter_tod_chunks,
    read_metadata,
    read_tod,
)


def species_names(config: dict[str, Any] | None) -> dict[int, str]:
    """Map charge number Z -> species label, from a Monte Carlo config (``{}`` if none)."""
    out: dict[int, str] = {}
    try:
        for s in (config or {}).get("spectra", {}).get("species", []):
            out[int(s["charge_z"])] = str(s["name"])
    except (TypeError, KeyError, ValueError):
        return {}
    return out


def _label(z: int, names: dict[int, str]) -> str:
    return names.get(int(z), f"Z={int(z)}")


def robust_rms(x: np.ndarray) -> float:
    """Noise RMS from the median absolute deviation of first differences (insensitive to glitches)."""
    d = np.diff(np.asarray(x, dtype=np.float64))
    if d.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0))


def summarize_tod_file(path: str | os.PathLike) -> dict[str, Any]:
    """Numbers describing a TOD file.

    Returns
    -------
    dict
        ``path, kind, detectors, n_detectors, sampling_rate_hz, n_samples,
        duration_s, units, seed, crab_version, phi_gv`` (if in the config),
        ``events`` (counts by kind, or None without truth), ``events_by_species``
        (``{kind: {species: count}}``), ``direct_rate_hz_per_detector``,
        ``wafer_rate_hz``, ``tod_stats`` (per detector: mean, min, max,
        robust noise RMS over the first chunk).

    Raises
    ------
    FileFormatError
        Missing, unreadable or not a crab TOD file.
    """
    meta, n_samples = read_metadata(path)
    head = read_tod(path, n_samples=0, check_finite=False)
    events = head.events
    fs = meta.sampling_rate_hz
    duration = n_samples / fs
    n_det = meta.n_detectors
    s_sum = np.zeros(n_det)
    s_min = np.full(n_det, np.inf)
    s_max = np.full(n_det, -np.inf)
    rms = np.zeros(n_det)
    n_bad = 0
    first = True
    for _, chunk in iter_tod_chunks(path, chunk_samples=1 << 18):
        c = chunk.astype(np.float64)
        bad = ~np.isfinite(c)
        n_bad += int(bad.sum())
        c = np.where(bad, 0.0, c)
        s_sum += c.sum(axis=1)
        s_min = np.minimum(s_min, c.min(axis=1))
        s_max = np.maximum(s_max, c.max(axis=1))
        if first:
            rms = np.array([robust_rms(row) for row in c])
            first = False
    names = species_names(meta.config)
    summary: dict[str, Any] = {
        "path": str(path),
        "kind": meta.kind,
        "detectors": meta.detectors,
        "n_detectors": n_det,
        "sampling_rate_hz": fs,
        "n_samples": n_samples,
        "duration_s": duration,
        "units": meta.units,
        "seed": meta.seed,
        "crab_version": meta.crab_version,
        "phi_gv": meta.config.get("phi_gv") if isinstance(meta.config, dict) else None,
        "n_nonfinite": n_bad,
        "tod_stats": {
            "mean": (s_sum / max(n_samples, 1)).tolist(),
            "min": s_min.tolist() if n_samples else [],
            "max": s_max.tolist() if n_samples else [],
            "noise_rms": rms.tolist(),
        },
        "events": None,
    }
    if events is not None:
        summary["events"] = events.count_by_kind()
        by_sp: dict[str, dict[str, int]] = {}
        for k, label in EVENT_KIND_LABELS.items():
            sel = events.charge_z[events.kind == k]
            zs, counts = np.unique(sel, return_counts=True)
            by_sp[label] = {_label(z, names): int(c) for z, c in zip(zs, counts)}
        summary["events_by_species"] = by_sp
        direct = events.detector[events.kind == EVENT_KIND_DIRECT]
        summary["direct_rate_hz_per_detector"] = (np.bincount(direct, minlength=n_det)[:n_det] / duration).tolist() if duration else []
        summary["wafer_rate_hz"] = float(np.sum(events.kind == EVENT_KIND_WAFER) / duration) if duration else 0.0
        e_direct = events.energy_kev[events.kind == EVENT_KIND_DIRECT]
        summary["direct_energy_kev_median"] = float(np.median(e_direct)) if e_direct.size else None
    return summary


def format_summary(s: dict[str, Any]) -> str:
    """The text printed by ``crab inspect``."""
    lines = [
        f"file:           {s['path']}",
        f"kind:           {s['kind']}" + (f" (seed {s['seed']}, crab {s['crab_version']})" if s.get("seed") is not None else f" (crab {s['crab_version']})"),
        f"duration:       {s['duration_s']:.6g} s ({format_duration(s['duration_s'])}), {s['n_samples']} samples",
        f"sampling rate:  {s['sampling_rate_hz']:g} Hz",
        f"detectors:      {s['n_detectors']} ({', '.join(s['detectors'][:6])}{', ...' if s['n_detectors'] > 6 else ''})",
        f"units:          {s['units']}",
    ]
    if s.get("phi_gv") is not None:
        lines.append(f"phi:            {s['phi_gv']:g} GV")
    st = s["tod_stats"]
    if st["mean"]:
        lines.append(
            f"TOD:            mean {np.mean(st['mean']):.3g}, min {np.min(st['min']):.3g}, max {np.max(st['max']):.3g} {s['units']}; "
            f"noise rms (robust) {np.median(st['noise_rms']):.3g} {s['units']}"
        )
    if s.get("n_nonfinite"):
        lines.append(f"WARNING:        {s['n_nonfinite']} NaN/inf samples")
    if s["events"] is None:
        lines.append("events:         none (no truth table in this file)")
    else:
        ev = s["events"]
        lines.append(f"events:         {sum(ev.values())} in total; " + ", ".join(f"{k} {v}" for k, v in ev.items()))
        for kind, sp in s["events_by_species"].items():
            if sp:
                lines.append(f"  {kind:<7} by species: " + ", ".join(f"{k} {v}" for k, v in sp.items()))
        rates = s["direct_rate_hz_per_detector"]
        if rates:
            lines.append(f"  direct rate per detector: {np.mean(rates):.3g} Hz (min {np.min(rates):.3g}, max {np.max(rates):.3g})")
        lines.append(f"  wafer rate: {s['wafer_rate_hz']:.3g} Hz")
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots
# matplotlib is imported in the plotting functions: it is heavy and only the plots need it
def _species_colors(zs: list[int]) -> dict[int, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {z: cmap(k % 10) for k, z in enumerate(sorted(zs))}


def plot_tod_stretch(path: str | os.PathLike, out_png: str | os.PathLike, start_s: float = 0.0, length_s: float = 60.0, max_detectors: int = 6) -> Path:
    """Plot ``length_s`` seconds of TOD from ``start_s`` with the hits marked.

    Direct hits are marked on their detector by a triangle coloured by species
    (area growing with the deposit); wafer hits by ticks along the bottom of
    every panel, and the largest ones (top 2 % of wafer deposits in the
    stretch) by a vertical line across all panels.
    """
    import matplotlib.pyplot as plt

    meta, n_total = read_metadata(path)
    fs = meta.sampling_rate_hz
    if start_s < 0 or start_s * fs >= n_total:
        raise InputError(f"plot start {start_s} s is outside the file (duration {n_total / fs:g} s)")
    k0 = int(start_s * fs)
    n = max(2, int(round(length_s * fs)))
    n_det = min(meta.n_detectors, max_detectors)
    f = read_tod(path, detectors=list(range(n_det)), start_sample=k0, n_samples=n, check_finite=False)
    t = f.time_s
    names = species_names(meta.config)
    fig, axes = plt.subplots(n_det, 1, figsize=(11, 1.9 * n_det + 0.8), sharex=True, squeeze=False)
    axes = axes[:, 0]
    ev = f.events
    t_lo, t_hi = t[0], t[-1] + 1.0 / fs
    colors: dict[int, Any] = {}
    if ev is not None:
        ev = ev.select((ev.time_s >= t_lo) & (ev.time_s < t_hi))
        colors = _species_colors(sorted(set(ev.charge_z.tolist())))
    for d, ax in enumerate(axes):
        ax.plot(t, f.tod[d], lw=0.7, color="0.15")
        ax.set_ylabel(f"{f.meta.detectors[d]}\n[{meta.units}]", fontsize=8)
        if ev is None or len(ev) == 0:
            continue
        w = ev.select(ev.kind == EVENT_KIND_WAFER)
        y0, y1 = ax.get_ylim()
        if len(w):
            ax.plot(w.time_s, np.full(len(w), y0), "|", color="tab:blue", ms=5, alpha=0.5)
            big = w.energy_kev >= np.percentile(w.energy_kev, 98)
            for tw in w.time_s[big]:
                ax.axvline(tw, color="tab:blue", lw=0.6, ls="--", alpha=0.6)
        dh = ev.select((ev.kind == EVENT_KIND_DIRECT) & (ev.detector == d))
        for z in sorted(set(dh.charge_z.tolist())):
            sel = dh.select(dh.charge_z == z)
            size = 12 + 10 * np.log10(1 + sel.energy_kev)
            ax.scatter(sel.time_s, np.full(len(sel), y1), marker="v", s=size, color=colors[z], label=_label(z, names), zorder=3, edgecolors="k", linewidths=0.3)
        ax.set_ylim(y0, y1 + 0.08 * (y1 - y0))
    handles = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    from matplotlib.lines import Line2D

    handles["wafer hit"] = Line2D([], [], color="tab:blue", marker="|", ls="--", lw=0.6)
    axes[0].legend(handles.values(), [f"direct {k}" if k != "wafer hit" else k for k in handles], fontsize=7, ncol=min(6, len(handles)), loc="upper right", framealpha=0.8)
    axes[-1].set_xlabel("time [s]")
    axes[0].set_title(f"{Path(path).name}: {meta.kind} TOD, {fs:g} Hz, {t_lo:.6g}-{t_hi:.6g} s", fontsize=10)
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_energy_spectrum(events: EventTable, out_png: str | os.PathLike, duration_s: float, names: dict[int, str] | None = None) -> Path:
    """Deposited-energy spectra dN/dE (s^-1 keV^-1) by species, one panel per kind (direct, wafer)."""
    import matplotlib.pyplot as plt

    names = names or {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = _species_colors(sorted(set(events.charge_z.tolist())))
    for ax, (k, label) in zip(axes, EVENT_KIND_LABELS.items()):
        sel = events.select(events.kind == k)
        ax.set_title(f"{label} hits ({len(sel)})")
        ax.set_xlabel("deposited energy [keV]")
        ax.set_ylabel("dN/dE [s$^{-1}$ keV$^{-1}$]")
        if len(sel) == 0:
            ax.text(0.5, 0.5, "no hits", ha="center", va="center", transform=ax.transAxes)
            continue
        e = sel.energy_kev[sel.energy_kev > 0]
        lo, hi = np.log10(e.min()), np.log10(e.max())
        bins = np.logspace(lo - 0.05, hi + 0.05, max(10, min(60, int(8 * (hi - lo + 0.1)) + 1)))
        width = np.diff(bins)
        h_all, _ = np.histogram(e, bins)
        ax.stairs(h_all / width / duration_s, bins, color="k", lw=1.4, label="all")
        for z in sorted(set(sel.charge_z.tolist())):
            h, _ = np.histogram(sel.energy_kev[sel.charge_z == z], bins)
            ax.stairs(h / width / duration_s, bins, color=colors[z], label=_label(z, names))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_inspection_plots(path: str | os.PathLike, out_dir: str | os.PathLike, start_s: float = 0.0, length_s: float = 60.0) -> list[Path]:
    """Write ``tod_stretch.png`` and (with a truth table) ``energy_spectrum.png`` into ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    meta, n = read_metadata(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_tod_stretch(path, out / "tod_stretch.png", start_s=start_s, length_s=length_s)]
    ev = read_tod(path, n_samples=0, check_finite=False).events
    if ev is not None:
        written.append(plot_energy_spectrum(ev, out / "energy_spectrum.png", n / meta.sampling_rate_hz, species_names(meta.config)))
    return written
