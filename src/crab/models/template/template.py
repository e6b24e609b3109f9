"""Template baseline: Poisson glitches with fitted templates plus fitted noise.

This is the simple method the paper argues against, after TOAST's
``InjectCosmicRays`` operator (direct hits as a Poisson process of templates
``C1 + C2 exp(-t/tau)``, wafer hits as common-mode noise), fitted on the
Monte Carlo truth.  Two populations:

Direct hits (one detector each)
    Poisson in time at the truth rate per detector; each is the template

    .. math::

        \\gamma(t) = A\\, \\frac{e^{-s/\\tau} - e^{-s/r}}{N(\\tau, r)},
        \\qquad s = t - t_0 - \\delta \\ge 0,

    with ``A`` (peak height) and ``tau`` drawn *independently* from their
    fitted distributions (the template method's known weakness: no
    amplitude-decay correlation, no pile-up, no nonlinearity); the rise
    ``r`` and the delay ``delta`` (the readout's anti-alias filter) are one
    fitted value each for the population (``r = 0`` gives TOAST's
    ``C2 exp(-t/tau)``; ``N`` normalises the peak to 1; ``C1 = 0``: the
    fitted TOD has its baseline at 0).
Wafer hits (every detector of the wafer, identically)
    Poisson in time at the truth rate per wafer; energies ``E`` drawn from
    the truth's deposited energies (``/events`` ``energy_kev``), each seen
    through one fixed linear response

    .. math::

        h(s) = \\sum_j a_j\\, e^{-s/\\tau_j}, \\qquad s = t - t_0 - \\delta_w \\ge 0,

    so a wafer hit adds ``E h(s)``.  They pile up into the common-mode
    'confusion noise' plus the occasional visible glitch, as in the Monte
    Carlo's linear wafer path.  (TOAST draws correlated white noise for wafer
    hits; an event-level linear model is closer to the physics and still a
    template method.)
Noise
    The noise model of :func:`crab.physics.noise.fit_noise_params` fitted on the TOD
    with the wafer model's prediction subtracted and the direct hits masked.

Fitting (:func:`fit_template`)
    1. Common mode: per sample, the mean of the detectors not inside a direct
       hit (interpolated where all are).
    2. Wafer response (:func:`fit_wafer_response`): the common mode is
       regressed on the truth's wafer events, each an impulse of weight
       ``energy_kev`` at its (sub-sample) time, through ``h``.  The
       ``a_j`` are linear least squares for given ``(tau_1, tau_2, delta_w)``
       (``tau_3 = tau_2 / 2``), which are found by Nelder-Mead on the
       residual (variable projection); both sides are high-passed (30 s
       running mean removed) so the 1/f drifts do not bias the gain.  This
       measures the gain on *all* wafer events at once, pile-up included,
       instead of measuring each event's amplitude on top of its neighbours.
    3. Direct hits (:func:`fit_glitches`) on each detector minus the wafer
       prediction: for every truth event, ``A`` and ``tau`` by linear least
       squares on a log grid of ``tau`` (refined by a parabola) above a local
       baseline (median of the 16 samples before); ``r`` and ``delta`` are
       scanned on a grid and the pair with the smallest mean fractional
       residual over all events is kept.
    4. Noise on ``TOD - wafer prediction`` with the direct hits masked (until
       their template falls below 0.3 noise RMS) and the gaps refilled with
       noise, so the confusion noise is not counted twice.
Generation (:class:`TemplateSource`, used through :class:`crab.generation.engine.TodGenerator`)
    Time is cut into blocks of ``tile_samples``.  The direct events of block
    ``b`` of detector key ``d`` come from ``rng.generator(seed,
    "template_events", d, b)`` (Poisson number, uniform continuous times,
    ``A`` and ``tau`` by inverse-CDF sampling of the fitted quantiles); the
    wafer events of block ``b`` from the key ``(WAFER_KEY, b)``, shared by
    every detector.  A block also renders the events of the previous blocks
    whose tails reach into it (until below 1e-7 of their height).  Direct
    glitches are evaluated exactly, event by event over their (short)
    support; the wafer signal is one impulse train per ``tau_j`` through the
    recursive filter ``y[n] = x[n] + exp(-1/(tau_j fs)) y[n-1]`` (sub-sample
    timing in the impulse weights), computed once per block for all
    detectors.  The noise is ``NoiseGenerator(noise_params, fs, seed,
    "template_noise")`` keyed on the detector.  Everything is keyed on (seed,
    detector, block), so the output does not depend on chunking, order or
    process layout.

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

from crab import __version__
from crab.core import rng
from crab.core.errors import FileFormatError, InputError, ModelCompatibilityError
from crab.models.base import TileSource
from crab.physics.noise import NoiseGenerator, NoiseParams, fit_noise_params
from crab.core.provenance import atomic_write_bytes
from crab.core.stats import robust_sigma

TEMPLATE_FILE = "template.json"
TEMPLATE_FORMAT = "crab-template"
#: Bumped when the JSON layout changes incompatibly (2: rise/delay of the
#: templates, linear wafer response driven by energies).
TEMPLATE_FORMAT_VERSION = 2
#: Key of the wafer events in the "template_events" stream: above every detector
#: key (indices and ``rng.detector_key`` values are below 2**63).
WAFER_KEY = 1 << 63
#: Probabilities at which the fitted distributions are stored (dense in the tails).
QUANTILE_P = np.unique(np.concatenate([np.linspace(0.0, 1.0, 201), 1.0 - np.logspace(-6, -2.3, 12), np.logspace(-6, -2.3, 12)]))
#: Samples per generation block (tile).
DEFAULT_BLOCK_SAMPLES = 1 << 16
#: A glitch is rendered until it is below this fraction of its height.
TAIL_FRACTION = 1e-7


def peak_norm(tau_s: np.ndarray | float, rise_s: float) -> np.ndarray:
    """Peak of ``exp(-s/tau) - exp(-s/rise)`` over ``s >= 0`` (1 for ``rise = 0``); needs ``tau > rise``."""
    tau = np.asarray(tau_s, dtype=np.float64)
    if rise_s <= 0:
        return np.ones_like(tau)
    r = float(rise_s)
    s_pk = np.log(tau / r) * tau * r / (tau - r)
    return np.exp(-s_pk / tau) - np.exp(-s_pk / r)


def template_shape(s: np.ndarray, tau_s: np.ndarray, rise_s: float) -> np.ndarray:
    """Peak-normalised template ``(exp(-s/tau) - exp(-s/rise)) / N`` at ``s`` (s; 0 for ``s < 0``)."""
    s = np.asarray(s, dtype=np.float64)
    tau = np.asarray(tau_s, dtype=np.float64)
    sp = np.maximum(s, 0.0)
    y = np.exp(-sp / tau)
    if rise_s > 0:
        y = (y - np.exp(-sp / rise_s)) / peak_norm(tau, rise_s)
    return np.where(s >= 0, y, 0.0)


@dataclass
class GlitchPopulation:
    """One kind of glitch of the template model.

    Two forms:

    - *independent templates* (direct hits; wafer hits of version-1-like
      models): each glitch is ``A template_shape(t - t0 - delay_s, tau,
      rise_s)`` with ``A`` and ``tau`` drawn independently from
      ``amplitude_quantiles`` and ``tau_quantiles_s``;
    - *linear response* (``response_tau_s`` given; the fitted wafer hits):
      each glitch is ``E sum_j response_pw_per_kev[j] exp(-s / response_tau_s[j])``,
      ``s = t - t0 - delay_s``, with the energy ``E`` drawn from
      ``energy_quantiles_kev`` (log-interpolated).

    Attributes
    ----------
    kind : str
        ``"direct"`` (one detector) or ``"wafer"`` (common to all detectors).
    rate_hz : float
        Events per second, per detector (direct) or per wafer (wafer).
    amplitude_quantiles : list of float
        Quantiles of the peak height ``A`` (TOD units) at :data:`QUANTILE_P`.
    tau_quantiles_s : list of float
        Quantiles of the decay time ``tau`` (s) at :data:`QUANTILE_P`.
    n_events : int
        Truth events used for the fit.
    rise_s : float
        Rise time of the templates (s; 0: instantaneous rise, TOAST's template).
    delay_s : float
        Delay of the templates after the hit time (s).
    energy_quantiles_kev : list of float
        Quantiles of the deposited energy (keV) at :data:`QUANTILE_P` (linear response).
    response_tau_s, response_pw_per_kev : list of float
        Time constants (s) and coefficients (TOD units per keV) of the linear response.
    """

    kind: str
    rate_hz: float = 0.0
    amplitude_quantiles: list[float] = field(default_factory=list)
    tau_quantiles_s: list[float] = field(default_factory=list)
    n_events: int = 0
    rise_s: float = 0.0
    delay_s: float = 0.0
    energy_quantiles_kev: list[float] = field(default_factory=list)
    response_tau_s: list[float] = field(default_factory=list)
    response_pw_per_kev: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in ("direct", "wafer"):
            raise InputError(f"glitch kind must be 'direct' or 'wafer', got {self.kind!r}")
        if not (np.isfinite(self.rate_hz) and self.rate_hz >= 0):
            raise InputError(f"glitch rate must be finite and >= 0, got {self.rate_hz!r}")
        for name in ("rise_s", "delay_s"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise InputError(f"{self.kind} glitches: {name} must be finite and >= 0, got {v!r}")
        nq = len(QUANTILE_P)
        if self.linear:
            if len(self.response_pw_per_kev) != len(self.response_tau_s) or not all(np.isfinite(t) and t > 0 for t in self.response_tau_s):
                raise InputError(f"{self.kind} glitches: response_tau_s (positive) and response_pw_per_kev must have the same length")
            if self.rate_hz > 0 and len(self.energy_quantiles_kev) != nq:
                raise InputError(f"{self.kind} glitches: need {nq} quantiles of energy")
        elif self.rate_hz > 0:
            if len(self.amplitude_quantiles) != nq or len(self.tau_quantiles_s) != nq:
                raise InputError(f"{self.kind} glitches: need {nq} quantiles of amplitude and tau")
            if self.rise_s > 0 and min(self.tau_quantiles_s) <= self.rise_s:
                raise InputError(f"{self.kind} glitches: every tau must exceed rise_s = {self.rise_s}")
        self._amp = np.asarray(self.amplitude_quantiles, dtype=np.float64)
        self._logtau = np.log(np.maximum(np.asarray(self.tau_quantiles_s, dtype=np.float64), 1e-30))
        self._logenergy = np.log(np.maximum(np.asarray(self.energy_quantiles_kev, dtype=np.float64), 1e-30))

    @property
    def linear(self) -> bool:
        """Whether this population is a fixed linear response driven by energies."""
        return len(self.response_tau_s) > 0

    def sample(self, u_amp: np.ndarray, u_tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(A, tau_s)`` from uniforms in [0, 1) by inverse-CDF interpolation (independent marginals)."""
        return np.interp(u_amp, QUANTILE_P, self._amp), np.exp(np.interp(u_tau, QUANTILE_P, self._logtau))

    def sample_energy(self, u: np.ndarray) -> np.ndarray:
        """Energies (keV) from uniforms in [0, 1), log-interpolated between the quantiles."""
        return np.exp(np.interp(u, QUANTILE_P, self._logenergy))

    def max_tau_s(self) -> float:
        """Longest time constant of the population (s)."""
        t = self.response_tau_s if self.linear else self.tau_quantiles_s
        t = [v for v in t if np.isfinite(v) and v > 0]
        return max(t) if t else 0.0

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
        Noise fitted on the TOD (glitches and wafer model removed).
    direct, wafer : GlitchPopulation
    units : str
    fit_info : dict
        Where and how it was fitted (file, duration, detectors, settings, fit quality).
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
                f"is not supported by crab {__version__}, which reads version {TEMPLATE_FORMAT_VERSION}; "
                "fit it again (`crab generate --method template --fit MC.h5 --save-template ...`)"
            )
        if not np.allclose(d.get("quantile_p", []), QUANTILE_P) or len(d.get("quantile_p", [])) != len(QUANTILE_P):
            raise ModelCompatibilityError(f"{where}: quantile grid differs from this version's; fit it again")
        try:
            noise = dict(d["noise_params"])
            for k in ("table_freq_hz", "table_psd"):
                if k in noise:
                    noise[k] = tuple(noise[k])
            return cls(
                sampling_rate_hz=float(d["sampling_rate_hz"]),
                noise_params=NoiseParams(**noise),
                direct=GlitchPopulation(**d["direct"]),
                wafer=GlitchPopulation(**d["wafer"]),
                units=d.get("units", "pW"),
                fit_info=dict(d.get("fit_info", {})),
                path=path,
            )
        except (KeyError, TypeError, ValueError, InputError) as exc:
            raise ModelCompatibilityError(f"{where}: malformed template model ({exc.__class__.__name__}: {exc})") from None


