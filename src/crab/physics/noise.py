"""Detector noise: white plus 1/f, generated slice by slice with no seams.

The one-sided power spectral density (PSD) is

.. math::

    S(f) = S_w \\left[1 + \\left(\\frac{f_\\mathrm{knee}}{\\sqrt{f^2 + f_\\mathrm{min}^2}}\\right)^{\\alpha}\\right]

with :math:`S_w = \\sigma_w^2` the white level in units**2/Hz (``white_asd`` is
its square root, units/sqrt(Hz)), ``f_knee_hz`` the knee (about 20 mHz for
LiteBIRD-like TES, see the physics reference) and ``f_min_hz`` a low-frequency
flattening that keeps the variance finite.

Realisations are built by weighted overlap-add (WOLA): the time axis is cut
into blocks of ``block_samples`` samples overlapping by half; each block is
white Gaussian noise keyed on ``(seed, stream, detector, block index)``, coloured
by the PSD in the Fourier domain and multiplied by a sine window.  Two
overlapping sine windows satisfy ``sin^2 + cos^2 = 1``, so the variance is the
same at every sample and there are no seams.  Any sample depends only on the
two blocks that cover it, so a slice ``[start, start + n)`` is generated
directly, with the same bytes as the same slice of a longer run, whatever the
chunking or process layout.  Frequencies below about ``sampling_rate /
block_samples`` are not represented; the default block is long enough to
reach ``f_min_hz``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass

import numpy as np
import scipy.fft
import scipy.optimize
import scipy.signal

from crab.core import rng
from crab.core.stats import robust_sigma


@dataclass(frozen=True)
class NoiseParams:
    """Parameters of white + 1/f noise.

    Attributes
    ----------
    white_asd : float
        White-noise amplitude spectral density (TOD units / sqrt(Hz), one-sided).
    f_knee_hz : float
        Knee frequency of the 1/f component (Hz); 0 disables it.
    alpha : float
        Slope of the 1/f component (PSD ~ f**-alpha below the knee).
    f_min_hz : float
        Frequency below which the 1/f component flattens (Hz).
    table_freq_hz, table_psd : tuple of float
        Optional measured PSD (Hz, units**2/Hz), increasing frequencies.  When
        given, it *replaces* the parametric model inside its frequency range:
        :meth:`psd` interpolates it in log-log; below its lowest frequency it
        continues as a power law of slope ``table_low_slope`` flattening at
        ``f_min_hz``, above its highest it stays at the last value.  Real
        detector TOD (anti-alias roll-off, pile-up of small glitches) is not
        white + 1/f; the table keeps its measured shape.
    table_low_slope : float
        PSD slope (``PSD ~ f**-slope``) used below the table.
    """

    white_asd: float = 1.0
    f_knee_hz: float = 0.02
    alpha: float = 1.0
    f_min_hz: float = 1e-4
    table_freq_hz: tuple[float, ...] = ()
    table_psd: tuple[float, ...] = ()
    table_low_slope: float = 0.0

    def __post_init__(self) -> None:
        for name in ("white_asd", "f_knee_hz", "alpha", "f_min_hz", "table_low_slope"):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"noise parameter {name} must be finite and >= 0, got {v!r}")
        if self.f_min_hz <= 0 and (self.f_knee_hz > 0 or self.table_freq_hz):
            raise ValueError("f_min_hz must be > 0 when a 1/f component or a PSD table is present")
        object.__setattr__(self, "table_freq_hz", tuple(float(v) for v in self.table_freq_hz))
        object.__setattr__(self, "table_psd", tuple(float(v) for v in self.table_psd))
        f, p = np.array(self.table_freq_hz), np.array(self.table_psd)
        if f.size != p.size:
            raise ValueError(f"PSD table: {f.size} frequencies but {p.size} values")
        if f.size and (f.size < 2 or np.any(f <= 0) or np.any(np.diff(f) <= 0) or np.any(~np.isfinite(p)) or np.any(p <= 0)):
            raise ValueError("PSD table needs >= 2 increasing positive frequencies and positive finite values")

    def psd(self, freq_hz: np.ndarray) -> np.ndarray:
        """One-sided PSD (units**2/Hz) at ``freq_hz``."""
        f = np.asarray(freq_hz, dtype=np.float64)
        if self.table_freq_hz:
            tf, tp = np.log(self.table_freq_hz), np.log(self.table_psd)
            fc = np.clip(f, self.table_freq_hz[0], self.table_freq_hz[-1])
            out = np.exp(np.interp(np.log(fc), tf, tp))
            f0 = self.table_freq_hz[0]
            low = f < f0
            if np.any(low):
                ratio = (f0**2 + self.f_min_hz**2) / (f[low] ** 2 + self.f_min_hz**2)
                out[low] = self.table_psd[0] * ratio ** (0.5 * self.table_low_slope)
            return out
        s = np.ones_like(f)
        if self.f_knee_hz > 0:
            s = s + (self.f_knee_hz / np.sqrt(f**2 + self.f_min_hz**2)) ** self.alpha
        return self.white_asd**2 * s

    def white_rms(self, sampling_rate_hz: float) -> float:
        """Per-sample RMS of the white component at ``sampling_rate_hz``."""
        return float(self.white_asd * np.sqrt(sampling_rate_hz / 2.0))

    def to_dict(self) -> dict:
        return asdict(self)


def default_block_samples(params: NoiseParams, sampling_rate_hz: float) -> int:
    """Block length (power of two) reaching ``f_min_hz``: at least 4 / f_min samples-worth of time."""
    if params.f_knee_hz <= 0:
        return 1 << 12
    n = int(np.ceil(4.0 * sampling_rate_hz / params.f_min_hz))
    return int(min(1 << 22, max(1 << 12, 1 << int(np.ceil(np.log2(n))))))


class NoiseGenerator:
    """Seam-free, slice-exact white + 1/f noise for many detectors.

    Parameters
    ----------
    params : NoiseParams
        Noise spectrum.
    sampling_rate_hz : float
        Sampling rate (Hz).
    seed : int
        User seed.
    stream : str
        Registered random stream (see :mod:`crab.core.rng`), e.g. ``"mc_noise"``.
    block_samples : int, optional
        WOLA block length (even); default from :func:`default_block_samples`.
    cache_blocks : int
        Number of coloured blocks kept in memory (per generator).  The cache
        is thread-safe: several threads may generate from one instance.
    lowpass_hz : float, optional
        Keep only the low-frequency part of the spectrum: the PSD is multiplied
        by :func:`lowpass_power` (the power complement of :func:`highpass`).
        The band-limited noise is then generated at a reduced rate (at least
        16 * ``lowpass_hz``) and linearly interpolated, which is much faster.
    """

    def __init__(
        self,
        params: NoiseParams,
        sampling_rate_hz: float,
        seed: int,
        stream: str = "mc_noise",
        *,
        block_samples: int | None = None,
        cache_blocks: int = 8,
        lowpass_hz: float | None = None,
    ) -> None:
        self.params = params
        self.output_rate_hz = float(sampling_rate_hz)
        self.lowpass_hz = lowpass_hz
        self.decimation = 1
        if lowpass_hz is not None:
            if not lowpass_hz > 0:
                raise ValueError(f"lowpass_hz must be > 0, got {lowpass_hz!r}")
            self.decimation = max(1, int(self.output_rate_hz // (16.0 * lowpass_hz)))
        self.sampling_rate_hz = self.output_rate_hz / self.decimation
        self.seed = rng.check_seed(seed)
        self.stream = stream
        rng.stream_id(stream)
        n = block_samples or default_block_samples(params, self.sampling_rate_hz)
        if n < 4 or n % 2:
            raise ValueError(f"block_samples must be an even integer >= 4, got {n}")
        self.block_samples = int(n)
        self.hop = self.block_samples // 2
        freq = np.fft.rfftfreq(self.block_samples, d=1.0 / self.sampling_rate_hz)
        # white unit-variance samples -> PSD S: multiply spectrum by sqrt(S * fs / 2)
        psd = params.psd(freq)
        if lowpass_hz is not None:
            psd = psd * lowpass_power(freq, lowpass_hz)
        self._gain = np.sqrt(psd * self.sampling_rate_hz / 2.0).astype(np.float32)
        self._window = np.sin(np.pi * (np.arange(self.block_samples) + 0.5) / self.block_samples).astype(np.float32)
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_size = max(1, int(cache_blocks))
        self._lock = threading.Lock()
        self._pending: dict[tuple[int, int], threading.Event] = {}

    def _block(self, detector_key: int, block: int) -> np.ndarray:
        # Thread-safe LRU cache: a block is computed once, by the first thread asking
        # for it; other threads asking for the same block wait for it.
        key = (detector_key, block)
        while True:
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
                    return hit
                pending = self._pending.get(key)
                if pending is None:
                    self._pending[key] = threading.Event()
                    break
            pending.wait()
        try:
            out = self._compute_block(detector_key, block)
            with self._lock:
                self._cache[key] = out
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        finally:
            with self._lock:
                self._pending.pop(key).set()
        return out

    def _compute_block(self, detector_key: int, block: int) -> np.ndarray:
        """One windowed, coloured block (no caching); depends only on (seed, stream, key, block)."""
        g = rng.generator(self.seed, self.stream, detector_key, block)
        white = g.standard_normal(self.block_samples, dtype=np.float32)
        spec = scipy.fft.rfft(white)
        spec *= self._gain
        out = scipy.fft.irfft(spec, n=self.block_samples).astype(np.float32, copy=False)
        out *= self._window
        return out

    def generate(self, detector_key: int, start_sample: int, n_samples: int) -> np.ndarray:
        """Noise samples ``[start_sample, start_sample + n_samples)`` at the output rate.

        Same bytes for the same arguments, whatever was generated before.
        """
        if self.decimation == 1:
            return self._generate_native(detector_key, start_sample, n_samples)
        if start_sample < 0 or n_samples < 0:
            raise ValueError("start_sample and n_samples must be >= 0")
        d = self.decimation
        if n_samples == 0:
            return np.zeros(0, np.float32)
        k0 = start_sample // d
        k1 = (start_sample + n_samples - 1) // d + 2
        coarse = self._generate_native(detector_key, k0, k1 - k0).astype(np.float64)
        # linear interpolation, vectorised over (coarse step, phase): output sample
        # k * d + r is coarse[k] + (coarse[k + 1] - coarse[k]) * (r / d)
        frac = np.arange(d, dtype=np.int64) / d
        fine = coarse[:-1, None] + np.diff(coarse)[:, None] * frac[None, :]
        lo = start_sample - k0 * d
        return fine.reshape(-1)[lo : lo + n_samples].astype(np.float32)

    def _generate_native(self, detector_key: int, start_sample: int, n_samples: int) -> np.ndarray:
        """Noise samples ``[start_sample, start_sample + n_samples)`` of one detector.

        Parameters
        ----------
        detector_key : int
            Non-negative key of the detector (its index, or
            :func:`crab.core.rng.detector_key` of its name).
        start_sample : int
            Absolute index of the first sample (>= 0).
        n_samples : int
            Number of samples.

        Returns
        -------
        ndarray of float32, shape (n_samples,)
        """
        if start_sample < 0 or n_samples < 0:
            raise ValueError("start_sample and n_samples must be >= 0")
        out = np.zeros(n_samples, dtype=np.float32)
        if n_samples == 0:
            return out
        hop = self.hop
        stop = start_sample + n_samples
        # block b covers absolute samples [(b - 1) * hop, (b + 1) * hop); block index >= 0
        first = start_sample // hop
        last = (stop - 1) // hop + 1
        for b in range(first, last + 1):
            b0 = (b - 1) * hop
            lo, hi = max(start_sample, b0), min(stop, b0 + self.block_samples)
            if lo >= hi:
                continue
            blk = self._block(detector_key, b)
            out[lo - start_sample : hi - start_sample] += blk[lo - b0 : hi - b0]
        return out

    def generate_many(self, detector_keys: list[int], start_sample: int, n_samples: int) -> np.ndarray:
        """Noise for several detectors, shape (len(detector_keys), n_samples), float32."""
        return np.stack([self.generate(k, start_sample, n_samples) for k in detector_keys]) if detector_keys else np.zeros((0, n_samples), np.float32)


def highpass_power(freq_hz: np.ndarray, cut_hz: float, order: int = 4) -> np.ndarray:
    """Power response ``|H|^2 = x^n / (1 + x^n)``, ``x = f / cut``, of :func:`highpass`."""
    x = (np.asarray(freq_hz, dtype=np.float64) / cut_hz) ** order
    return x / (1.0 + x)


def lowpass_power(freq_hz: np.ndarray, cut_hz: float, order: int = 4) -> np.ndarray:
    """Power complement of :func:`highpass_power`: the two add up to one at every frequency."""
    return 1.0 - highpass_power(freq_hz, cut_hz, order)


def highpass(tod: np.ndarray, sampling_rate_hz: float, cut_hz: float, order: int = 4) -> np.ndarray:
    """Zero-phase high-pass along the last axis, power response :func:`highpass_power`.

    Used to separate the slow 1/f drifts (far longer than any training window,
    generated separately by :class:`NoiseGenerator` with ``lowpass_hz``) from
    the glitches and fast noise that the GAN learns.  The series is mirrored
    at both ends before the FFT to avoid wrap-around at the edges.
    """
    x = np.asarray(tod, dtype=np.float64)
    n = x.shape[-1]
    ext = np.concatenate([x[..., ::-1], x, x[..., ::-1]], axis=-1)
    freq = np.fft.rfftfreq(3 * n, d=1.0 / sampling_rate_hz)
    gain = np.sqrt(highpass_power(freq, cut_hz, order))
    y = np.fft.irfft(np.fft.rfft(ext, axis=-1) * gain, n=3 * n, axis=-1)[..., n : 2 * n]
    return y.astype(np.asarray(tod).dtype if np.asarray(tod).dtype.kind == "f" else np.float64)


def welch_psd(tod: np.ndarray, sampling_rate_hz: float, nperseg: int = 4096, robust: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One-sided Welch PSD of a 1-D series (``robust``: median average, insensitive to glitches).

    Returns ``(freq_hz, psd)`` with the PSD in units**2/Hz.
    """
    x = np.asarray(tod, dtype=np.float64)
    nper = int(min(nperseg, x.size))
    return scipy.signal.welch(x, fs=sampling_rate_hz, nperseg=nper, average="median" if robust else "mean")


