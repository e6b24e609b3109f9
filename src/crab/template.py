"""Template baseline: Poisson glitches with fitted templates plus white and 1/f noise.

This is the simple method the paper argues against, after TOAST's
``InjectCosmicRays`` operator: glitches are placed as a Poisson process and
each is the template

.. math::

    \\gamma(t) = C_1 + C_2\\, e^{-t/\\tau}, \\qquad 0 \\le t < t_\\mathrm{tail},

with ``C2`` and ``tau`` drawn *independently* from distributions fitted on
the Monte Carlo truth (``C1 = 0`` here: the fitted TOD has its baseline at 0),
plus white and 1/f noise with parameters fitted on the same TOD.  It knows
nothing of pile-up, rise times, correlations between amplitude and decay, or
energy spectra beyond the fitted marginals: that is what makes it a
baseline, for speed (``benchmarks/generate_throughput.py``) and for fidelity
(validation).

Fitting (:func:`fit_template`)
    For every truth event (``/events``: ``time_s``, ``detector``, ``kind``)
    the TOD right after the event time is fitted with ``C2 exp(-(t - t0) /
    tau)`` (``t0`` the truth time, so sub-sample timing is taken into
    account) above a local baseline (median of the 16 samples before): for
    each ``tau`` of a log grid, ``C2`` is the linear least-squares amplitude
    and the ``tau`` with the smallest residual wins (vectorised: one matrix
    product for all events).  Direct events are fitted on the detector hit,
    wafer events (``detector == -1`` or ``kind == 1``) on the mean of all
    detectors (they are common mode).  Rates are counts over exposure:
    per detector for direct hits, per wafer for wafer hits.  The noise
    parameters come from :func:`crab.noise.fit_noise_params` on the TOD with
    the glitches masked (from each truth event until its fitted template
    falls below 0.3 noise RMS) and the gaps refilled with noise (a
    median-averaged PSD alone is not glitch-free when glitches are
    frequent); with several detectors and wafer hits, on each detector minus
    the detector mean (rescaled), which removes the common-mode wafer hits
    however much they pile up.  The white level is then set from the robust
    sample-to-sample RMS of that series.
Generation (:class:`TemplateSource`, used through :class:`crab.generation.TodGenerator`)
    Time is cut into blocks of ``tile_samples``.  The direct events of block
    ``b`` of detector key ``d`` come from ``rng.generator(seed,
    "template_events", d, b)``: their number (Poisson), times (uniform in the
    block, continuous), then ``C2`` and ``tau`` by inverse-CDF sampling of
    the fitted quantiles.  Wafer events of block ``b`` come from the key
    ``(WAFER_KEY, b)``, shared by every detector of the generation.  A block
    also renders the events of the previous blocks whose tails reach into it,
    so a glitch straddling a block boundary continues (until it is below
    1e-7 of its height).  Glitches are rendered at the sample times after
    ``t0`` by recursive filtering, per class of decay time (48 log-spaced
    classes over the fitted range; each glitch takes the nearest), so the
    cost does not depend on the glitch rate.  The noise is
    ``NoiseGenerator(noise_params, fs, seed, "template_noise")`` keyed on
    the detector.  Everything is keyed on (seed, detector, block), so the
    output does not depend on chunking, order or process layout.

Template models are saved as JSON (:func:`save_template`, :func:`load_template`).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, rng
from .errors import FileFormatError, InputError, ModelCompatibilityError
from .generation import TileSource
from .noise import NoiseGenerator, NoiseParams, fit_noise_params
from .provenance import atomic_write_bytes
from .transform import robust_sigma

TEMPLATE_FILE = "template.json"
TEMPLATE_FORMAT = "crab-template"
#: Bumped when the JSON layout changes incompatibly.
TEMPLATE_FORMAT_VERSION = 1
#: Key of the wafer events in the "template_events" stream: above every detector
#: key (indices and ``rng.detector_key`` values are below 2**63).
WAFER_KEY = 1 << 63
#: Probabilities at which the fitted distributions are stored (dense in the tails).
QUANTILE_P = np.unique(np.concatenate([np.linspace(0.0, 1.0, 201), 1.0 - np.logspace(-6, -2.3, 12), np.logspace(-6, -2.3, 12)]))
#: Samples per generation block (tile).
DEFAULT_BLOCK_SAMPLES = 1 << 16


@dataclass
class GlitchPopulation:
    """One kind of glitch of the template model.

    Attributes
    ----------
    kind : str
        ``"direct"`` (one detector) or ``"wafer"`` (common to all detectors).
    rate_hz : float
        Events per second, per detector (direct) or per wafer (wafer).
    amplitude_quantiles : list of float
        Quantiles of ``C2`` (TOD units) at :data:`QUANTILE_P`.
    tau_quantiles_s : list of float
        Quantiles of ``tau`` (s) at :data:`QUANTILE_P`.
    n_events : int
        Truth events used for the fit.
    """

    kind: str
    rate_hz: float = 0.0
    amplitude_quantiles: list[float] = field(default_factory=list)
    tau_quantiles_s: list[float] = field(default_factory=list)
    n_events: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("direct", "wafer"):
            raise InputError(f"glitch kind must be 'direct' or 'wafer', got {self.kind!r}")
        if not (np.isfinite(self.rate_hz) and self.rate_hz >= 0):
            raise InputError(f"glitch rate must be finite and >= 0, got {self.rate_hz!r}")
        if self.rate_hz > 0 and (len(self.amplitude_quantiles) != len(QUANTILE_P) or len(self.tau_quantiles_s) != len(QUANTILE_P)):
            raise InputError(f"{self.kind} glitches: need {len(QUANTILE_P)} quantiles of amplitude and tau")
        self._amp = np.asarray(self.amplitude_quantiles, dtype=np.float64)
        self._logtau = np.log(np.maximum(np.asarray(self.tau_quantiles_s, dtype=np.float64), 1e-30))

    def sample(self, u_amp: np.ndarray, u_tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(C2, tau_s)`` from uniforms in [0, 1) by inverse-CDF interpolation (independent marginals)."""
        return np.interp(u_amp, QUANTILE_P, self._amp), np.exp(np.interp(u_tau, QUANTILE_P, self._logtau))

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: v for k, v in d.items() if not k.startswith("_")}