# --------------------------------------------------------------------------- rendering
def lookback_samples(tau_s: float, sampling_rate_hz: float, delay_s: float = 0.0) -> int:
    """Samples after a hit by which its glitch is below :data:`TAIL_FRACTION` of its height (it is dropped there)."""
    return int(np.ceil((tau_s * np.log(1.0 / TAIL_FRACTION) + delay_s) * sampling_rate_hz)) + 2


def render_events(first_sample: int, n_samples: int, t_samples: np.ndarray, amp: np.ndarray, tau_s: np.ndarray, sampling_rate_hz: float, *, rise_s: float = 0.0, delay_s: float = 0.0) -> np.ndarray:
    """Sum of templates ``amp * template_shape(t - t0 - delay, tau, rise)`` on ``[first_sample, first_sample + n_samples)``.

    Every event is evaluated exactly over its support (until its template is
    below :data:`TAIL_FRACTION`; the rise is shorter than ``tau``), on
    absolute sample indices, so any slice gets the same values as the same
    samples of a longer rendering.  Give every event whose support reaches the
    slice (:func:`lookback_samples`).

    Parameters
    ----------
    t_samples : ndarray of float
        Hit times in samples (fractional, absolute index).
    amp, tau_s : ndarray
        Peak heights (TOD units) and decay times (s).

    Returns
    -------
    ndarray of float64, shape (n_samples,)
    """
    s0, n = int(first_sample), int(n_samples)
    out = np.zeros(max(n, 0))
    ts = np.asarray(t_samples, dtype=np.float64)
    if ts.size == 0 or n <= 0:
        return out
    fs = float(sampling_rate_hz)
    amp = np.asarray(amp, dtype=np.float64)
    tau = np.asarray(tau_s, dtype=np.float64)
    first = np.ceil(ts + delay_s * fs).astype(np.int64)  # first sample with s >= 0
    length = np.ceil(tau * fs * np.log(1.0 / TAIL_FRACTION)).astype(np.int64) + 1
    a = np.maximum(first, s0)
    b = np.minimum(first + length, s0 + n)
    keep = b > a
    if not np.any(keep):
        return out
    a, b, ts, amp, tau = a[keep], b[keep], ts[keep], amp[keep], tau[keep]
    cnt = b - a
    ev = np.repeat(np.arange(cnt.size), cnt)
    idx = a[ev] + (np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt))
    s = (idx - ts[ev]) / fs - delay_s
    y = amp[ev] * template_shape(s, tau[ev], rise_s)
    out += np.bincount(idx - s0, weights=y, minlength=n)[:n]
    return out