def clip_glitches(tod: np.ndarray, sampling_rate_hz: float, clip_sigma: float = 5.0, baseline_s: float = 5.0) -> np.ndarray:
    """Winsorise glitches: samples further than ``clip_sigma`` robust sigma from a running median are clipped.

    The running median spans ``baseline_s`` seconds; sigma is the robust noise
    RMS of each row (:func:`crab.core.stats.robust_sigma`).  What is left is the
    Gaussian-like noise (with slow drifts) that :class:`NoiseGenerator` can
    represent; glitches and their pile-up are the generators' business.
    """
    import scipy.ndimage

    rows = np.atleast_2d(np.asarray(tod, dtype=np.float64))
    width = max(3, int(baseline_s * sampling_rate_hz) | 1)
    out = np.empty_like(rows)
    for i, row in enumerate(rows):
        base = scipy.ndimage.median_filter(row, size=width, mode="nearest")
        lim = clip_sigma * robust_sigma(row - base)
        out[i] = base + np.clip(row - base, -lim, lim)
    return out.reshape(np.shape(tod)) if np.ndim(tod) > 1 else out[0]


def fit_noise_params(
    tod: np.ndarray,
    sampling_rate_hz: float,
    nperseg: int = 4096,
    f_min_hz: float = 1e-4,
    *,
    tabulate: bool = True,
    bins_per_octave: int = 6,
    clip_sigma: float | None = 5.0,
) -> NoiseParams:
    """Fit white level, knee and slope to the (glitch-robust) Welch PSD of one or more series.

    With ``clip_sigma`` (default 5) glitches are first clipped
    (:func:`clip_glitches`), so the model describes the noise, not the
    glitches' own spectrum (which a generator reproduces with its glitches).

    With ``tabulate`` (default) the measured PSD itself, averaged over rows and
    smoothed in bins of ``1 / bins_per_octave`` octave, is stored as the
    noise model's table (see :class:`NoiseParams`); the parametric fields keep
    the white + 1/f fit for reference.

    Parameters
    ----------
    tod : ndarray, shape (n_samples,) or (n_detectors, n_samples)
        Time-ordered data; several rows are averaged in log-PSD.
    sampling_rate_hz : float
        Sampling rate (Hz).
    nperseg : int
        Welch segment length (samples); bounds the lowest frequency used.
    f_min_hz : float
        Fixed low-frequency flattening of the fitted model.
    """
    rows = np.atleast_2d(np.asarray(tod, dtype=np.float64))
    if clip_sigma is not None:
        rows = clip_glitches(rows, sampling_rate_hz, clip_sigma)
    psds = []
    for row in rows:
        f, p = welch_psd(row, sampling_rate_hz, nperseg=nperseg, robust=True)
        psds.append(p)
    f = f[1:]
    p = np.exp(np.mean(np.log(np.maximum(np.array(psds)[:, 1:], 1e-300)), axis=0))
    # the median average is biased low by a factor ln(2)-ish for chi2_2 bins; correct like scipy does
    logf = np.log(f)

    def resid(theta: np.ndarray) -> np.ndarray:
        log_sw, log_fk, a = theta
        model = NoiseParams(white_asd=float(np.exp(0.5 * log_sw)), f_knee_hz=float(np.exp(log_fk)), alpha=float(abs(a)), f_min_hz=f_min_hz)
        return np.log(model.psd(f)) - np.log(p)

    hi = f > 0.5 * f.max()
    sw0 = float(np.median(p[hi]))
    theta0 = np.array([np.log(sw0), np.log(max(0.02, f[0] * 2)), 1.0])
    # weight bins equally in log-frequency
    w = np.gradient(logf)
    sol = scipy.optimize.least_squares(lambda t: resid(t) * np.sqrt(w / w.mean()), theta0, bounds=([-np.inf, np.log(f[0] / 10), 0.1], [np.inf, np.log(f.max()), 4.0]))
    log_sw, log_fk, a = sol.x
    params = dict(white_asd=float(np.exp(0.5 * log_sw)), f_knee_hz=float(np.exp(log_fk)), alpha=float(a), f_min_hz=f_min_hz)
    if not tabulate:
        return NoiseParams(**params)
    pm = np.mean(np.array(psds)[:, 1:], axis=0)  # rows averaged linearly (median-averaged, bias-corrected Welch per row)
    edges = f[0] * 2.0 ** (np.arange(0, np.log2(f[-1] / f[0]) + 1.0 / bins_per_octave, 1.0 / bins_per_octave))
    idx = np.clip(np.searchsorted(edges, f, side="right") - 1, 0, None)
    tf, tp = [], []
    for b in np.unique(idx):
        m = idx == b
        tf.append(float(np.exp(np.mean(np.log(f[m])))))
        tp.append(float(np.mean(pm[m])))
    tf_a, tp_a = np.array(tf), np.array(tp)
    lowest = tf_a <= tf_a[0] * 4.0  # slope of the lowest two octaves, for the extrapolation below the table
    slope = 0.0 if lowest.sum() < 2 else float(np.clip(-np.polyfit(np.log(tf_a[lowest]), np.log(tp_a[lowest]), 1)[0], 0.0, 2.0))
    return NoiseParams(**params, table_freq_hz=tuple(tf), table_psd=tuple(tp), table_low_slope=slope)


