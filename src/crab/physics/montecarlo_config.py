"""The definition of a Monte Carlo run: :class:`MonteCarloConfig` and its derived timing.

Everything that defines a run of :class:`crab.physics.montecarlo.MonteCarloSimulator`
apart from the seed: the wafer, the stage parameters of every physics module
(spectra, shield, deposits, TES, wafer path, noise), the sampling and
internal rates and the processing knobs (which do not change the result).
It round-trips through JSON (:meth:`MonteCarloConfig.to_dict`,
:meth:`MonteCarloConfig.from_dict`), which is how files record it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from crab.core.errors import InputError
from crab.core.provenance import to_jsonable
from crab.physics.deposit import WaferConfig
from crab.physics.events import default_detector_names
from crab.physics.noise import NoiseParams
from crab.physics.spectra import SpectraConfig
from crab.physics.tes import TESParams
from crab.physics.transport import ShieldConfig
from crab.physics.wafer_thermal import WaferThermalParams

#: Default detector noise: NEP 16 aW/sqrt(Hz) (about 5e-5 pW rms per sample at 19 Hz), knee 20 mHz.
DEFAULT_NOISE = NoiseParams(white_asd=1.6e-5, f_knee_hz=0.02, alpha=1.0, f_min_hz=1e-4)


@dataclass
class MonteCarloConfig:
    """Everything that defines a Monte Carlo run (the seed aside).

    Attributes
    ----------
    n_detectors : int
        Detectors on the wafer.
    sampling_rate_hz : float
        Output sampling rate (Hz); 19 Hz in older LiteBIRD studies, 31 Hz in recent ones.
    phi_gv : float
        Solar modulation potential (GV), 0.4 (minimum) to 1.4 (maximum).
    internal_rate_hz : float
        Target integration rate (Hz); the rate used is the nearest integer
        multiple of the sampling rate.  Must be above the sampling rate and
        fast enough for the TES time constants.
    spectra, shield, wafer, tes, wafer_thermal : dataclasses
        Stage parameters (see their modules).
    noise : NoiseParams
        Detector noise at the output rate (pW/sqrt(Hz)).
    add_noise : bool
        Add the noise (off: pure glitch signal).
    antialias_order : int
        Order of the Bessel anti-alias filter.
    antialias_cutoff_frac : float
        Its -3 dB frequency as a fraction of the sampling rate (< 0.5).
    event_block_s : float
        Length of the blocks on which primaries are drawn (s).
    segment_s : float
        Length of the internal processing segments (s); a memory/speed knob,
        it does not change the result.
    pulse_batch_s : float
        Time span of direct-hit clusters integrated together (vectorisation).
    rk4_max_h_rate : float
        Runge-Kutta steps are at most this fraction of the shortest time
        constant met (electrical, ~50-100 us; cooling of very hot absorbers):
        each internal sample interval is split into that many sub-steps.
    relax_tol_pw : float
        A pulse is integrated until it stays below this (pW); a hit arriving
        on a detector before the previous pulse has relaxed is integrated
        together with it (pile-up in the nonlinear TES).
    max_pulse_s : float
        Longest integration of one cluster (s).
    wafer_burnin_s : float
        Wafer history simulated before t = 0 (s), ~10 wafer time constants.
    kappa_landau, kappa_gauss : float
        Straggling regime bounds (see :mod:`crab.physics.deposit`).
    wafer_name : str
        Prefix of the detector names (``W00_D000``, ...).
    """

    n_detectors: int = 4
    sampling_rate_hz: float = 19.0
    phi_gv: float = 0.6
    internal_rate_hz: float = 20000.0
    spectra: SpectraConfig = field(default_factory=SpectraConfig)
    shield: ShieldConfig = field(default_factory=ShieldConfig)
    wafer: WaferConfig = field(default_factory=WaferConfig)
    tes: TESParams = field(default_factory=TESParams)
    wafer_thermal: WaferThermalParams = field(default_factory=WaferThermalParams)
    noise: NoiseParams = DEFAULT_NOISE
    add_noise: bool = True
    antialias_order: int = 6
    antialias_cutoff_frac: float = 0.3
    event_block_s: float = 10.0
    segment_s: float = 50.0
    pulse_batch_s: float = 1800.0
    rk4_max_h_rate: float = 0.25
    relax_tol_pw: float = 1e-9
    max_pulse_s: float = 10.0
    wafer_burnin_s: float = 3.0
    kappa_landau: float = 0.01
    kappa_gauss: float = 10.0
    wafer_name: str = "W00"

    # ------------------------------------------------------------------ validation
    def validate(self) -> "MonteCarloConfig":
        """Check the values; raise :class:`InputError` naming the first problem."""
        if isinstance(self.n_detectors, bool) or not isinstance(self.n_detectors, (int, np.integer)) or self.n_detectors < 1:
            raise InputError(f"number of detectors must be an integer >= 1, got {self.n_detectors!r}")
        fs = self.sampling_rate_hz
        if not (isinstance(fs, (int, float, np.number)) and np.isfinite(fs) and fs > 0):
            raise InputError(f"sampling rate must be a positive number of Hz, got {fs!r}")
        if not (np.isfinite(self.internal_rate_hz) and self.internal_rate_hz > 0):
            raise InputError(f"internal rate must be a positive number of Hz, got {self.internal_rate_hz!r}")
        if fs > self.internal_rate_hz:
            raise InputError(
                f"sampling rate {fs:g} Hz is above the internal integration rate {self.internal_rate_hz:g} Hz; "
                f"lower the sampling rate or raise the internal rate"
            )
        if not (np.isfinite(self.phi_gv) and 0 <= self.phi_gv <= 5):
            raise InputError(f"modulation potential phi must be in [0, 5] GV, got {self.phi_gv!r}")
        if not 0 < self.antialias_cutoff_frac < 0.5:
            raise InputError(f"antialias_cutoff_frac must be in (0, 0.5), got {self.antialias_cutoff_frac}")
        if not 1 <= int(self.antialias_order) <= 12:
            raise InputError(f"antialias_order must be in 1..12, got {self.antialias_order}")
        for name in ("event_block_s", "segment_s", "pulse_batch_s", "rk4_max_h_rate", "relax_tol_pw", "max_pulse_s"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise InputError(f"MonteCarloConfig.{name} must be a positive number, got {v!r}")
        if not (np.isfinite(self.wafer_burnin_s) and self.wafer_burnin_s >= 0):
            raise InputError(f"wafer_burnin_s must be >= 0, got {self.wafer_burnin_s!r}")
        self.wafer.detector_centres_mm(int(self.n_detectors))  # raises if they do not fit
        return self

    # ------------------------------------------------------------------ derived timing
    @property
    def decimation_factor(self) -> int:
        """Internal samples per output sample ``M`` (a multiple of 16 when M >= 64)."""
        m = max(1, int(round(self.internal_rate_hz / self.sampling_rate_hz)))
        if m >= 64:
            m = 16 * int(round(m / 16))
        return m

    @property
    def wafer_decimation(self) -> int:
        """Internal samples per sample of the wafer path (16 when that rate stays >= 1 kHz, else 1).

        The wafer path has no content above ~100 Hz (its fastest stage is
        ``tau_link_s``; the TES modes it excites carry 1e-4 of its power), so it
        is computed at ``internal rate / 16`` with the same (analog Bessel)
        anti-alias filter discretised at that rate.
        """
        m = self.decimation_factor
        return 16 if (m % 16 == 0 and m * self.sampling_rate_hz / 16 >= 1000.0) else 1

    @property
    def effective_internal_rate_hz(self) -> float:
        """The internal rate used: ``M`` times the sampling rate (Hz)."""
        return self.decimation_factor * float(self.sampling_rate_hz)

    @property
    def block_samples(self) -> int:
        """Output samples per event block."""
        return max(1, int(round(self.event_block_s * self.sampling_rate_hz)))

    @property
    def segment_blocks(self) -> int:
        """Event blocks per processing segment."""
        return max(1, int(round(self.segment_s / (self.block_samples / self.sampling_rate_hz))))

    @property
    def batch_segments(self) -> int:
        """Processing segments per pulse batch."""
        return max(1, int(round(self.pulse_batch_s / (self.segment_blocks * self.block_samples / self.sampling_rate_hz))))

    def detector_names(self) -> list[str]:
        """Names of the run's detectors, ``<wafer_name>_D000`` onwards."""
        return default_detector_names(int(self.n_detectors), self.wafer_name)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (see :func:`crab.core.provenance.to_jsonable`)."""
        return to_jsonable(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MonteCarloConfig":
        """Rebuild a config from :meth:`to_dict` output (e.g. a file's ``config`` attribute).

        Raises
        ------
        InputError
            For unknown keys or invalid values.
        """
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown Monte Carlo configuration keys {unknown}; known: {sorted(known)}")
        nested = {
            "spectra": SpectraConfig.from_dict,
            "shield": lambda x: ShieldConfig(**x),
            "wafer": lambda x: WaferConfig(**x),
            "tes": lambda x: TESParams(**x),
            "wafer_thermal": lambda x: WaferThermalParams(**x),
            "noise": lambda x: NoiseParams(**x),
        }
        try:
            for key, make in nested.items():
                if key in d and isinstance(d[key], Mapping):
                    d[key] = make(d[key])
            return cls(**d)
        except TypeError as exc:
            raise InputError(f"invalid Monte Carlo configuration: {exc}") from None
        except ValueError as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"invalid Monte Carlo configuration: {exc}") from None