def render_response(first_sample: int, n_samples: int, t_samples: np.ndarray, energy: np.ndarray, response_tau_s, response_coef, sampling_rate_hz: float, *, delay_s: float = 0.0) -> np.ndarray:
    """Sum of ``E_i sum_j c_j exp(-(t - t_i - delay)/tau_j)`` on ``[first_sample, first_sample + n_samples)``.

    One impulse train per ``tau_j`` (an impulse at the first sample at or
    after ``t_i + delay``, weighted by ``E_i c_j exp(-frac/tau_j)`` for the
    sub-sample timing) through the recursive filter ``y[n] = x[n] +
    exp(-1/(tau_j fs)) y[n-1]``, started at zero :func:`lookback_samples`
    before the slice: the cost does not depend on the event rate.  Give every
    event starting in ``[first_sample - lookback, first_sample + n_samples)``.
    """
    import scipy.signal

    s0, n = int(first_sample), int(n_samples)
    out = np.zeros(max(n, 0))
    ts = np.asarray(t_samples, dtype=np.float64)
    if ts.size == 0 or n <= 0 or len(response_tau_s) == 0:
        return out
    fs = float(sampling_rate_hz)
    taus = np.asarray(response_tau_s, dtype=np.float64)
    L = lookback_samples(float(taus.max()), fs)
    tt = ts + delay_s * fs
    i0 = np.ceil(tt).astype(np.int64)
    sel = (i0 >= s0 - L) & (i0 < s0 + n)
    if not np.any(sel):
        return out
    i0, frac, e = i0[sel] - (s0 - L), (i0[sel] - tt[sel]), np.asarray(energy, dtype=np.float64)[sel]
    for tau, c in zip(taus, response_coef):
        x = np.bincount(i0, weights=c * e * np.exp(-frac / (tau * fs)), minlength=L + n)
        out += scipy.signal.lfilter([1.0], [1.0, -np.exp(-1.0 / (tau * fs))], x)[L:]
    return out


