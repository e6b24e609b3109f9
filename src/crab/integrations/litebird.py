"""Cosmic-ray glitches as a litebird_sim systematic effect (optional extra ``crab-tod[litebird]``).

Three layers, as litebird_sim's systematics (e.g. ``litebird_sim.gaindrifts``):

* :func:`add_cosmic_rays`: a plain ``(n_detectors, n_samples)`` numpy array;
* :func:`apply_cosmic_rays_to_observations`: one or more litebird_sim
  ``Observation`` objects (``component="tod"`` by default);
* :func:`apply_cosmic_rays_to_simulation`: the ``Simulation.apply_X`` wrapper
  (all the simulation's observations, optional report entry).

The generated TOD is *added* to the existing samples, never written over them:
applying twice with the same seed adds the same realisation twice.

Randomness follows the detector and the absolute time, not the layout
---------------------------------------------------------------------
Detector ``name`` gets the key :func:`crab.core.rng.detector_key` ``(name)``; a
sample's *absolute index* is ``round(t0 * f_s) + i``, where ``t0`` is the time
of the observation's first global sample in seconds (``Observation.start_time_global``;
for an ``astropy.time.Time`` its ``cxcsec`` value, the clock litebird_sim's
``get_times()`` uses), ``f_s`` the sampling rate and ``i`` the sample's index
from there.  The generator (:mod:`crab.generation.engine`) is slice-exact: the value
at (key, absolute index) does not depend on what else is computed.  Hence the
result is the same whether an observation is split across MPI processes by
detector or by time (``n_blocks_det``, ``n_blocks_time``), whether the mission is
cut into one or many observations, and whatever the chunking.  These
conventions, and the injection itself, are :mod:`crab.integrations.injection`'s,
shared with the TOAST operator (:mod:`crab.integrations.toast_operator`).

Start times off the sample grid: if ``t0 * f_s`` is not an integer, the
realisation is that of the nearest absolute grid index, placed on the
observation's own samples (a shift of less than half a sample).  Two
observations whose start times differ by a whole number of samples always
line up exactly; otherwise each is correct on its own but their glitches are
not the same continuous series.  Times before ``0`` (negative ``t0``) are
rejected: shift the clock.

Units
-----
CRAB TOD are pW of absorbed-power equivalent (a glitch is positive);
litebird_sim TOD are usually K_CMB.  ``CosmicRayParams.conversion_factor`` is
the number of observation units per pW; its default, 1.0, adds pW (right for
TOD kept in power units, or to look at the glitches alone).  For K_CMB use the
detector's inverse responsivity, e.g. :func:`kcmb_per_pw` from its band and
optical efficiency (a top-hat single-mode estimate), or your own calibration;
a dict gives one factor per detector name.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from crab.core.errors import InputError
from crab.integrations.injection import (  # noqa: F401 - re-exported: this module's API before the shared one
    SliceGenerator,
    absolute_start_sample,
    add_generated,
    detector_keys,
    make_source,
)

#: Physical constants (SI) for :func:`kcmb_per_pw`.
_H = 6.62607015e-34
_K_B = 1.380649e-23
T_CMB_K = 2.72548


@dataclass
class CosmicRayParams:
    """Parameters of the cosmic-ray injection into litebird_sim TOD.

    Attributes
    ----------
    conversion_factor : float or dict of str to float
        Observation TOD units per pW of CRAB TOD (e.g. K_CMB / pW); a dict
        maps detector names to their own factor.  Default 1.0: the TOD gets pW
        (see the module docstring and :func:`kcmb_per_pw`).
    chunk_samples : int
        Samples generated at a time per detector block (bounds memory:
        about ``12 * n_detectors * chunk_samples`` bytes).
    n_workers : int, optional
        Worker threads of the generator built from a model (default: the CPUs
        available).  Under MPI with several ranks per node, set it to the cores
        per rank to avoid oversubscription; it never changes the output.
    cond : ConditionSchedule or dict, optional
        Conditions of a phi-conditioned model: ``{"phi_gv": 0.7}`` or a
        :class:`crab.physics.conditions.ConditionSchedule` whose times are on the
        observations' time axis (``start_time_s`` / ``Observation.start_time_global``
        in seconds, the axis of the absolute sample index).
    allow_extrapolation : bool
        Accept conditions outside the model's trained range.
    wafers : dict of str to str, optional
        Wafer name of each detector name: detectors of one wafer share its wafer hits (a model
        with a wafer layer).  Default: the observation's ``wafer`` attribute (litebird_sim sets
        it from ``DetectorInfo.wafer``); without either, every detector is on its own wafer.
    flag_threshold : float, optional
        Mark the glitches: samples where the generated glitch signal, in the observation's
        units (after ``conversion_factor``), exceeds this in magnitude get ``flag_mask`` set
        in the observation's ``flags_component`` (created as zeros, uint16, if missing;
        a plain array's flags are :func:`add_cosmic_rays`'s ``flags``).  E.g. a fraction of
        the noise RMS.  None: no flags.  Needs a method that lists its glitches
        (:mod:`crab.generation.truth`).
    flag_mask : int
        The flag bit(s) set.
    flags_component : str
        Name of the observation's flag array (litebird_sim's ``local_flags``).
    """

    conversion_factor: float | Mapping[str, float] = 1.0
    chunk_samples: int = 1 << 20
    n_workers: int | None = None
    cond: Any = None
    allow_extrapolation: bool = False
    wafers: Mapping[str, str] | None = None
    flag_threshold: float | None = None
    flag_mask: int = 1
    flags_component: str = "local_flags"

    def __post_init__(self) -> None:
        if isinstance(self.conversion_factor, Mapping):
            bad = {k: v for k, v in self.conversion_factor.items() if not np.isfinite(v)}
        else:
            bad = {} if np.isfinite(self.conversion_factor) else {"*": self.conversion_factor}
        if bad:
            raise InputError(f"conversion_factor must be finite, got {bad}")
        if int(self.chunk_samples) < 1:
            raise InputError(f"chunk_samples must be at least 1, got {self.chunk_samples}")
        self.chunk_samples = int(self.chunk_samples)

    def factor_for(self, name: str) -> float:
        """Conversion factor of detector ``name``."""
        if isinstance(self.conversion_factor, Mapping):
            try:
                return float(self.conversion_factor[name])
            except KeyError:
                raise InputError(f"conversion_factor has no entry for detector {name!r}") from None
        return float(self.conversion_factor)


# --------------------------------------------------------------------------- helpers
def kcmb_per_pw(bandcenter_ghz: float, bandwidth_ghz: float, optical_efficiency: float = 1.0) -> float:
    """K_CMB per pW for a single-mode, single-polarisation detector with a top-hat band.

    Inverse of ``dP/dT_CMB = eta * k_B * integral x^2 e^x / (e^x - 1)^2 dnu``,
    ``x = h nu / (k_B T_CMB)``, over ``[center - width/2, center + width/2]``.
    About 2.8 K_CMB/pW at 140 GHz with 42 GHz of band and ``eta = 1``; real
    detectors have ``eta`` of 0.2-0.5 (more K_CMB per pW).  An estimate: prefer
    the instrument's calibration when there is one.
    """
    if not (bandcenter_ghz > 0 and bandwidth_ghz > 0 and 0 < optical_efficiency <= 1 and bandwidth_ghz < 2 * bandcenter_ghz):
        raise InputError(
            f"need 0 < bandwidth < 2 * bandcenter and 0 < optical_efficiency <= 1, got {bandcenter_ghz} GHz, {bandwidth_ghz} GHz, {optical_efficiency}"
        )
    nu = np.linspace(bandcenter_ghz - bandwidth_ghz / 2, bandcenter_ghz + bandwidth_ghz / 2, 2001) * 1e9
    x = _H * nu / (_K_B * T_CMB_K)
    integrand = x**2 * np.exp(x) / np.expm1(x) ** 2
    dpdt_w_per_k = optical_efficiency * _K_B * float(np.trapezoid(integrand, nu))
    return 1e-12 / dpdt_w_per_k


def _add_block(
    tod: np.ndarray, names: Sequence[str], source: Any, abs_start: int, params: CosmicRayParams, wafers: Sequence[str] | None = None, flags: np.ndarray | None = None,
) -> None:
    """Add the generated TOD of ``names`` at absolute samples ``abs_start...`` to ``tod`` in place, chunk by chunk
    (``wafers``: the wafer name of each detector, or None; ``flags``: marked where a glitch exceeds
    ``params.flag_threshold``); :func:`crab.integrations.injection.add_generated`."""
    if tod.ndim != 2 or tod.shape[0] != len(names):
        raise InputError(f"TOD must have shape ({len(names)}, n_samples) for {len(names)} detectors, got {tod.shape}")
    factors = [params.factor_for(str(n)) for n in names]
    add_generated(
        tod, detector_keys(names), source, abs_start, factors, wafers=wafers, chunk_samples=params.chunk_samples,
        flags=flags, flag_mask=params.flag_mask, flag_threshold=params.flag_threshold,
    )


# --------------------------------------------------------------------------- numpy layer
def cosmic_ray_tod(
    n_samples: int,
    sampling_rate_hz: float,
    start_time_s: float,
    detector_names: Sequence[str],
    model: Any,
    seed: int,
) -> np.ndarray:
    """The CRAB TOD (pW, float32, ``(n_detectors, n_samples)``) that :func:`add_cosmic_rays` adds (with factor 1)."""
    tod = np.zeros((len(detector_names), int(n_samples)), np.float32)
    return add_cosmic_rays(tod, sampling_rate_hz, start_time_s, detector_names, model, seed)


def add_cosmic_rays(
    tod: np.ndarray,
    sampling_rate_hz: float,
    start_time_s: float,
    detector_names: Sequence[str],
    model: Any,
    seed: int,
    *,
    params: CosmicRayParams | None = None,
    flags: np.ndarray | None = None,
) -> np.ndarray:
    """Add generated cosmic-ray TOD to ``tod`` in place (and return it).

    Parameters
    ----------
    tod : ndarray, shape (n_detectors, n_samples)
        Floating-point TOD; modified in place: ``tod += conversion_factor * crab_tod``
        (computed in float64, cast to ``tod.dtype``).
    sampling_rate_hz : float
        Sampling rate of ``tod`` (Hz); the model must produce that rate.
    start_time_s : float
        Time of ``tod[:, 0]`` (s); absolute sample index ``round(start_time_s * sampling_rate_hz)``.
    detector_names : sequence of str
        One name per row; the randomness of a row is keyed on its name.
    model : model directory, TrainedModel, factory or generator
        See :func:`make_source`.
    seed : int
        Non-negative seed.
    params : CosmicRayParams, optional
        Conversion factor (default 1.0: ``tod`` is in pW), chunking and the flag threshold.
    flags : ndarray of unsigned int, shape of ``tod``, optional
        Marked in place (``params.flag_mask``) where a glitch exceeds ``params.flag_threshold``.

    Returns
    -------
    ndarray
        ``tod``.
    """
    params = params or CosmicRayParams()
    tod = np.asarray(tod)
    source = make_source(model, seed, sampling_rate_hz, n_workers=params.n_workers, cond=params.cond, allow_extrapolation=params.allow_extrapolation)
    if flags is not None and params.flag_threshold is None:
        raise InputError("flags given without CosmicRayParams.flag_threshold: say above which glitch height (TOD units) to flag")
    _add_block(tod, [str(n) for n in detector_names], source, absolute_start_sample(start_time_s, sampling_rate_hz), params, flags=flags)
    return tod


# --------------------------------------------------------------------------- litebird_sim layers
def observation_start_sample(obs: Any) -> int:
    """Absolute index of the first *local* sample of a litebird_sim ``Observation``.

    ``round(t0 * f_s) + obs.start_sample`` with ``t0`` the observation's global
    start time in seconds (``cxcsec`` for an ``astropy.time.Time``), so that
    every time block of a split observation lands on the same absolute grid.
    """
    t0 = obs.start_time_global
    if hasattr(t0, "cxcsec"):
        t0 = float(t0.cxcsec)
    return absolute_start_sample(float(t0), float(obs.sampling_rate_hz)) + int(getattr(obs, "start_sample", 0))


def apply_cosmic_rays_to_observations(
    observations: Any,
    model: Any,
    params: CosmicRayParams | None = None,
    user_seed: int | None = None,
    component: str = "tod",
) -> None:
    """Add cosmic-ray glitches to the TOD of one or more litebird_sim ``Observation`` objects.

    Parameters
    ----------
    observations : Observation or list of Observation
        Their ``component`` TOD (``(n_local_detectors, n_local_samples)``) is
        modified in place, at each observation's sampling rate and start time.
    model : model directory, TrainedModel, factory or generator
        The generative model (see :func:`make_source`); it must produce TOD at
        the observations' sampling rate.
    params : CosmicRayParams, optional
        Conversion factor to the observations' units (default 1.0, i.e. pW;
        see :func:`kcmb_per_pw`) and chunking.
    user_seed : int
        Seed of the realisation (required: CRAB's streams are keyed on
        ``(user_seed, detector name, absolute sample)``, not on litebird_sim's
        per-rank generators, so that results do not depend on the MPI layout).
    component : str
        Name of the TOD attribute to modify (default ``"tod"``).

    Raises
    ------
    InputError
        No seed, unknown component, or a TOD whose shape does not match the
        observation's detectors.
    """
    if user_seed is None:
        raise InputError(
            "user_seed is required: CRAB keys its glitches on (seed, detector name, absolute time), "
            "so that they do not depend on how observations are split across processes"
        )
    params = params or CosmicRayParams()
    obs_list = observations if isinstance(observations, (list, tuple)) else [observations]
    sources: dict[float, Any] = {}
    for obs in obs_list:
        if not hasattr(obs, component):
            raise InputError(f"observation has no TOD component {component!r}")
        tod = getattr(obs, component)
        if tod is None or np.size(tod) == 0:
            continue
        fs = float(obs.sampling_rate_hz)
        if fs not in sources:
            sources[fs] = make_source(model, user_seed, fs, n_workers=params.n_workers, cond=params.cond, allow_extrapolation=params.allow_extrapolation)
        names = [str(n) for n in np.atleast_1d(obs.name)]
        _add_block(tod, names, sources[fs], observation_start_sample(obs), params, observation_wafers(obs, names, params), _observation_flags(obs, tod, params))


def _observation_flags(obs: Any, tod: np.ndarray, params: CosmicRayParams) -> np.ndarray | None:
    """The observation's flag array to mark (created as uint16 zeros if missing), or None without a flag threshold."""
    if params.flag_threshold is None:
        return None
    flags = getattr(obs, params.flags_component, None)
    if flags is None:
        flags = np.zeros(tod.shape, np.uint16)
        setattr(obs, params.flags_component, flags)
    return flags