def measured_psd(tod: np.ndarray, sampling_rate_hz: float, nperseg: int = 4096, clip_sigma: float | None = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """``(freq_hz, psd)``: the glitch-clipped, median-averaged Welch PSD of one or more rows, rows averaged linearly.

    The same estimate as the table of :func:`fit_noise_params` before its
    octave binning (zero frequency dropped), so the two can be compared.
    """
    rows = np.atleast_2d(np.asarray(tod, dtype=np.float64))
    if clip_sigma is not None:
        rows = clip_glitches(rows, sampling_rate_hz, clip_sigma)
    psds = [welch_psd(row, sampling_rate_hz, nperseg=nperseg, robust=True) for row in rows]
    return psds[0][0][1:], np.mean([p[1:] for _, p in psds], axis=0)


def slow_noise_complement(params: NoiseParams, freq_hz: np.ndarray, own_psd: np.ndarray, lowpass_hz: float, min_gain: float = 1e-3, smooth_hz: float = 0.0) -> NoiseParams:
    """The slow-noise model to add, low-passed at ``lowpass_hz``, to a generator whose output already has ``own_psd``.

    Generation adds ``NoiseGenerator(params, lowpass_hz=cut)`` to the GAN
    output: PSD ``S(f) * L(f)`` (``L`` = :func:`lowpass_power`) on top of the
    GAN's own PSD ``G(f)``.  The GAN is trained on high-passed data, but its
    output is not exactly high-passed (its receptive field is a few seconds,
    so its spectrum flattens below the cut instead of falling like ``1 - L``),
    and ``S * L + G`` double counts the power below the cut.  This returns
    ``params`` with its PSD table multiplied by

    ``gain(f) = clip((S(f) - G(f)) / (S(f) L(f)), min_gain, 1)``

    so that the slow noise is ``min(S L, max(S - G, min_gain S L))``: never
    more than before, and the sum matches ``S`` wherever the GAN alone does
    not already exceed it.  ``own_psd`` (at ``freq_hz``, e.g. from
    :func:`measured_psd`) is averaged over the band around each table
    frequency, widened to at least ``+-smooth_hz`` (a generator with a
    receptive field of a few seconds has a smooth spectrum; the wider average
    keeps the estimate's scatter out of the gain at the lowest frequencies).
    Without a table, ``params`` is returned unchanged.
    """
    if not params.table_freq_hz:
        return params
    tf = np.asarray(params.table_freq_hz)
    tp = np.asarray(params.table_psd)
    f = np.asarray(freq_hz, dtype=np.float64)
    g = np.asarray(own_psd, dtype=np.float64)
    ok = (f > 0) & np.isfinite(g) & (g >= 0)
    f, g = f[ok], g[ok]
    if f.size < 2:
        return params
    mid = np.sqrt(tf[1:] * tf[:-1])
    lo = np.minimum(np.concatenate([[tf[0] ** 2 / mid[0]], mid]), tf - smooth_hz)
    hi = np.maximum(np.concatenate([mid, [tf[-1] ** 2 / mid[-1]]]), tf + smooth_hz)
    own = np.empty_like(tp)
    for i in range(tf.size):
        m = (f >= lo[i]) & (f < hi[i])
        own[i] = g[m].mean() if m.any() else np.exp(np.interp(np.log(tf[i]), np.log(f), np.log(np.maximum(g, 1e-300))))
    lp = np.maximum(lowpass_power(tf, lowpass_hz), 1e-300)
    gain = np.clip((tp - own) / (tp * lp), min_gain, 1.0)
    return NoiseParams(**{**params.to_dict(), "table_psd": tuple(float(v) for v in tp * gain)})