def render_glitches(first_sample: int, n_samples: int, t_samples: np.ndarray, c2: np.ndarray, tau_s: np.ndarray, sampling_rate_hz: float, classes: np.ndarray | None = None) -> np.ndarray:
    """Sum of TOAST templates ``c2 exp(-(t - t0)/tau)`` (no rise, no delay) on a slice; see :func:`render_events`.

    ``classes`` is accepted for compatibility and ignored (every glitch is now exact).
    """
    return render_events(first_sample, n_samples, t_samples, c2, tau_s, sampling_rate_hz)


# --------------------------------------------------------------------------- fitting
def fit_glitches(
    series: np.ndarray,
    event_samples: np.ndarray,
    sampling_rate_hz: float,
    *,
    rise_s: float = 0.0,
    delay_s: float = 0.0,
    fit_samples: int | None = None,
    baseline_samples: int = 16,
    tau_range_s: tuple[float, float] | None = None,
    n_tau: int = 64,
    batch: int = 2048,
    return_residual: bool = False,
):
    """Fit ``A template_shape(t - t0 - delay, tau, rise)`` after each event of one series.

    For every ``tau`` of a log grid the peak height ``A`` is the linear
    least-squares amplitude (above the median of the ``baseline_samples``
    samples before the event) and the ``tau`` with the smallest residual wins,
    refined by a parabola through the neighbouring grid points (vectorised:
    one batched product for all events).  The exact sub-sample time of each
    event is used, and its window stops before the next event of the series.

    Parameters
    ----------
    series : ndarray (n_samples,)
        TOD of one detector (wafer signal removed).
    event_samples : ndarray of float
        Event times in samples from the start of ``series`` (fractional).
    sampling_rate_hz : float
    rise_s, delay_s : float
        Rise time and delay of the template (s).
    fit_samples : int, optional
        Samples fitted after each event (default 2.5 s worth, 16 to 256).
    baseline_samples : int
        Samples before the event whose median is the baseline.
    tau_range_s : (float, float), optional
        Range of the tau grid (default 0.2 sample, or 1.05 rise, to ``fit_samples`` samples).
    n_tau : int
        Points of the log-spaced tau grid.
    batch : int
        Events per vectorised batch (bounds memory).
    return_residual : bool
        Also return each event's fractional residual ``|S - model|^2 / |S|^2``.

    Returns
    -------
    amp, tau_s, ok[, frac_residual] : ndarrays
        Peak height (series units), decay time (s), and whether the event could
        be fitted (far enough from the edges).
    """
    fs = float(sampling_rate_hz)
    x = np.asarray(series, dtype=np.float64).reshape(-1)
    ts = np.asarray(event_samples, dtype=np.float64).reshape(-1)
    K = int(fit_samples or int(np.clip(np.ceil(2.5 * fs), 16, 256)))
    NB = int(baseline_samples)
    lo_tau, hi_tau = tau_range_s or (max(0.2 / fs, 1.05 * rise_s), K / fs)
    lo_tau = max(lo_tau, 1.05 * rise_s)
    taus = np.geomspace(lo_tau, max(hi_tau, lo_tau * 1.01), n_tau)
    k = np.arange(K)
    i0 = np.ceil(ts).astype(np.int64)
    ok = (i0 - NB - 1 >= 0) & (i0 + K <= x.size)
    # each event's window stops before the next event of the series (its glitch is not this one's tail)
    span = np.full(ts.size, K, dtype=np.int64)
    if ts.size > 1:
        order = np.argsort(ts, kind="stable")
        nxt = np.ceil(ts[order[1:]]).astype(np.int64) - i0[order[:-1]]
        span[order[:-1]] = np.clip(nxt, 2, K)
    amp = np.full(ts.size, np.nan)
    tau = np.full(ts.size, np.nan)
    fres = np.full(ts.size, np.nan)
    idx_ok = np.flatnonzero(ok)
    step = np.log(taus[1] / taus[0])
    for s in range(0, idx_ok.size, batch):
        e = idx_ok[s : s + batch]
        base_idx = i0[e, None] + np.arange(-NB - 1, -1)[None, :]
        baseline = np.median(x[base_idx], axis=1)
        W = (k[None, :] < span[e, None]).astype(np.float64)  # (n, K) samples in the window
        S = (x[i0[e, None] + k[None, :]] - baseline[:, None]) * W  # (n, K)
        sk = (i0[e, None] + k[None, :] - ts[e, None]) / fs - delay_s  # (n, K) template time of each sample
        B = template_shape(sk[:, None, :], taus[None, :, None], rise_s) * W[:, None, :]  # (n, n_tau, K)
        SB = np.einsum("nk,ntk->nt", S, B)
        BB = np.maximum(np.einsum("ntk,ntk->nt", B, B), 1e-300)
        score = SB**2 / BB  # residual = |S|^2 - score
        best = np.argmax(score, axis=1)
        j = np.clip(best, 1, n_tau - 2)
        r = np.arange(e.size)
        s_m, s_0, s_p = score[r, j - 1], score[r, j], score[r, j + 1]
        den = s_m - 2 * s_0 + s_p
        shift = np.where((best == j) & (den < 0), 0.5 * (s_m - s_p) / np.where(den < 0, den, -1.0), 0.0)
        tau_e = np.exp(np.log(taus[best]) + np.clip(shift, -1, 1) * step)
        tau_e = np.maximum(tau_e, lo_tau)
        b = template_shape(sk, tau_e[:, None], rise_s) * W
        A = np.einsum("ij,ij->i", S, b) / np.maximum(np.einsum("ij,ij->i", b, b), 1e-300)
        amp[e] = A
        tau[e] = tau_e
        SS = np.maximum(np.einsum("ij,ij->i", S, S), 1e-300)
        fres[e] = np.einsum("ij,ij->i", S - A[:, None] * b, S - A[:, None] * b) / SS
    if return_residual:
        return amp, tau, ok, fres
    return amp, tau, ok


