"""The one glitch detector of CRAB, per-glitch features, and coincidences.

Every glitch statistic of the validation (rates, amplitudes, decay times,
inter-arrival times, coincidences, seams) is computed with the detector
defined here, applied identically to the Monte Carlo reference and to the
synthetic TOD, so that detector inefficiencies cancel in the comparison.

Detector (:func:`detect_glitches`), per detector row ``x`` sampled at ``fs``:

1. **Baseline** ``b``: running median of ``x`` over ``baseline_window_s``
   (odd number of samples, at least 3; the series is extended at both ends
   by repeating its end values so the edges are not pulled to zero).
   ``y = x - b`` is the baseline-subtracted TOD; glitches are positive.
2. **Noise level** ``sigma``: the larger of two robust estimates on ``y``:
   the MAD of the first differences / sqrt(2)
   (:func:`crab.core.stats.robust_sigma`) and 1.4826 * MAD of ``y`` itself.
   Both equal the RMS for white noise; taking the larger keeps the false
   alarm rate low when the noise is correlated from sample to sample.
3. **Threshold**: samples with ``y > threshold_sigma * sigma`` (default 5).
4. **Merging**: contiguous above-threshold samples form a run; runs separated
   by at most ``merge_gap_samples`` below-threshold samples are merged into
   one glitch (a noisy tail dipping under the threshold is not a new glitch).
5. **Features** of each glitch (run ``[start, stop)``):

   - ``peak_index`` / ``peak_time_s``: sample of the maximum of ``y`` in the run;
   - ``amplitude``: ``y`` at the peak (TOD units, pW), and ``amplitude_sigma``
     = amplitude / sigma;
   - ``extent``: the run extended forwards and backwards while
     ``y > tail_sigma * sigma`` (default 1), at most ``max_tail_s`` after the
     peak, never into the neighbouring glitch;
   - ``integral``: sum of ``y`` over the extent / fs (pW s, an energy-like
     quantity);
   - ``decay_time_s``: weighted least-squares fit of ``ln y`` against time on
     the peak and the consecutive samples after it with
     ``y > decay_min_sigma * sigma`` (default 3; at most
     ``max_decay_samples``), weights ``y**2`` (the inverse variance of
     ``ln y``).  ``NaN`` when no sample after the peak is above that level
     (*unresolved*: faster than the sampling) or the fit does not decay;
   - ``duration_samples``: number of samples of the merged run.

Coincidences (:func:`find_coincidences`): the peaks of all detectors of one
wafer are sorted in time and chained into clusters when consecutive peaks are
at most ``coincidence_window_s`` apart; a cluster touching two or more
distinct detectors is a coincidence.  Detectors are grouped into wafers by
the part of their name before the first ``_`` (``W00_D001`` -> ``W00``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.signal

from crab.core.errors import InputError
from crab.core.stats import robust_sigma

_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class GlitchDetectorConfig:
    """Parameters of the glitch detector (see the module docstring).

    Attributes
    ----------
    threshold_sigma : float
        Detection threshold in units of the robust noise sigma.
    baseline_window_s : float
        Length of the running-median baseline (s).
    merge_gap_samples : int
        Above-threshold runs separated by at most this many samples merge.
    tail_sigma : float
        The extent used for the integral follows ``y`` down to this many sigma.
    max_tail_s : float
        Longest extent after the peak (s).
    decay_min_sigma : float
        Samples after the peak used by the decay fit are above this many sigma.
    max_decay_samples : int
        Most samples after the peak used by the decay fit.
    coincidence_window_s : float
        Largest gap between consecutive peaks of one coincidence cluster (s).
    """

    threshold_sigma: float = 5.0
    baseline_window_s: float = 5.0
    merge_gap_samples: int = 2
    tail_sigma: float = 1.0
    max_tail_s: float = 2.0
    decay_min_sigma: float = 3.0
    max_decay_samples: int = 32
    coincidence_window_s: float = 0.2

    def __post_init__(self) -> None:
        if not self.threshold_sigma > 0:
            raise InputError(f"threshold_sigma must be > 0, got {self.threshold_sigma}")
        if not self.baseline_window_s > 0:
            raise InputError(f"baseline_window_s must be > 0 s, got {self.baseline_window_s}")
        if self.merge_gap_samples < 0 or self.max_decay_samples < 1:
            raise InputError("merge_gap_samples must be >= 0 and max_decay_samples >= 1")
        if self.coincidence_window_s < 0 or self.max_tail_s < 0:
            raise InputError("coincidence_window_s and max_tail_s must be >= 0")

    def to_dict(self) -> dict:
        return asdict(self)


_COLUMNS = {
    "detector": np.int32,
    "peak_index": np.int64,
    "peak_time_s": np.float64,
    "amplitude": np.float64,
    "amplitude_sigma": np.float64,
    "start_index": np.int64,
    "stop_index": np.int64,
    "duration_samples": np.int32,
    "integral": np.float64,
    "decay_time_s": np.float64,
}


@dataclass
class GlitchTable:
    """Detected glitches of a (n_detectors, n_samples) TOD, one row per glitch.

    Rows are sorted by detector, then time.  ``sigma`` holds the noise level
    of every detector; ``n_samples`` and ``sampling_rate_hz`` the exposure.

    Attributes
    ----------
    detector, peak_index, peak_time_s, amplitude, amplitude_sigma, start_index,
    stop_index, duration_samples, integral, decay_time_s : ndarray
        Per-glitch columns (see the module docstring; times relative to the
        first sample, amplitudes in TOD units, integral in units * s).
    sigma : ndarray, shape (n_detectors,)
        Robust noise level of each detector (TOD units).
    n_samples : int
    sampling_rate_hz : float
    """

    detector: np.ndarray
    peak_index: np.ndarray
    peak_time_s: np.ndarray
    amplitude: np.ndarray
    amplitude_sigma: np.ndarray
    start_index: np.ndarray
    stop_index: np.ndarray
    duration_samples: np.ndarray
    integral: np.ndarray
    decay_time_s: np.ndarray
    sigma: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_samples: int = 0
    sampling_rate_hz: float = 1.0

    def __post_init__(self) -> None:
        for name, dt in _COLUMNS.items():
            setattr(self, name, np.ascontiguousarray(getattr(self, name), dtype=dt).reshape(-1))
        self.sigma = np.asarray(self.sigma, dtype=np.float64).reshape(-1)

    def __len__(self) -> int:
        return len(self.peak_index)

    @property
    def n_detectors(self) -> int:
        return len(self.sigma)

    @property
    def exposure_detector_hours(self) -> float:
        """Detector-hours observed (n_detectors * duration)."""
        return self.n_detectors * self.n_samples / self.sampling_rate_hz / 3600.0

    def select(self, mask: np.ndarray) -> "GlitchTable":
        """Rows where ``mask`` is true (or at the given indices); same exposure."""
        return GlitchTable(
            **{c: getattr(self, c)[mask] for c in _COLUMNS},
            sigma=self.sigma,
            n_samples=self.n_samples,
            sampling_rate_hz=self.sampling_rate_hz,
        )

    def columns(self) -> dict[str, np.ndarray]:
        """The per-glitch columns as a dict of arrays."""
        return {c: getattr(self, c) for c in _COLUMNS}

    @staticmethod
    def empty(n_detectors: int, n_samples: int, sampling_rate_hz: float) -> "GlitchTable":
        return GlitchTable(**{c: np.zeros(0, dt) for c, dt in _COLUMNS.items()}, sigma=np.zeros(n_detectors), n_samples=n_samples, sampling_rate_hz=sampling_rate_hz)


# --------------------------------------------------------------------------- baseline and noise
def baseline_window_samples(sampling_rate_hz: float, window_s: float) -> int:
    """Odd number of samples (>= 3) of the running-median baseline."""
    n = int(round(window_s * sampling_rate_hz))
    n = max(3, n)
    return n if n % 2 else n + 1


def running_median(x: np.ndarray, window_samples: int) -> np.ndarray:
    """Running median along the last axis (odd window), edges extended by their end values."""
    a = np.asarray(x, dtype=np.float64)
    w = int(window_samples) | 1
    rows = np.atleast_2d(a)
    out = np.empty_like(rows)
    h = w // 2
    for i, r in enumerate(rows):
        if r.size == 0:
            out[i] = r
            continue
        ext = np.concatenate([np.full(h, r[0]), r, np.full(h, r[-1])])
        out[i] = scipy.signal.medfilt(ext, w)[h : h + r.size]
    return out.reshape(a.shape)


def noise_sigma(y: np.ndarray) -> float:
    """Robust noise level of a baseline-subtracted series (step 2 of the detector)."""
    y = np.asarray(y, dtype=np.float64)
    s_diff = robust_sigma(y)
    s_mad = _MAD_TO_SIGMA * float(np.median(np.abs(y - np.median(y))))
    return float(max(s_diff, s_mad))


def baseline_subtract(tod: np.ndarray, sampling_rate_hz: float, config: GlitchDetectorConfig = GlitchDetectorConfig()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps 1-2 of the detector for a (n_detectors, n_samples) TOD.

    Returns
    -------
    baseline : ndarray (n_detectors, n_samples), float64
    y : ndarray (n_detectors, n_samples), float64
        ``tod - baseline``.
    sigma : ndarray (n_detectors,)
        Robust noise level of each row of ``y``.
    """
    x = np.atleast_2d(np.asarray(tod, dtype=np.float64))
    if x.ndim != 2:
        raise InputError(f"TOD must be (n_detectors, n_samples), got shape {np.shape(tod)}")
    if x.shape[1] < 3:
        raise InputError(f"need at least 3 samples to detect glitches, got {x.shape[1]}")
    w = baseline_window_samples(sampling_rate_hz, config.baseline_window_s)
    base = running_median(x, w)
    y = x - base
    sigma = np.array([noise_sigma(r) for r in y])
    sigma[~(sigma > 0)] = np.finfo(np.float64).tiny
    return base, y, sigma


