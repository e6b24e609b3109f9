"""A population of glitches of the template baseline: rate and fitted distributions, sampled by inverse CDF."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from crab.core.errors import InputError
from crab.models.glitch_layer.shapes import QUANTILE_P, render_events, render_response


#: Cells of the probability grid on which :meth:`GlitchPopulation.sample_energy` tabulates ``ln E``.
ENERGY_GRID = 1 << 15


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
        for name in ("amplitude_quantiles", "tau_quantiles_s", "energy_quantiles_kev", "response_tau_s", "response_pw_per_kev"):
            setattr(self, name, [float(v) for v in getattr(self, name)])  # plain floats: a model file stores them
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
        self._peak: float | None = None
        self._logenergy = np.log(np.maximum(np.asarray(self.energy_quantiles_kev, dtype=np.float64), 1e-30))
        # ln E on a uniform grid of the probability (ENERGY_GRID cells): sample_energy is a lookup
        self._logenergy_grid = np.interp(np.linspace(0.0, 1.0, ENERGY_GRID + 1), QUANTILE_P, self._logenergy) if self._logenergy.size else None

    @property
    def linear(self) -> bool:
        """Whether this population is a fixed linear response driven by energies."""
        return len(self.response_tau_s) > 0

    def sample(self, u_amp: np.ndarray, u_tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(A, tau_s)`` from uniforms in [0, 1) by inverse-CDF interpolation (independent marginals)."""
        return np.interp(u_amp, QUANTILE_P, self._amp), np.exp(np.interp(u_tau, QUANTILE_P, self._logtau))

    def sample_energy(self, u: np.ndarray) -> np.ndarray:
        """Energies (keV) from uniforms in [0, 1): ``ln E`` interpolated linearly on the quantiles.

        Between the probabilities 0.01 and 0.99 (quantiles 0.005 apart) a lookup on
        :data:`ENERGY_GRID` equal cells (``np.interp`` of unsorted values costs about ten times
        more; the two differ only in the cells that hold a quantile, by a part in 10^4); in the
        tails, with their closely spaced quantiles, ``np.interp`` itself.
        """
        u = np.asarray(u, dtype=np.float64)
        x = u * ENERGY_GRID
        i = np.minimum(x.astype(np.int64), ENERGY_GRID - 1)
        g = self._logenergy_grid
        lo = g[i]
        out = lo + (x - i) * (g[i + 1] - lo)
        tail = (u < 0.01) | (u >= 0.99)
        out[tail] = np.interp(u[tail], QUANTILE_P, self._logenergy)
        return np.exp(out)

    def render(self, first_sample: int, n_samples: int, t_samples: np.ndarray, c2: np.ndarray, tau_s: np.ndarray, sampling_rate_hz: float) -> np.ndarray:
        """Signal of events of this population on ``[first_sample, first_sample + n_samples)`` (float64).

        ``t_samples``: hit times (samples, fractional); ``c2``: energies (keV) of a linear response
        (:func:`render_response`) or peak heights of independent templates (:func:`render_events`,
        with their decay times ``tau_s``; ignored for a linear response).
        """
        if self.linear:
            return render_response(first_sample, n_samples, t_samples, c2, self.response_tau_s, self.response_pw_per_kev, sampling_rate_hz, delay_s=self.delay_s)
        return render_events(first_sample, n_samples, t_samples, c2, tau_s, sampling_rate_hz, rise_s=self.rise_s, delay_s=self.delay_s)

    def peak_per_kev(self) -> float:
        """Peak over time of the linear response to 1 keV (TOD units per keV); 1.0 for
        independent templates (their ``c2`` is the peak height already)."""
        if not self.linear:
            return 1.0
        if self._peak is None:
            taus = np.asarray(self.response_tau_s, dtype=np.float64)
            s = np.linspace(0.0, 10.0 * taus.max(), 20001)[:, None]
            self._peak = float(np.max(np.exp(-s / taus[None, :]) @ np.asarray(self.response_pw_per_kev, dtype=np.float64)))
        return self._peak

    def truth(self, t_samples: np.ndarray, c2: np.ndarray, tau_s: np.ndarray, sampling_rate_hz: float, *, detector: int, wafer: int, family: int = 0):
        """Truth rows (:class:`crab.physics.events.EventTable`) of events of this population: hit times
        ``t_samples`` (samples, fractional), ``c2`` and ``tau_s`` as :meth:`render` takes them."""
        from crab.physics.events import EVENT_KIND_DIRECT, EVENT_KIND_WAFER, EventTable

        t = np.asarray(t_samples, dtype=np.float64)
        c2 = np.asarray(c2, dtype=np.float64)
        n = t.size
        return EventTable(
            time_s=t / float(sampling_rate_hz),
            detector=np.full(n, detector),
            charge_z=np.zeros(n),
            energy_kev=c2 if self.linear else np.full(n, np.nan),
            kind=np.full(n, EVENT_KIND_WAFER if self.kind == "wafer" else EVENT_KIND_DIRECT),
            amplitude=c2 * self.peak_per_kev(),
            sample=np.floor(t),
            wafer=np.full(n, wafer),
            family=np.full(n, family),
            tau_s=np.full(n, np.nan) if self.linear else tau_s,
        )

    def render_truth(self, events, first_sample: int, n_samples: int, sampling_rate_hz: float) -> np.ndarray:
        """The signal (float64) of truth rows made by :meth:`truth` on ``[first_sample, first_sample + n_samples)``."""
        fs = float(sampling_rate_hz)
        c2 = events.energy_kev if self.linear else events.amplitude
        return self.render(first_sample, n_samples, events.time_s * fs, c2, events.tau_s, fs)

    def max_tau_s(self) -> float:
        """Longest time constant of the population (s)."""
        t = self.response_tau_s if self.linear else self.tau_quantiles_s
        t = [v for v in t if np.isfinite(v) and v > 0]
        return max(t) if t else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: v for k, v in d.items() if not k.startswith("_")}