def fit_direct_shape(
    series_list: list[np.ndarray],
    events_list: list[np.ndarray],
    sampling_rate_hz: float,
    *,
    delays_samples: np.ndarray | None = None,
    rises_samples: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """The template's (rise_s, delay_s) with the smallest mean fractional residual over all events.

    Scans a grid of delays (0 to 3 samples) and rises (0 and 0.1 to 2
    samples) with a coarse tau grid.  Returns ``(rise_s, delay_s, mean_residual)``.
    """
    fs = float(sampling_rate_hz)
    delays = np.linspace(0.0, 3.0, 13) if delays_samples is None else np.asarray(delays_samples)
    rises = np.concatenate([[0.0], np.geomspace(0.1, 2.0, 7)]) if rises_samples is None else np.asarray(rises_samples)
    n_ev = sum(len(e) for e in events_list)
    if n_ev == 0:
        return 0.0, 0.0, float("nan")
    best = (np.inf, 0.0, 0.0)
    for r in rises:
        for d in delays:
            tot, cnt = 0.0, 0
            for x, t in zip(series_list, events_list):
                if len(t) == 0:
                    continue
                _, _, ok, fres = fit_glitches(x, t, fs, rise_s=r / fs, delay_s=d / fs, n_tau=24, return_residual=True)
                tot += float(np.nansum(fres[ok]))
                cnt += int(ok.sum())
            score = tot / max(cnt, 1)
            if score < best[0]:
                best = (score, r / fs, d / fs)
    return best[1], best[2], best[0]


def _highpass(a: np.ndarray, width: int) -> np.ndarray:
    """``a`` minus its running mean over ``width`` samples (along the first axis; linear)."""
    import scipy.ndimage

    return a - scipy.ndimage.uniform_filter1d(a, width, axis=0, mode="nearest")


def fit_wafer_response(
    common: np.ndarray,
    weight: np.ndarray,
    event_samples: np.ndarray,
    energy_kev: np.ndarray,
    sampling_rate_hz: float,
    *,
    highpass_s: float = 30.0,
    init: tuple[float, float, float] = (0.3, 0.03, 0.05),
    maxiter: int = 600,
) -> dict[str, Any]:
    """Fit the linear wafer response ``h(s) = sum_j a_j exp(-s / tau_j)``, ``s = t - t_i - delay``.

    ``common`` is regressed on ``sum_i E_i h(t - t_i)`` (the truth's wafer
    events, rendered by :func:`render_response`): for given ``(tau_1, tau_2,
    delay)`` (``tau_3 = tau_2 / 2``) the ``a_j`` are weighted linear least
    squares; the non-linear parameters minimise the residual (Nelder-Mead,
    from the best of a small grid).  Both sides are high-passed (running mean
    over ``highpass_s`` removed) against the 1/f drifts.

    Parameters
    ----------
    common : ndarray (n_samples,)
        Common-mode TOD (direct hits removed).
    weight : ndarray (n_samples,)
        1 where ``common`` is measured, 0 where it was interpolated.
    event_samples, energy_kev : ndarray
        Wafer events: times (samples, fractional) and deposited energies (keV).

    Returns
    -------
    dict with ``tau_s`` (list), ``pw_per_kev`` (list), ``delay_s``,
    ``prediction`` (ndarray, the fitted wafer signal, not high-passed),
    ``residual_rms`` and ``common_rms`` (of the high-passed series, weighted samples).
    """
    import scipy.optimize

    fs = float(sampling_rate_hz)
    c = np.asarray(common, dtype=np.float64)
    n = c.size
    good = np.asarray(weight) > 0
    width = int(max(3, min(n, round(highpass_s * fs))))
    ch = _highpass(c, width)[good]
    ts = np.asarray(event_samples, dtype=np.float64)
    E = np.asarray(energy_kev, dtype=np.float64)

    def taus_of(p):
        t1, t2 = float(np.exp(p[0])), float(np.exp(p[1]))
        return [t1, t2, t2 / 2.0]

    def design(p):
        taus = taus_of(p)
        d = float(p[2])
        R = np.stack([render_response(0, n, ts, E, [tau], [1.0], fs, delay_s=d) for tau in taus], axis=1)
        return taus, d, R

    def solve(p):
        taus, d, R = design(p)
        Rh = _highpass(R, width)[good]
        scale = np.maximum(np.sqrt(np.sum(Rh**2, axis=0)), 1e-300)
        a, *_ = np.linalg.lstsq(Rh / scale, ch, rcond=None)
        a = a / scale
        res = ch - Rh @ a
        return float(np.sum(res**2)), taus, d, a, R

    def cost(p):
        t1, t2, d = float(np.exp(p[0])), float(np.exp(p[1])), float(p[2])
        # keep the time constants apart and in range (no degenerate cancelling pairs)
        if not (t2 * 1.5 < t1 < 30.0 and t2 > 0.05 / fs and 0.0 <= d < 1.0):
            return np.inf
        return solve(p)[0]

    starts = [(np.log(t1), np.log(t2), d) for t1 in (init[0] / 2, init[0], init[0] * 2) for t2 in (init[1] / 3, init[1], init[1] * 3) for d in (0.0, init[2], 2 * init[2])]
    costs = [cost(np.array(p)) for p in starts]
    p0 = np.array(starts[int(np.argmin(costs))])
    sol = scipy.optimize.minimize(cost, p0, method="Nelder-Mead", options={"xatol": 1e-3, "fatol": 0.0, "maxiter": maxiter})
    p = sol.x if np.isfinite(sol.fun) and sol.fun <= min(costs) else p0
    sse, taus, d, a, R = solve(p)
    return {
        "tau_s": [float(v) for v in taus],
        "pw_per_kev": [float(v) for v in a],
        "delay_s": float(d),
        "prediction": R @ a,
        "residual_rms": float(np.sqrt(sse / max(ch.size, 1))),
        "common_rms": float(np.sqrt(np.mean(ch**2))) if ch.size else 0.0,
    }


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
        w = np.ones(_SMOOTH)
        num = np.convolve(np.where(mask, 0.0, out[d]), w, mode="same")
        den = np.convolve((~mask).astype(np.float64), w, mode="same")
        smooth = num / np.maximum(den, 1.0)
        out[d, bad] = np.interp(bad, good, smooth[good]) + sigma * g.standard_normal(bad.size)
    return out


def _mask_glitches(mask: np.ndarray, t: np.ndarray, amp: np.ndarray, tau: np.ndarray, fs: float, sigma: float, tail_max: int, delay_s: float = 0.0, min_samples: int = 0) -> None:
    """Mark samples from 2 before each event to where its glitch drops below 0.3 sigma (at least ``min_samples``)."""
    if t.size == 0:
        return
    tau_m = np.maximum(np.nan_to_num(tau, nan=0.0), np.nanmedian(tau) if np.any(np.isfinite(tau)) else 0.0)  # a mis-fitted short tau must not leave the tail unmasked
    i0 = np.ceil(t).astype(np.int64)
    K = np.ceil(tau_m * fs * np.log(np.maximum(np.abs(np.nan_to_num(amp)) / (0.3 * sigma), 1.0)) + delay_s * fs + 2).astype(np.int64)
    K = np.clip(np.maximum(K, min_samples), 1, tail_max)
    n_k = K + 2
    ev = np.repeat(np.arange(t.size), n_k)
    idx = i0[ev] - 2 + (np.arange(int(n_k.sum())) - np.repeat(np.cumsum(n_k) - n_k, n_k))
    mask[np.clip(idx, 0, mask.size - 1)] = True


def _quantiles(v: np.ndarray) -> list[float]:
    return np.quantile(v, QUANTILE_P).tolist() if v.size else []


def _common_mode(x: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample mean of the unmasked detectors, interpolated where all are masked; and the 0/1 weight."""
    cnt = (~masks).sum(axis=0)
    c = np.where(masks, 0.0, x).sum(axis=0) / np.maximum(cnt, 1)
    good = cnt > 0
    if not good.any():
        return x.mean(axis=0), np.ones(x.shape[1])
    if not good.all():
        c[~good] = np.interp(np.flatnonzero(~good), np.flatnonzero(good), c[good])
    return c, good.astype(np.float64)


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

    See the module docstring for the model and the fitting steps.

    Parameters
    ----------
    tod : ndarray (n_detectors, n_samples)
        Monte Carlo TOD (units ``units``).
    events : crab.io.tod.EventTable
        Truth of the hits (times on the same clock as ``start_time_s``;
        ``energy_kev`` of the wafer hits drives the wafer response).
    sampling_rate_hz : float
    start_time_s : float
        Time of sample 0 (s).
    units : str
    tail_max_s : float
        Longest glitch tail masked out of the noise fit (s).
    fit_info : dict, optional
        Recorded with the model.
    """
    from crab.physics.events import EVENT_KIND_WAFER

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
    tail_max = int(np.ceil(tail_max_s * fs))
    sigmas = [robust_sigma(r) for r in x]
    direct_t = [t[~is_wafer & inside & (det == d)] for d in range(n_det)]
    n_direct = int(sum(v.size for v in direct_t))

    # 1. common mode, with a first (generous, 1 s) mask of the direct hits
    masks = np.zeros(x.shape, dtype=bool)
    for d in range(n_det):
        _mask_glitches(masks[d], direct_t[d], np.zeros(direct_t[d].size), np.zeros(direct_t[d].size), fs, 1.0, tail_max, min_samples=int(np.ceil(fs)))
    common, weight = _common_mode(x, masks)

    # 2. wafer response, regressed on the truth's energies
    mw = is_wafer & inside
    wafer_prediction = np.zeros(n)
    wafer_info: dict[str, Any] = {}
    n_wafer = int(np.sum(mw))
    energies = np.asarray(events.energy_kev, dtype=np.float64)[mw]
    if n_wafer:
        if not np.all(np.isfinite(energies)) or np.any(energies <= 0):
            raise InputError("wafer events need positive, finite energy_kev to fit the wafer response")
        # events shortly before the start still reach into the TOD
        pre = is_wafer & (t < 0) & (t > -lookback_samples(30.0, fs))
        tw = np.concatenate([t[pre], t[mw]])
        ew = np.concatenate([np.asarray(events.energy_kev, dtype=np.float64)[pre], energies])
        fitw = fit_wafer_response(common, weight, tw, ew, fs)
        wafer_prediction = fitw.pop("prediction")
        wafer_info = fitw
        wafer = GlitchPopulation(
            "wafer",
            n_wafer / duration,
            n_events=n_wafer,
            delay_s=fitw["delay_s"],
            energy_quantiles_kev=_quantiles(energies),
            response_tau_s=fitw["tau_s"],
            response_pw_per_kev=fitw["pw_per_kev"],
        )
    else:
        wafer = GlitchPopulation("wafer", 0.0)
    y = x - wafer_prediction[None, :]

    # 3. direct hits on the TOD minus the wafer prediction
    rise, delay, shape_res = fit_direct_shape([y[d] for d in range(n_det)], direct_t, fs)
    amps, taus = [], []
    masks = np.zeros(x.shape, dtype=bool)
    for d in range(n_det):
        if direct_t[d].size:
            a, tau, ok = fit_glitches(y[d], direct_t[d], fs, rise_s=rise, delay_s=delay)
            amps.append(a[ok])
            taus.append(tau[ok])
            _mask_glitches(masks[d], direct_t[d], np.where(ok, a, np.nanmax(np.abs(a)) if ok.any() else 0.0), tau, fs, sigmas[d], tail_max, delay_s=delay, min_samples=int(np.ceil(3 + delay * fs)))
    amp = np.concatenate(amps) if amps else np.zeros(0)
    tau = np.concatenate(taus) if taus else np.zeros(0)
    direct = GlitchPopulation("direct", n_direct / (n_det * duration) if amp.size else 0.0, _quantiles(amp), _quantiles(tau), int(amp.size), rise_s=float(rise), delay_s=float(delay))

    # 4. noise on the TOD minus the wafer model, direct hits masked
    try:
        clean = _glitch_free(y, masks)
        noise = fit_noise_params(clean, fs, nperseg=int(min(4096, n)))
    except Exception as exc:  # least squares can fail on degenerate data
        raise InputError(f"cannot fit the noise model ({exc.__class__.__name__}: {exc})") from None
    info = {
        "n_detectors": n_det,
        "n_samples": n,
        "duration_s": duration,
        "n_direct_events": n_direct,
        "n_wafer_events": n_wafer,
        "direct_shape_mean_fractional_residual": float(shape_res),
        **({"wafer_fit": wafer_info} if wafer_info else {}),
        **(fit_info or {}),
    }
    return TemplateModel(sampling_rate_hz=fs, noise_params=noise, direct=direct, wafer=wafer, units=units, fit_info=info)


def fit_template_file(path: str | os.PathLike, **kw: Any) -> TemplateModel:
    """Fit the template baseline on a Monte Carlo TOD file with its ``/events`` truth."""
    from crab.io.tod import read_tod

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
class TemplateSource(TileSource):
    """Tiles (blocks) of template TOD for :class:`crab.generation.engine.TodGenerator`.

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
        self.lookback = max(lookback_samples(p.max_tau_s(), fs, p.delay_s) for p in (model.direct, model.wafer))
        self.n_back = int(np.ceil(self.lookback / self.tile_samples))
        self.noise: NoiseGenerator | None = None
        self.prepare(1)

    def prepare(self, n_keys: int) -> None:
        self._lock = threading.Lock()
        self._events_cache: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        self._events_cache_size = 4 * (n_keys + 1) * (self.n_back + 1)
        self._wafer_cache: dict[int, np.ndarray] = {}
        self._wafer_cache_size = 4 + 2 * n_keys
        self.noise = NoiseGenerator(self.model.noise_params, self.sampling_rate_hz, self.seed, "template_noise", cache_blocks=max(8, 3 * n_keys + 2))

    def events(self, key: int, block: int) -> dict[str, np.ndarray]:
        """Events whose hit time lies in ``block``: ``{"t": sample times (float), "c2": peak height
        (direct) or energy in keV (linear wafer), "tau_s", "wafer" (bool)}``."""
        direct = self._events(key, block)
        wafer = self._events(WAFER_KEY, block)
        return {k: np.concatenate([direct[k], wafer[k]]) for k in direct}

    def _events(self, key: int, block: int) -> dict[str, np.ndarray]:
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
        is_wafer = key == WAFER_KEY
        pop = self.model.wafer if is_wafer else self.model.direct
        if pop.rate_hz <= 0:
            z = np.zeros(0)
            return {"t": z, "c2": z, "tau_s": z, "wafer": np.zeros(0, bool)}
        g = rng.generator(self.seed, "template_events", key, block)
        n = int(g.poisson(pop.rate_hz * B / fs))
        t = block * B + g.random(n) * B
        if pop.linear:
            c2, tau = pop.sample_energy(g.random(n)), np.full(n, np.nan)
        else:
            c2, tau = pop.sample(g.random(n), g.random(n))
        return {"t": t, "c2": c2, "tau_s": tau, "wafer": np.full(n, is_wafer)}

    def _gather(self, key: int, t: int) -> dict[str, np.ndarray]:
        evs = [self._events(key, b) for b in range(max(0, t - self.n_back), t + 1)]
        return {k: np.concatenate([e[k] for e in evs]) for k in ("t", "c2", "tau_s")}

    def render(self, pop: GlitchPopulation, first_sample: int, n_samples: int, ev: dict[str, np.ndarray]) -> np.ndarray:
        """Signal of the events ``ev`` of population ``pop`` on ``[first_sample, first_sample + n_samples)``."""
        fs = self.sampling_rate_hz
        if pop.linear:
            return render_response(first_sample, n_samples, ev["t"], ev["c2"], pop.response_tau_s, pop.response_pw_per_kev, fs, delay_s=pop.delay_s)
        return render_events(first_sample, n_samples, ev["t"], ev["c2"], ev["tau_s"], fs, rise_s=pop.rise_s, delay_s=pop.delay_s)

    def wafer_signal(self, t: int) -> np.ndarray:
        """The wafer part of tile ``t`` (float64, tile_samples), common to every detector (cached)."""
        hit = self._wafer_cache.get(t)
        if hit is None:
            B = self.tile_samples
            hit = self.render(self.model.wafer, t * B, B, self._gather(WAFER_KEY, t)) if self.model.wafer.rate_hz > 0 else np.zeros(B)
            with self._lock:
                self._wafer_cache[t] = hit
                while len(self._wafer_cache) > self._wafer_cache_size:
                    self._wafer_cache.pop(next(iter(self._wafer_cache)))
        return hit

    def direct_signal(self, key: int, t: int) -> np.ndarray:
        """The direct-hit part of tile ``t`` of detector ``key`` (float64, tile_samples)."""
        B = self.tile_samples
        if self.model.direct.rate_hz <= 0:
            return np.zeros(B)
        return self.render(self.model.direct, t * B, B, self._gather(key, t))

    def glitches(self, key: int, t: int) -> np.ndarray:
        """The glitch part of tile ``t`` (float64, tile_samples)."""
        return self.direct_signal(key, t) + self.wafer_signal(t)

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
            "wafer_model": "linear response" if self.model.wafer.linear else "independent templates",
            "streams": {"events": "template_events (detector, block); wafer: (WAFER_KEY, block)", "noise": "template_noise"},
        }