# --------------------------------------------------------------------------- detection
def _runs(mask: np.ndarray, merge_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Start/stop indices of True runs, merging runs separated by <= merge_gap False samples."""
    m = np.concatenate([[False], mask, [False]]).astype(np.int8)
    d = np.diff(m)
    starts = np.flatnonzero(d == 1)
    stops = np.flatnonzero(d == -1)
    if len(starts) > 1 and merge_gap > 0:
        gaps = starts[1:] - stops[:-1]
        keep = gaps > merge_gap
        starts = np.concatenate([starts[:1], starts[1:][keep]])
        stops = np.concatenate([stops[:-1][keep], stops[-1:]])
    return starts, stops


def _decay_time(seg: np.ndarray, dt: float) -> float:
    """Weighted log-linear fit of a decaying segment (first point = peak); NaN if unresolved."""
    if seg.size < 2:
        return float("nan")
    t = np.arange(seg.size) * dt
    w = seg**2
    ly = np.log(seg)
    sw = w.sum()
    tm = (w * t).sum() / sw
    lm = (w * ly).sum() / sw
    var_t = (w * (t - tm) ** 2).sum()
    if var_t <= 0:
        return float("nan")
    slope = (w * (t - tm) * (ly - lm)).sum() / var_t
    return float(-1.0 / slope) if slope < 0 else float("nan")


def detect_glitches_in_row(y: np.ndarray, sigma: float, sampling_rate_hz: float, config: GlitchDetectorConfig = GlitchDetectorConfig(), detector: int = 0) -> dict[str, np.ndarray]:
    """Steps 3-5 of the detector on one baseline-subtracted row; returns the columns."""
    y = np.asarray(y, dtype=np.float64)
    n = y.size
    fs = float(sampling_rate_hz)
    dt = 1.0 / fs
    thr = config.threshold_sigma * sigma
    starts, stops = _runs(y > thr, config.merge_gap_samples)
    k = len(starts)
    out = {c: np.zeros(k, dtype=dt_) for c, dt_ in _COLUMNS.items()}
    if k == 0:
        return out
    peaks = np.array([s + int(np.argmax(y[s:e])) for s, e in zip(starts, stops)], dtype=np.int64)
    amps = y[peaks]
    # extent: follow y while above tail level; indices of samples at or below the tail level
    low = np.flatnonzero(y <= config.tail_sigma * sigma)
    # first low sample after each stop (exclusive end of extent)
    j = np.searchsorted(low, stops, side="left")
    ext_stop = np.where(j < len(low), low[np.minimum(j, len(low) - 1)], n)
    max_tail = int(round(config.max_tail_s * fs))
    ext_stop = np.minimum(ext_stop, peaks + max_tail + 1)
    next_start = np.concatenate([starts[1:], [n]])
    ext_stop = np.minimum(ext_stop, next_start)
    ext_stop = np.maximum(ext_stop, stops)
    # last low sample before each start (extent starts after it)
    j0 = np.searchsorted(low, starts, side="left") - 1
    ext_start = np.where(j0 >= 0, low[np.maximum(j0, 0)] + 1, 0)
    prev_stop = np.concatenate([[0], ext_stop[:-1]])
    ext_start = np.minimum(np.maximum(ext_start, prev_stop), starts)
    csum = np.concatenate([[0.0], np.cumsum(y)])
    integral = (csum[ext_stop] - csum[ext_start]) * dt
    # decay: consecutive samples after the peak above decay level
    dec_low = np.flatnonzero(y <= config.decay_min_sigma * sigma)
    jd = np.searchsorted(dec_low, peaks, side="right")
    dec_stop = np.where(jd < len(dec_low), dec_low[np.minimum(jd, len(dec_low) - 1)], n)
    dec_stop = np.minimum(dec_stop, peaks + config.max_decay_samples + 1)
    dec_stop = np.minimum(dec_stop, next_start)
    decay = np.array([_decay_time(y[p:e], dt) for p, e in zip(peaks, dec_stop)], dtype=np.float64)
    out.update(
        detector=np.full(k, detector, np.int32),
        peak_index=peaks,
        peak_time_s=peaks * dt,
        amplitude=amps,
        amplitude_sigma=amps / sigma,
        start_index=ext_start.astype(np.int64),
        stop_index=ext_stop.astype(np.int64),
        duration_samples=(stops - starts).astype(np.int32),
        integral=integral,
        decay_time_s=decay,
    )
    return out


def detect_glitches(tod: np.ndarray, sampling_rate_hz: float, config: GlitchDetectorConfig = GlitchDetectorConfig(), *, prepared: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> GlitchTable:
    """Detect glitches in a (n_detectors, n_samples) TOD (see the module docstring).

    Parameters
    ----------
    tod : ndarray, shape (n_detectors, n_samples) or (n_samples,)
        TOD in its units (pW); glitches positive.
    sampling_rate_hz : float
        Sampling rate (Hz).
    config : GlitchDetectorConfig
        Detector parameters.
    prepared : (baseline, y, sigma), optional
        Output of :func:`baseline_subtract` if already computed.

    Returns
    -------
    GlitchTable
    """
    if not sampling_rate_hz > 0:
        raise InputError(f"sampling_rate_hz must be > 0, got {sampling_rate_hz}")
    x = np.atleast_2d(np.asarray(tod))
    _, y, sigma = prepared if prepared is not None else baseline_subtract(x, sampling_rate_hz, config)
    cols = [detect_glitches_in_row(y[d], sigma[d], sampling_rate_hz, config, detector=d) for d in range(y.shape[0])]
    merged = {c: np.concatenate([col[c] for col in cols]) for c in _COLUMNS}
    return GlitchTable(**merged, sigma=sigma, n_samples=y.shape[1], sampling_rate_hz=float(sampling_rate_hz))


# --------------------------------------------------------------------------- coincidences
def wafer_of(detector_names: list[str]) -> np.ndarray:
    """Wafer index of every detector, from the name prefix before the first ``_``."""
    prefixes = [str(n).split("_", 1)[0] if "_" in str(n) else "" for n in detector_names]
    uniq = {p: i for i, p in enumerate(dict.fromkeys(prefixes))}
    return np.array([uniq[p] for p in prefixes], dtype=np.int64)


@dataclass
class Coincidences:
    """Clusters of glitch peaks close in time across the detectors of a wafer.

    Attributes
    ----------
    cluster : ndarray (n_glitches,)
        Cluster index of every glitch (row of the table).
    multiplicity : ndarray (n_clusters,)
        Number of distinct detectors in each cluster.
    time_s : ndarray (n_clusters,)
        Time of the first peak of each cluster.
    wafer : ndarray (n_clusters,)
    """

    cluster: np.ndarray
    multiplicity: np.ndarray
    time_s: np.ndarray
    wafer: np.ndarray

    @property
    def n_coincident(self) -> int:
        """Number of clusters with two or more detectors."""
        return int(np.sum(self.multiplicity >= 2))

    def coincident_times(self) -> np.ndarray:
        return self.time_s[self.multiplicity >= 2]


def find_coincidences(table: GlitchTable, window_s: float, wafers: np.ndarray | None = None) -> Coincidences:
    """Chain peaks closer than ``window_s`` within each wafer into clusters (see module docstring)."""
    n = len(table)
    wafers = np.zeros(max(table.n_detectors, 1), np.int64) if wafers is None else np.asarray(wafers, np.int64)
    cluster = np.full(n, -1, np.int64)
    mult, times, wafs = [], [], []
    gw = wafers[table.detector] if n else np.zeros(0, np.int64)
    next_id = 0
    for w in np.unique(gw):
        idx = np.flatnonzero(gw == w)
        order = idx[np.argsort(table.peak_time_s[idx], kind="stable")]
        t = table.peak_time_s[order]
        new = np.concatenate([[True], np.diff(t) > window_s])
        cid = np.cumsum(new) - 1 + next_id
        cluster[order] = cid
        n_cl = int(new.sum())
        starts = np.flatnonzero(new)
        det = table.detector[order]
        for k, s in enumerate(starts):
            e = starts[k + 1] if k + 1 < n_cl else len(order)
            mult.append(len(np.unique(det[s:e])))
            times.append(t[s])
            wafs.append(w)
        next_id += n_cl
    return Coincidences(cluster=cluster, multiplicity=np.array(mult, np.int64), time_s=np.array(times, np.float64), wafer=np.array(wafs, np.int64))


def accidental_coincidence_rate_hz(rates_hz: np.ndarray, window_s: float) -> float:
    """Expected rate of two-fold accidental coincidences among independent Poisson detectors.

    ``sum_{i<j} 2 * window * r_i * r_j`` (Hz).
    """
    r = np.asarray(rates_hz, dtype=np.float64)
    return float(window_s * (r.sum() ** 2 - (r**2).sum()))