@dataclass
class TemplateModel:
    """The fitted template baseline.

    Attributes
    ----------
    sampling_rate_hz : float
        Sampling rate of the fitted TOD (Hz).
    noise_params : NoiseParams
        White + 1/f noise fitted on the TOD.
    direct, wafer : GlitchPopulation
    units : str
    fit_info : dict
        Where and how it was fitted (file, duration, detectors, settings).
    path : Path or None
        File it was loaded from.
    """

    sampling_rate_hz: float
    noise_params: NoiseParams
    direct: GlitchPopulation
    wafer: GlitchPopulation
    units: str = "pW"
    fit_info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def to_dict(self) -> dict:
        return {
            "format": TEMPLATE_FORMAT,
            "format_version": TEMPLATE_FORMAT_VERSION,
            "crab_version": __version__,
            "sampling_rate_hz": self.sampling_rate_hz,
            "units": self.units,
            "noise_params": self.noise_params.to_dict(),
            "direct": self.direct.to_dict(),
            "wafer": self.wafer.to_dict(),
            "quantile_p": QUANTILE_P.tolist(),
            "fit_info": self.fit_info,
        }

    @classmethod
    def from_dict(cls, d: dict, path: Path | None = None) -> "TemplateModel":
        where = path or "template model"
        if not isinstance(d, dict) or d.get("format") != TEMPLATE_FORMAT:
            raise ModelCompatibilityError(f"{where}: not a CRAB template model")
        if d.get("format_version") != TEMPLATE_FORMAT_VERSION:
            raise ModelCompatibilityError(
                f"{where}: template format version {d.get('format_version')} (written by crab {d.get('crab_version')}) "
                f"is not supported by crab {__version__}, which reads version {TEMPLATE_FORMAT_VERSION}; fit it again"
            )
        if not np.allclose(d.get("quantile_p", []), QUANTILE_P) or len(d.get("quantile_p", [])) != len(QUANTILE_P):
            raise ModelCompatibilityError(f"{where}: quantile grid differs from this version's; fit it again")
        try:
            return cls(
                sampling_rate_hz=float(d["sampling_rate_hz"]),
                noise_params=NoiseParams(**d["noise_params"]),
                direct=GlitchPopulation(**d["direct"]),
                wafer=GlitchPopulation(**d["wafer"]),
                units=d.get("units", "pW"),
                fit_info=dict(d.get("fit_info", {})),
                path=path,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelCompatibilityError(f"{where}: malformed template model ({exc.__class__.__name__}: {exc})") from None


# --------------------------------------------------------------------------- fitting
def fit_glitches(
    series: np.ndarray,
    event_samples: np.ndarray,
    sampling_rate_hz: float,
    *,
    fit_samples: int | None = None,
    baseline_samples: int = 16,
    tau_range_s: tuple[float, float] | None = None,
    n_tau: int = 64,
    batch: int = 4096,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit ``C2 exp(-(t - t0)/tau)`` after each event of one series.

    Parameters
    ----------
    series : ndarray (n_samples,)
        TOD of one detector (or the detector mean for wafer events).
    event_samples : ndarray of float
        Event times in samples from the start of ``series`` (fractional).
    sampling_rate_hz : float
    fit_samples : int, optional
        Samples fitted after each event (default 2.5 s worth, 16 to 256).
    baseline_samples : int
        Samples before the event whose median is the baseline.
    tau_range_s : (float, float), optional
        Range of the tau grid (default half a sample to ``fit_samples`` samples).
    n_tau : int
        Points of the log-spaced tau grid.
    batch : int
        Events per vectorised batch (bounds memory).

    Returns
    -------
    c2, tau_s, ok : ndarrays
        Amplitude (series units), decay time (s), and whether the event could
        be fitted (far enough from the edges).
    """
    fs = float(sampling_rate_hz)
    x = np.asarray(series, dtype=np.float64).reshape(-1)
    ts = np.asarray(event_samples, dtype=np.float64).reshape(-1)
    K = int(fit_samples or int(np.clip(np.ceil(2.5 * fs), 16, 256)))
    NB = int(baseline_samples)
    lo_tau, hi_tau = tau_range_s or (0.5 / fs, K / fs)
    taus = np.geomspace(lo_tau, hi_tau, n_tau)
    k = np.arange(K)
    B = np.exp(-k[None, :] / (taus[:, None] * fs))  # (n_tau, K), shape of a glitch starting at the first sample
    BB = np.einsum("ij,ij->i", B, B)
    i0 = np.ceil(ts).astype(np.int64)
    frac = i0 - ts
    ok = (i0 - NB - 1 >= 0) & (i0 + K <= x.size)
    c2 = np.full(ts.size, np.nan)
    tau = np.full(ts.size, np.nan)
    idx_ok = np.flatnonzero(ok)
    for s in range(0, idx_ok.size, batch):
        e = idx_ok[s : s + batch]
        base_idx = i0[e, None] + np.arange(-NB - 1, -1)[None, :]
        baseline = np.median(x[base_idx], axis=1)
        S = x[i0[e, None] + k[None, :]] - baseline[:, None]  # (n, K)
        SB = S @ B.T  # (n, n_tau)
        score = SB**2 / BB[None, :]  # residual = |S|^2 - score
        best = np.argmax(score, axis=1)
        # refine: parabola through the scores around the best grid point (in log tau)
        j = np.clip(best, 1, n_tau - 2)
        r = np.arange(e.size)
        s_m, s_0, s_p = score[r, j - 1], score[r, j], score[r, j + 1]
        den = s_m - 2 * s_0 + s_p
        shift = np.where((best == j) & (den < 0), 0.5 * (s_m - s_p) / np.where(den < 0, den, -1.0), 0.0)
        log_tau = np.log(taus[best]) + np.clip(shift, -1, 1) * np.log(taus[1] / taus[0])
        tau_e = np.exp(log_tau)
        b = np.exp(-k[None, :] / (tau_e[:, None] * fs))
        A = np.einsum("ij,ij->i", S, b) / np.einsum("ij,ij->i", b, b)  # amplitude at the first sample after t0
        tau[e] = tau_e
        c2[e] = A * np.exp(frac[e] / (tau_e * fs))  # back to t = t0 (sub-sample timing)
    return c2, tau, ok


_SMOOTH = 16  # samples averaged at each end of a gap


def _glitch_free(x: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The TOD with the glitches masked and the gaps refilled with noise, for the noise fit.

    Masked samples are replaced by a linear interpolation across the gap (of
    16-sample local means of the unmasked samples) plus
    white noise of the row's robust RMS (fixed seed: the fit is
    deterministic), so a median-averaged PSD sees the noise alone.
    """
    out = np.array(x, dtype=np.float64)
    g = np.random.default_rng(0)
    for d in range(out.shape[0]):
        mask = masks[d]
        if not mask.any() or mask.mean() > 0.5:
            continue  # nothing to mask, or too little left: keep the row as it is
        sigma = robust_sigma(out[d])
        good = np.flatnonzero(~mask)
        bad = np.flatnonzero(mask)
        # interpolate a local mean of the good samples (not single noisy end points,
        # whose ramps would add low-frequency power)
        w = np.ones(_SMOOTH)
        num = np.convolve(np.where(mask, 0.0, out[d]), w, mode="same")
        den = np.convolve((~mask).astype(np.float64), w, mode="same")
        smooth = num / np.maximum(den, 1.0)
        out[d, bad] = np.interp(bad, good, smooth[good]) + sigma * g.standard_normal(bad.size)
    return out


def _mask_glitches(mask: np.ndarray, t: np.ndarray, c2: np.ndarray, tau: np.ndarray, fs: float, sigma: float, tail_max: int) -> None:
    """Mark samples from 2 before each event to where its glitch drops below 0.3 sigma."""
    if t.size == 0:
        return
    tau_m = np.maximum(tau, np.median(tau))  # a mis-fitted short tau must not leave the tail unmasked
    i0 = np.ceil(t).astype(np.int64)
    K = np.clip(np.ceil(tau_m * fs * np.log(np.maximum(np.abs(c2) / (0.3 * sigma), 1.0))).astype(np.int64) + 1, 1, tail_max)
    n_k = K + 2
    ev = np.repeat(np.arange(t.size), n_k)
    idx = i0[ev] - 2 + (np.arange(int(n_k.sum())) - np.repeat(np.cumsum(n_k) - n_k, n_k))
    mask[np.clip(idx, 0, mask.size - 1)] = True


def _quantiles(v: np.ndarray) -> list[float]:
    return np.quantile(v, QUANTILE_P).tolist() if v.size else []


def fit_template(
    tod: np.ndarray,
    events,
    sampling_rate_hz: float,
    *,
    start_time_s: float = 0.0,
    units: str = "pW",
    tail_max_s: float = 30.0,
    fit_info: dict[str, Any] | None = None,
) -> TemplateModel:
    """Fit the template baseline on Monte Carlo TOD and its truth (array level).

    Parameters
    ----------
    tod : ndarray (n_detectors, n_samples)
        Monte Carlo TOD (units ``units``).
    events : crab.tod_io.EventTable
        Truth of the hits (times on the same clock as ``start_time_s``).
    sampling_rate_hz : float
    start_time_s : float
        Time of sample 0 (s).
    units : str
    tail_max_s : float
        Longest glitch tail masked out of the noise fit (s).
    fit_info : dict, optional
        Recorded with the model.
    """
    from .tod_io import EVENT_KIND_WAFER

    x = np.atleast_2d(np.asarray(tod, dtype=np.float64))
    n_det, n = x.shape
    fs = float(sampling_rate_hz)
    if n < 64:
        raise InputError(f"need at least 64 samples to fit the template model, got {n}")
    duration = n / fs
    t = (np.asarray(events.time_s, dtype=np.float64) - start_time_s) * fs
    det = np.asarray(events.detector)
    is_wafer = (det < 0) | (np.asarray(events.kind) == EVENT_KIND_WAFER)
    inside = (t >= 0) & (t < n)
    pops = {}
    masks = np.zeros(x.shape, dtype=bool)  # glitch samples, left out of the noise fit
    sigmas = [robust_sigma(r) for r in x]
    tail_max = int(np.ceil(tail_max_s * fs))
    # direct hits, per detector
    c2s, taus = [], []
    n_direct = int(np.sum(~is_wafer & inside))
    for d in range(n_det):
        m = ~is_wafer & inside & (det == d)
        if np.any(m):
            c2, tau, ok = fit_glitches(x[d], t[m], fs)
            c2s.append(c2[ok])
            taus.append(tau[ok])
            _mask_glitches(masks[d], t[m][ok], c2[ok], tau[ok], fs, sigmas[d], tail_max)
    c2 = np.concatenate(c2s) if c2s else np.zeros(0)
    tau = np.concatenate(taus) if taus else np.zeros(0)
    pops["direct"] = GlitchPopulation("direct", n_direct / (n_det * duration) if c2.size else 0.0, _quantiles(c2), _quantiles(tau), int(c2.size))
    direct_masks = masks.copy()
    # wafer hits, on the detector mean (common mode)
    m = is_wafer & inside
    n_wafer = int(np.sum(m))
    if n_wafer:
        c2, tau, ok = fit_glitches(x.mean(axis=0), t[m], fs)
        c2, tau = c2[ok], tau[ok]
        for d in range(n_det):
            _mask_glitches(masks[d], t[m][ok], c2, tau, fs, sigmas[d], tail_max)
    else:
        c2 = tau = np.zeros(0)
    pops["wafer"] = GlitchPopulation("wafer", n_wafer / duration if c2.size else 0.0, _quantiles(c2), _quantiles(tau), int(c2.size))
    series = x
    if n_det > 1 and n_wafer:
        # wafer hits are common mode (and can pile up beyond masking): fit the noise on
        # each detector minus the detector mean, rescaled for the removed 1/n_det of noise
        series = (x - x.mean(axis=0, keepdims=True)) * np.sqrt(n_det / (n_det - 1.0))
        masks = np.broadcast_to(direct_masks.any(axis=0), x.shape)  # every direct hit enters the mean
    try:
        clean = _glitch_free(series, masks)
        noise = fit_noise_params(clean, fs, nperseg=int(min(4096, n)))
        # the white level from the robust sample-to-sample RMS (MAD of first differences),
        # steadier than the three-parameter PSD fit when part of the series is refilled
        white = float(np.median([robust_sigma(r) for r in clean])) / np.sqrt(fs / 2.0)
        noise = NoiseParams(white_asd=white, f_knee_hz=noise.f_knee_hz, alpha=noise.alpha, f_min_hz=noise.f_min_hz)
    except Exception as exc:  # least squares can fail on degenerate data
        raise InputError(f"cannot fit the noise model ({exc.__class__.__name__}: {exc})") from None
    info = {"n_detectors": n_det, "n_samples": n, "duration_s": duration, "n_direct_events": n_direct, "n_wafer_events": n_wafer, **(fit_info or {})}
    return TemplateModel(
        sampling_rate_hz=fs,
        noise_params=noise,
        direct=pops["direct"],
        wafer=pops["wafer"],
        units=units,
        fit_info=info,
    )


def fit_template_file(path: str | os.PathLike, **kw: Any) -> TemplateModel:
    """Fit the template baseline on a Monte Carlo TOD file with its ``/events`` truth."""
    from .tod_io import read_tod

    f = read_tod(path)
    if f.events is None:
        raise FileFormatError(f"{f.path}: no /events truth table; the template baseline is fitted on Monte Carlo files (`crab simulate`)")
    info = {"file": str(f.path), "file_seed": f.meta.seed, "file_kind": f.meta.kind}
    return fit_template(f.tod, f.events, f.meta.sampling_rate_hz, start_time_s=f.meta.start_time_s, units=f.meta.units, fit_info=info, **kw)


def save_template(model: TemplateModel, path: str | os.PathLike) -> Path:
    """Write the model as JSON (``path``: a ``.json`` file, or a folder that gets ``template.json``)."""
    p = Path(path)
    if p.suffix != ".json":
        p.mkdir(parents=True, exist_ok=True)
        p = p / TEMPLATE_FILE
    return atomic_write_bytes(p, (json.dumps(model.to_dict(), indent=2) + "\n").encode())


def load_template(path: str | os.PathLike, *, sampling_rate_hz: float | None = None) -> TemplateModel:
    """Read a template model (``.json`` file or folder with ``template.json``).

    Raises
    ------
    ModelCompatibilityError
        Missing, unreadable, another format version, or another sampling rate than asked.
    """
    p = Path(path)
    f = p / TEMPLATE_FILE if p.is_dir() else p
    if not f.exists():
        raise ModelCompatibilityError(f"template model not found: {f} (fit one with `crab generate --method template --fit MC.h5`)")
    try:
        d = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelCompatibilityError(f"{f}: cannot be read as a template model ({exc.__class__.__name__})") from None
    model = TemplateModel.from_dict(d, path=f)
    if sampling_rate_hz is not None and not np.isclose(model.sampling_rate_hz, sampling_rate_hz, rtol=1e-9, atol=0):
        raise ModelCompatibilityError(f"{f}: template fitted at {model.sampling_rate_hz:g} Hz, but {sampling_rate_hz:g} Hz was asked; fit it on data at that rate")
    return model


# --------------------------------------------------------------------------- generation
def tau_classes(tau_quantiles_s: list[float], n_classes: int = 24) -> np.ndarray:
    """Log-spaced decay times covering the fitted range: each glitch decays with the nearest."""
    t = np.asarray(tau_quantiles_s, dtype=np.float64)
    t = t[np.isfinite(t) & (t > 0)]
    if t.size == 0:
        return np.array([1.0])
    lo, hi = float(t.min()), float(t.max())
    return np.geomspace(lo, hi, n_classes) if hi > lo * 1.0001 else np.array([lo])


def lookback_samples(tau_s: float, sampling_rate_hz: float) -> int:
    """Samples after which a glitch has decayed below 1e-7 of its amplitude (it is dropped there)."""
    return int(np.ceil(tau_s * sampling_rate_hz * np.log(1e7))) + 1


def render_glitches(first_sample: int, n_samples: int, t_samples: np.ndarray, c2: np.ndarray, tau_s: np.ndarray, sampling_rate_hz: float, classes: np.ndarray) -> np.ndarray:
    """Sum of templates ``c2 exp(-(t - t0)/tau)`` on samples ``[first_sample, first_sample + n_samples)``.

    Parameters
    ----------
    t_samples : ndarray of float
        Event times ``t0`` in samples (fractional, absolute index).  Give
        every event starting in ``[first_sample - lookback, first_sample +
        n_samples)`` (:func:`lookback_samples` of the longest class).
    c2, tau_s : ndarray
        Amplitudes (TOD units) and decay times (s).
    classes : ndarray
        Decay-time classes (:func:`tau_classes`): a glitch decays with the
        class nearest (in log) to its ``tau``.  Each class is rendered as a
        train of impulses (at the first sample at or after ``t0``, weighted
        by ``exp(-frac/tau)`` for the sub-sample timing) through the
        recursive filter ``y[n] = x[n] + exp(-1/(tau fs)) y[n-1]``: the cost
        does not depend on the glitch rate or tail lengths, and a glitch
        continues across any boundary until it is below 1e-7 of its height.

    Returns
    -------
    ndarray of float64, shape (n_samples,)
    """
    import scipy.signal

    s0, n = int(first_sample), int(n_samples)
    out = np.zeros(max(n, 0))
    ts = np.asarray(t_samples, dtype=np.float64)
    if ts.size == 0 or n <= 0:
        return out
    fs = float(sampling_rate_hz)
    c2 = np.asarray(c2, dtype=np.float64)
    classes = np.asarray(classes, dtype=np.float64)
    i0 = np.ceil(ts).astype(np.int64)
    frac = i0 - ts
    if classes.size > 1:
        step = np.log(classes[1] / classes[0])
        cls = np.clip(np.rint(np.log(np.asarray(tau_s, dtype=np.float64) / classes[0]) / step), 0, classes.size - 1).astype(np.int64)
    else:
        cls = np.zeros(ts.size, np.int64)
    order = np.argsort(cls, kind="stable")
    bounds = np.searchsorted(cls[order], np.arange(classes.size + 1))
    for c in range(classes.size):
        if bounds[c] == bounds[c + 1]:
            continue
        tau = classes[c]
        L = lookback_samples(tau, fs)
        sel = order[bounds[c] : bounds[c + 1]]
        sel = sel[(i0[sel] >= s0 - L) & (i0[sel] < s0 + n)]
        if sel.size == 0:
            continue
        x = np.bincount(i0[sel] - (s0 - L), weights=c2[sel] * np.exp(-frac[sel] / (tau * fs)), minlength=L + n)
        out += scipy.signal.lfilter([1.0], [1.0, -np.exp(-1.0 / (tau * fs))], x)[L:]
    return out


class TemplateSource(TileSource):
    """Tiles (blocks) of template TOD for :class:`crab.generation.TodGenerator`.

    Parameters
    ----------
    model : TemplateModel
    seed : int
    block_samples : int
        Samples per block (tile); part of what defines the bytes.
    """

    kind = "template"
    rows = 1

    def __init__(self, model: TemplateModel, seed: int, *, block_samples: int = DEFAULT_BLOCK_SAMPLES) -> None:
        self.model = model
        self.seed = rng.check_seed(seed)
        self.sampling_rate_hz = float(model.sampling_rate_hz)
        self.units = model.units
        self.tile_samples = int(block_samples)
        if self.tile_samples < 16:
            raise InputError(f"block_samples must be >= 16, got {block_samples}")
        fs = self.sampling_rate_hz
        self.classes = tau_classes(model.direct.tau_quantiles_s + model.wafer.tau_quantiles_s)
        self.lookback = lookback_samples(float(self.classes.max()), fs)
        self.n_back = int(np.ceil(self.lookback / self.tile_samples))
        self.noise: NoiseGenerator | None = None
        self.prepare(1)

    def prepare(self, n_keys: int) -> None:
        self._lock = threading.Lock()
        self._events_cache: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        self._events_cache_size = 4 * (n_keys + 1) * (self.n_back + 1)
        self.noise = NoiseGenerator(self.model.noise_params, self.sampling_rate_hz, self.seed, "template_noise", cache_blocks=max(8, 3 * n_keys + 2))

    def events(self, key: int, block: int) -> dict[str, np.ndarray]:
        """Events whose *start* lies in ``block``: ``{"t": sample times (float), "c2", "tau_s", "wafer" (bool)}``."""
        hit = self._events_cache.get((key, block))
        if hit is None:
            hit = self._draw_events(key, block)
            with self._lock:
                self._events_cache[(key, block)] = hit
                while len(self._events_cache) > self._events_cache_size:
                    self._events_cache.pop(next(iter(self._events_cache)))
        return hit

    def _draw_events(self, key: int, block: int) -> dict[str, np.ndarray]:
        B = self.tile_samples
        fs = self.sampling_rate_hz
        out = {"t": [], "c2": [], "tau_s": [], "wafer": []}
        for pop, k in ((self.model.direct, key), (self.model.wafer, WAFER_KEY)):
            if pop.rate_hz <= 0:
                continue
            g = rng.generator(self.seed, "template_events", k, block)
            n = int(g.poisson(pop.rate_hz * B / fs))
            t = block * B + g.random(n) * B
            c2, tau = pop.sample(g.random(n), g.random(n))
            out["t"].append(t)
            out["c2"].append(c2)
            out["tau_s"].append(tau)
            out["wafer"].append(np.full(n, k == WAFER_KEY))
        return {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in out.items()}

    def glitches(self, key: int, t: int) -> np.ndarray:
        """The glitch part of tile ``t`` (float64, tile_samples)."""
        B = self.tile_samples
        fs = self.sampling_rate_hz
        s0 = t * B
        evs = [self.events(key, b) for b in range(max(0, t - self.n_back), t + 1)]
        ts = np.concatenate([e["t"] for e in evs])
        c2 = np.concatenate([e["c2"] for e in evs])
        tau = np.concatenate([e["tau_s"] for e in evs])
        return render_glitches(s0, B, ts, c2, tau, fs, self.classes)

    def tile(self, key: int, t: int) -> np.ndarray:
        B = self.tile_samples
        out = self.noise.generate(key, t * B, B)
        out += self.glitches(key, t).astype(np.float32)
        return out[None]

    def describe(self) -> dict[str, Any]:
        return {
            "method": "template",
            "tile_samples": self.tile_samples,
            "template": None if self.model.path is None else str(self.model.path),
            "direct_rate_hz": self.model.direct.rate_hz,
            "wafer_rate_hz": self.model.wafer.rate_hz,
            "streams": {"events": "template_events (detector, block); wafer: (WAFER_KEY, block)", "noise": "template_noise"},
        }