def observation_wafers(obs: Any, names: list[str], params: CosmicRayParams) -> list[str] | None:
    """The wafer of each detector: ``params.wafers``, else the observation's ``wafer`` attribute, else None."""
    if params.wafers is not None:
        missing = [n for n in names if n not in params.wafers]
        if missing:
            raise InputError(f"CosmicRayParams.wafers has no wafer for detector(s) {missing[:3]}")
        return [str(params.wafers[n]) for n in names]
    w = getattr(obs, "wafer", None)
    if w is None:
        return None
    w = [str(v) for v in np.atleast_1d(w)]
    return w if len(w) == len(names) and all(v not in ("None", "") for v in w) else None


def apply_cosmic_rays_to_simulation(
    sim: Any,
    model: Any,
    params: CosmicRayParams | None = None,
    user_seed: int | None = None,
    component: str = "tod",
    append_to_report: bool = True,
) -> None:
    """``Simulation.apply_cosmic_rays``: :func:`apply_cosmic_rays_to_observations` on ``sim.observations``.

    ``user_seed`` defaults to the simulation's integer ``random_seed``.
    """
    if user_seed is None:
        seed = getattr(sim, "random_seed", None)
        if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            user_seed = int(seed)
    params = params or CosmicRayParams()
    apply_cosmic_rays_to_observations(sim.observations, model, params=params, user_seed=user_seed, component=component)
    comm = getattr(sim, "mpi_comm", None)
    if append_to_report and getattr(comm, "rank", 0) == 0 and hasattr(sim, "append_to_report"):
        desc = model if isinstance(model, (str, os.PathLike)) else type(model).__name__
        factor = params.conversion_factor if not isinstance(params.conversion_factor, Mapping) else "per detector"
        sim.append_to_report(
            "## Cosmic-ray glitches (CRAB)\n\n"
            f"- model: `{desc}`\n- seed: {user_seed}\n- component: `{component}`\n"
            f"- conversion factor (TOD units per pW): {factor}\n"
        )


def params_to_dict(params: CosmicRayParams) -> dict[str, Any]:
    """JSON-friendly dict of ``params``."""
    d = asdict(params)
    if isinstance(params.conversion_factor, Mapping):
        d["conversion_factor"] = dict(params.conversion_factor)
    return d


__all__ = [
    "CosmicRayParams",
    "SliceGenerator",
    "absolute_start_sample",
    "add_cosmic_rays",
    "apply_cosmic_rays_to_observations",
    "apply_cosmic_rays_to_simulation",
    "cosmic_ray_tod",
    "detector_keys",
    "kcmb_per_pw",
    "make_source",
    "observation_start_sample",
    "observation_wafers",
]
