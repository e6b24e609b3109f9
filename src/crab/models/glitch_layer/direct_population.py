"""The direct hits of training TOD: their pulse shape and amplitude law, fitted per event.

The event times come from the truth table when the file has one (every
direct hit, however small), else from the glitch finder
(:func:`crab.analysis.glitches.detect_glitches`: the glitches above its
threshold, their start one sample and a half before the peak; the scanned
delay absorbs the offset).  Each event's ``A`` and ``tau`` are then fitted
with one rise and delay for all (:func:`crab.models.glitch_layer.direct_fit.fit_direct_shape`,
:func:`crab.models.glitch_layer.direct_fit.fit_glitches`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crab.models.glitch_layer.direct_fit import fit_direct_shape, fit_glitches
from crab.models.glitch_layer.wafer_fit import split_truth

#: Detected glitches start this many samples before their peak (the fit's delay grid covers the rest).
DETECTED_LEAD_SAMPLES = 1.5


@dataclass
class DirectFit:
    """Fitted direct hits of training TOD.

    Attributes
    ----------
    rise_s, delay_s : float
        Rise time and delay of the pulse template after the hit (s).
    tau_s : ndarray
        Fitted decay time of every event (s).
    amplitude : ndarray
        Fitted peak height of every event (TOD units).
    source : str
        ``"truth"`` or ``"detected"``.
    exposure_s : float
        Detector-seconds of TOD the events come from.
    profiles : ndarray (n_bands, n_phases, kernel) or None
        Mean pulse of the events of each height band and sub-sample phase, per unit fitted
        height, time order (:func:`pulse_table`).
    band_log_centre : ndarray (n_bands,) or None
        ``ln`` of each band's median area (TOD units x samples).
    area : ndarray or None
        The area (TOD units x samples) of every event with a window (the unit of the table).
    """

    rise_s: float
    delay_s: float
    tau_s: np.ndarray
    amplitude: np.ndarray
    source: str
    exposure_s: float
    profiles: np.ndarray | None = None
    band_log_centre: np.ndarray | None = None
    area: np.ndarray | None = None

    @property
    def events_per_s(self) -> float:
        """Fitted events per second per detector (Hz)."""
        return self.amplitude.size / self.exposure_s

    def tau_quantiles_s(self, q) -> np.ndarray:
        """Quantiles ``q`` of the decay times (s) of the events above the median amplitude (well measured)."""
        big = self.amplitude >= np.median(self.amplitude) if self.amplitude.size else np.zeros(0, bool)
        return np.quantile(self.tau_s[big], q) if np.any(big) else np.full(np.size(q), np.nan)


def event_times(sources, use_truth: bool = True) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """``(series, event_samples, source)``: every detector row of ``sources`` and its direct-hit start times (samples)."""
    from crab.analysis.glitches import detect_glitches

    series, times = [], []
    truth = use_truth and all(s.events is not None for s in sources)
    for s in sources:
        x = np.asarray(s.tod, dtype=np.float64)
        if truth:
            per_det = split_truth(s.events, x.shape[0], x.shape[1], s.sampling_rate_hz, s.start_time_s)["direct_t"]
        else:
            gl = detect_glitches(x, s.sampling_rate_hz)
            per_det = [gl.peak_index[gl.detector == d] - DETECTED_LEAD_SAMPLES for d in range(x.shape[0])]
        series.extend(list(x))
        times.extend(per_det)
    return series, times, "truth" if truth else "detected"


def detected_phases(series, starts) -> list[np.ndarray]:
    """Sub-sample start times (samples) of detected glitches from their whole-sample ones
    (``peak - DETECTED_LEAD_SAMPLES``, :func:`event_times`), for the pulse table.

    The phase of a hit between two samples is uniform, and the balance of the
    samples around the peak, ``(x[k + 1] - x[k - 1]) / (x[k - 1] + x[k] + x[k + 1])``,
    grows with it: the phase is estimated by that balance's rank among all
    the glitches (its empirical distribution function), and the start is
    ``peak - DETECTED_LEAD_SAMPLES - 1/2 + phase`` (a constant offset only
    moves the table's pulses).  A pulse whose shape does not depend on the
    phase (a decay much longer than a sample) gets random phases, which is
    harmless there.
    """
    peaks = [np.round(np.asarray(t) + DETECTED_LEAD_SAMPLES).astype(np.int64) for t in starts]
    bal = []
    for x, k in zip(series, peaks):
        k = np.asarray(k, dtype=np.int64)
        inside = (k >= 1) & (k + 1 < x.size)
        kk = np.clip(k, 1, max(x.size - 2, 1))
        base = np.median(x) if x.size else 0.0
        m, c, q = x[kk - 1] - base, x[kk] - base, x[kk + 1] - base
        bal.append(np.where(inside, (q - m) / np.maximum(np.abs(m + c + q), 1e-300), 0.0))
    allb = np.concatenate(bal) if bal else np.zeros(0)
    order = np.sort(allb)
    return [
        np.asarray(k, dtype=np.float64) - DETECTED_LEAD_SAMPLES - 0.5 + (np.searchsorted(order, b, side="left") + 0.5) / max(allb.size, 1)
        for k, b in zip(peaks, bal)
    ]


def band_edges(amplitude: np.ndarray, n_bands: int) -> np.ndarray:
    """Edges (n_bands + 1) of height bands, at the quantiles ``1 - 2^-k`` (k = 1 .. n_bands - 1) of
    ``amplitude``: the lower half one band, each further band half the events of the one below,
    so the rare large glitches (where a TES saturates) get bands of their own."""
    a = np.asarray(amplitude, dtype=np.float64)
    a = a[np.isfinite(a)]
    q = 1.0 - 0.5 ** np.arange(1, n_bands)
    inner = np.quantile(a, q) if a.size else np.arange(1.0, n_bands)
    return np.concatenate([[-np.inf], inner, [np.inf]])


def _phase_design(p: np.ndarray, n_phases: int) -> np.ndarray:
    """Linear interpolation weights (n, n_phases) of phases ``p`` in [0, 1] between ``j / (n_phases - 1)``."""
    d = np.zeros((p.size, n_phases))
    if n_phases == 1:
        d[:, 0] = 1.0
        return d
    x = np.clip(p, 0.0, 1.0) * (n_phases - 1)
    j = np.clip(np.floor(x).astype(np.int64), 0, n_phases - 2)
    d[np.arange(p.size), j] = 1.0 - (x - j)
    d[np.arange(p.size), j + 1] = x - j
    return d


def _band_pulses(win, amp, phase, band, clean, n_bands: int, n_phases: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-area mean pulses (n_bands, n_phases, kernel) of the ``clean`` windows of each band, and which bands had enough.

    The windows divided by their amplitude ``amp`` are regressed on the phase weights, weighted by
    ``min(amp, band median)^2``: inverse-variance weights for white noise, capped so that the few
    largest glitches of a band do not make its shape alone.
    """
    table = np.zeros((n_bands, n_phases, win.shape[1]))
    populated = np.zeros(n_bands, dtype=bool)
    for b in range(n_bands):
        k = clean & (band == b) & (amp > 0)
        if k.sum() < 2 * n_phases:
            continue
        a = amp[k]
        w = np.minimum(a, np.median(a))  # row weights: squared in the least squares
        d = _phase_design(phase[k], n_phases) * w[:, None]
        ridge = 1e-6 * np.trace(d.T @ d) / n_phases * np.eye(n_phases)
        mean = np.linalg.solve(d.T @ d + ridge, d.T @ (win[k] / a[:, None] * w[:, None]))  # (n_phases, kernel)
        area = float(mean.sum(axis=1).mean())
        if area > 0:
            table[b], populated[b] = mean / area, True
    filled = np.flatnonzero(populated)
    for b in range(n_bands):  # empty bands: the nearest populated band's pulses
        if not populated[b] and filled.size:
            table[b] = table[filled[np.argmin(np.abs(filled - b))]]
    return table, populated


def pulse_table(series, times, kernel: int, n_phases: int, n_bands: int, iterations: int = 3) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Mean pulse per height band and sub-sample phase, by least squares on the aligned events.

    An event at ``t = n + p`` (``n`` its sample, ``p`` in [0, 1) its phase)
    has the window ``x[n + L] - baseline`` (``L = -h .. h``, ``h = kernel //
    2``).  The windows of a band's events that hold no other event are
    regressed on the linear interpolation weights of ``p`` between the phases
    ``j / (n_phases - 1)`` (:func:`_band_pulses`): the band's mean pulse per
    unit amplitude at each phase, divided by its mean sum over the taps, so that a pulse of the table has unit area and an
    event's *amplitude* is its area (TOD units x samples): the least-squares
    projection of its window on its band's pulse at its phase.  The bands
    (:func:`band_edges`) are of that amplitude, which does not depend on the
    phase (a fitted peak height does, for pulses shorter than a sample):
    started from the sum of the samples ``L = -2 .. 3`` and refined
    ``iterations`` times.  A band with too few events takes its nearest
    populated neighbour's pulses.

    Returns
    -------
    table : ndarray (n_bands, n_phases, kernel)
        Pulses of unit area, time order (tap ``j`` at lag ``j - h``): the
        layout of :class:`crab.models.gan.network.AdditiveGlitches`.
    log_centre : ndarray (n_bands,)
        ``ln`` of each band's median amplitude (area), increasing.
    areas : list of ndarray
        The amplitude (area) of every event of each series (NaN where it has no window).
    """
    h = kernel // 2
    lags = np.arange(-h, h + 1)
    win, phase, where = [], [], []
    for r, (x, t) in enumerate(zip(series, times)):
        t = np.asarray(t, dtype=np.float64)
        n = np.floor(t).astype(np.int64)
        inside = (n - h - 8 >= 0) & (n + h < x.size)
        order = np.argsort(t)
        gap_before, gap_after = np.empty(t.size), np.empty(t.size)
        gap_before[order] = np.diff(t[order], prepend=-np.inf)
        gap_after[order] = np.diff(t[order], append=np.inf)
        for e in np.flatnonzero(inside):
            base = np.median(x[n[e] - h - 8 : n[e] - h])
            win.append(x[n[e] + lags] - base)
            phase.append(t[e] - n[e])
            where.append((r, e, bool(gap_before[e] > h + 8 and gap_after[e] > h + 1)))
    areas = [np.full(len(t), np.nan) for t in times]
    if not win:
        return np.zeros((n_bands, n_phases, kernel)), np.log(np.geomspace(1.0, 10.0, n_bands)), areas
    win, phase = np.array(win), np.array(phase)
    clean = np.array([w[2] for w in where], dtype=bool)
    amp = win[:, max(h - 2, 0) : h + 4].sum(axis=1)
    for _ in range(max(1, iterations)):
        band = np.clip(np.searchsorted(band_edges(amp, n_bands), amp, side="right") - 1, 0, n_bands - 1)
        table, populated = _band_pulses(win, amp, phase, band, clean, n_bands, n_phases)
        if not populated.any():
            return table, np.log(np.geomspace(1.0, 10.0, n_bands)), areas
        pulses = np.einsum("np,npk->nk", _phase_design(phase, n_phases), table[band])
        amp = np.einsum("nk,nk->n", win, pulses) / np.maximum(np.einsum("nk,nk->n", pulses, pulses), 1e-300)
    for (r, e, _), a in zip(where, amp):
        areas[r][e] = a
    centre = np.array([np.median(amp[(band == b) & (amp > 0)]) if np.any((band == b) & (amp > 0)) else np.nan for b in range(n_bands)])
    good = np.flatnonzero(np.isfinite(centre))
    centre = np.interp(np.arange(n_bands), good, np.log(centre[good])) if good.size else np.zeros(n_bands)
    return table, np.maximum.accumulate(centre) + 1e-6 * np.arange(n_bands), areas


def fit_direct_hits(sources, *, use_truth: bool = True, max_events: int = 4000, kernel: int = 0, n_bands: int = 1, n_phases: int = 1) -> DirectFit | None:
    """Fit the direct hits of ``sources`` (:class:`crab.models.dataset.TodSource`, wafer signal removed).

    At most ``max_events`` events (the first of every row, in turn) enter the
    scan of rise and delay; every event enters the per-event fit.  With
    ``kernel`` > 0, also the mean pulse of ``n_bands`` height bands
    (:func:`band_edges`) and ``n_phases`` sub-sample phases as ``kernel`` taps
    (:func:`pulse_table`).  None when there is no event.
    """
    series, times, source = event_times(sources, use_truth)
    fs = float(sources[0].sampling_rate_hz)
    if sum(t.size for t in times) == 0:
        return None
    share = max(1, max_events // max(1, len(times)))
    rise, delay, _ = fit_direct_shape(series, [t[:share] for t in times], fs)
    amps, taus, per_row = [], [], []
    for x, t in zip(series, times):
        a = np.full(t.size, np.nan)
        if t.size:
            a, tau, ok = fit_glitches(x, t, fs, rise_s=rise, delay_s=delay)
            ok &= np.isfinite(a) & (a > 0)
            amps.append(a[ok])
            taus.append(tau[ok])
        per_row.append(np.where(np.isfinite(a), a, np.nan))
    amp = np.concatenate(amps) if amps else np.zeros(0)
    exposure_s = sum(x.size for x in series) / fs
    fit = DirectFit(float(rise), float(delay), np.concatenate(taus) if taus else np.zeros(0), amp, source, exposure_s)
    if kernel and amp.size:
        table_times = times if source == "truth" else detected_phases(series, times)
        fit.profiles, fit.band_log_centre, areas = pulse_table(series, table_times, kernel, n_phases, n_bands)
        area = np.concatenate(areas)
        fit.area = area[np.isfinite(area) & (area > 0)]
    return fit
