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
    profiles : ndarray (n_bands, n_basis, kernel) or None
        Mean pulse of the events of each amplitude band, per unit peak height, as taps of a
        ``kernel``-tap filter expanded in the sub-sample phase (:func:`mean_pulses`).
    band_edges : ndarray (n_bands + 1,) or None
        Amplitude edges of the bands (TOD units).
    """

    rise_s: float
    delay_s: float
    tau_s: np.ndarray
    amplitude: np.ndarray
    source: str
    exposure_s: float
    profiles: np.ndarray | None = None
    band_edges: np.ndarray | None = None

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


def mean_pulses(series, times, amps, edges: np.ndarray, kernel: int, n_basis: int) -> np.ndarray:
    """Mean pulse per amplitude band, by weighted least squares on the aligned events (truth times).

    For an event at ``t = n + p`` (``n`` its sample, ``p`` in [0, 1) its
    phase) of fitted height ``A``, the samples ``x[n + L] - baseline`` (``L =
    -h .. h``, ``h = kernel // 2``) divided by ``A`` are regressed on ``1, p,
    p^2, ...`` (weights ``A^2``: the noise is the same for all events) over
    the events of the band whose window holds no other event.  Returns
    ``(n_bands, n_basis, kernel)`` taps, tap ``h - L`` for lag ``L`` (the
    layout of a zero-padded ``Conv1d``).
    """
    h = kernel // 2
    lags = np.arange(-h, h + 1)
    n_bands = len(edges) - 1
    rows = [[] for _ in range(n_bands)]
    for x, t, a in zip(series, times, amps):
        ok = np.isfinite(a) & (a > 0)
        order = np.argsort(t)
        t, a, ok = t[order], a[order], ok[order]
        gap_before = np.diff(t, prepend=-np.inf)
        gap_after = np.diff(t, append=np.inf)
        n = np.floor(t).astype(np.int64)
        ok &= (gap_before > h + 8) & (gap_after > h + 1) & (n - h - 8 >= 0) & (n + h < x.size)
        band = np.clip(np.searchsorted(edges, a, side="right") - 1, 0, n_bands - 1)
        for e in np.flatnonzero(ok):
            base = np.median(x[n[e] - h - 8 : n[e] - h])
            rows[band[e]].append((x[n[e] + lags] - base, t[e] - n[e], a[e]))
    out = np.zeros((n_bands, n_basis, kernel))
    for b, r in enumerate(rows):
        if len(r) < 4 * n_basis:
            continue
        y = np.array([v[0] / v[2] for v in r])  # (n_ev, kernel) per unit height
        p = np.array([v[1] for v in r])
        w = np.array([v[2] for v in r])  # rows scaled by A: weights A^2
        design = p[:, None] ** np.arange(n_basis)[None, :]
        coef, *_ = np.linalg.lstsq(design * w[:, None], y * w[:, None], rcond=None)
        mid = (0.5 ** np.arange(n_basis)) @ coef  # the pulse at phase 1/2
        out[b] = coef[:, ::-1] / max(float(np.abs(mid).max()), 1e-12)
    return out


def fit_direct_hits(sources, *, use_truth: bool = True, max_events: int = 4000, kernel: int = 0, n_bands: int = 1, n_basis: int = 1) -> DirectFit | None:
    """Fit the direct hits of ``sources`` (:class:`crab.models.dataset.TodSource`, wafer signal removed).

    At most ``max_events`` events (the first of every row, in turn) enter the
    scan of rise and delay; every event enters the per-event fit.  With
    ``kernel`` > 0, also the mean pulse of ``n_bands`` amplitude bands (equal
    numbers of events) as ``kernel`` taps in ``n_basis`` powers of the phase
    (:func:`mean_pulses`).  None when there is no event.
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
        fit.band_edges = np.quantile(amp, np.linspace(0.0, 1.0, n_bands + 1))
        fit.profiles = mean_pulses(series, times, per_row, fit.band_edges, kernel, n_basis)
    return fit
