"""Galactic cosmic-ray spectra at L2 and the sampling of primaries.

Stage 1 of the physics Monte Carlo (see ``docs/design.md``).

Consumes
    the modulation potential ``phi_gv`` and a :class:`SpectraConfig`.
Produces
    differential and integral intensities, and :class:`Primaries` (species,
    kinetic energy, direction, time) hitting a plate of given area.

Flux conventions
----------------
Everything here is an *intensity* per steradian unless the name says
otherwise:

- differential intensity ``J(T)`` in m^-2 s^-1 sr^-1 (GeV/n)^-1, with ``T`` the
  kinetic energy per nucleon in GeV/n (the literature's unit);
- integral intensity in cm^-2 s^-1 sr^-1;
- the *omnidirectional* flux of an isotropic population is ``4 pi`` times the
  intensity (particles per cm^2 of cross-section of a small sphere per
  second): this is the figure quoted by Planck (about 5 protons cm^-2 s^-1
  above ~39 MeV during the 2009-2011 solar minimum, phi ~ 0.4 GV);
- the rate of particles crossing one face of a plate of area ``A`` is
  ``pi * I * A`` (cosine law), so ``2 pi I A`` for both faces.

Model
-----
Local interstellar spectrum (LIS) of protons from Vos & Potgieter (2015), or
Burger et al. (2000) as an alternative; heavier species are the proton LIS
scaled at equal kinetic energy per nucleon by an abundance (H/He ~ 12, and
C-N-O, Ne-Mg-Si and Fe groups summing to about 1 % of the nuclei): a
simplification of per-species LIS such as Matthiä et al. (2013), which have
slightly different spectral shapes.  Solar modulation by the force-field
approximation (Gleeson & Axford 1968) with ``Phi = (Z/A) phi``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from crab.core.errors import InputError

#: Proton rest energy (GeV).
PROTON_MASS_GEV = 0.938272
#: Atomic mass unit (GeV), used for the rest energy of nuclei (A * u).
AMU_GEV = 0.931494
#: Nucleon rest energy used in the force-field formula (GeV), as in the reference.
NUCLEON_MASS_GEV = 0.938

LIS_MODELS = ("vos_potgieter", "burger")


@dataclass(frozen=True)
class Species:
    """One group of cosmic-ray nuclei, represented by one nucleus.

    Attributes
    ----------
    name : str
        Label (``"H"``, ``"He"``, ``"CNO"``, ...).
    charge_z : int
        Charge number Z.
    mass_number_a : int
        Mass number A (nucleons).
    abundance : float
        Ratio of the group's LIS to the proton LIS at equal kinetic energy per
        nucleon (dimensionless; 1 for protons).
    """

    name: str
    charge_z: int
    mass_number_a: int
    abundance: float

    @property
    def mass_mev(self) -> float:
        """Rest energy of the nucleus (MeV)."""
        if self.charge_z == 1 and self.mass_number_a == 1:
            return PROTON_MASS_GEV * 1e3
        return self.mass_number_a * AMU_GEV * 1e3


#: Default species: protons, helium (H/He = 12 at equal energy per nucleon, physics
#: reference) and three heavier groups (HEAO-3-like ratios to He of 0.068, 0.016 and
#: 0.0032), about 0.7 % of the nuclei together.
DEFAULT_SPECIES: tuple[Species, ...] = (
    Species("H", 1, 1, 1.0),
    Species("He", 2, 4, 1.0 / 12.0),
    Species("CNO", 8, 16, 5.7e-3),
    Species("NeMgSi", 12, 24, 1.3e-3),
    Species("Fe", 26, 56, 2.7e-4),
)


@dataclass
class SpectraConfig:
    """Cosmic-ray species and energy range (the modulation potential lives in the MC config).

    Attributes
    ----------
    species : tuple of Species
        Nuclei groups sampled.
    lis_model : str
        Proton LIS: ``"vos_potgieter"`` (default) or ``"burger"``.
    t_min_mev_n : float
        Lowest kinetic energy per nucleon sampled (MeV/n).  Particles well below
        the shield's cut-off are stopped anyway; this only bounds the grid.
    t_max_gev_n : float
        Highest kinetic energy per nucleon sampled (GeV/n).
    n_grid : int
        Points of the logarithmic energy grid used for integrals and the
        inverse-CDF sampling.
    """

    species: tuple[Species, ...] = DEFAULT_SPECIES
    lis_model: str = "vos_potgieter"
    t_min_mev_n: float = 1.0
    t_max_gev_n: float = 1.0e3
    n_grid: int = 2000

    def __post_init__(self) -> None:
        self.species = tuple(s if isinstance(s, Species) else Species(**s) for s in self.species)
        if not self.species:
            raise InputError("SpectraConfig.species must name at least one species")
        for s in self.species:
            if s.charge_z < 1 or s.mass_number_a < s.charge_z or not (s.abundance >= 0):
                raise InputError(f"invalid species {s}: need Z >= 1, A >= Z, abundance >= 0")
        if self.lis_model not in LIS_MODELS:
            raise InputError(f"unknown LIS model {self.lis_model!r}; expected one of {LIS_MODELS}")
        if not (0 < self.t_min_mev_n < self.t_max_gev_n * 1e3):
            raise InputError(f"need 0 < t_min_mev_n < t_max_gev_n * 1000, got {self.t_min_mev_n}, {self.t_max_gev_n}")
        if self.n_grid < 100:
            raise InputError(f"n_grid must be at least 100, got {self.n_grid}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SpectraConfig":
        d = dict(d)
        if "species" in d:
            d["species"] = tuple(Species(**s) if not isinstance(s, Species) else s for s in d["species"])
        return cls(**d)


# --------------------------------------------------------------------------- LIS and modulation
def _beta(t_gev_n: np.ndarray, m_gev: float = NUCLEON_MASS_GEV) -> np.ndarray:
    e = t_gev_n + m_gev
    return np.sqrt(1.0 - (m_gev / e) ** 2)


def proton_lis_vos_potgieter(t_gev_n: np.ndarray) -> np.ndarray:
    """Proton LIS of Vos & Potgieter (2015).

    ``J = 2.70e3 T^1.12 beta^-2 ((T + 0.67) / 1.67)^-3.93``.

    Parameters
    ----------
    t_gev_n : array_like
        Kinetic energy per nucleon (GeV/n).

    Returns
    -------
    ndarray
        Differential intensity (m^-2 s^-1 sr^-1 (GeV/n)^-1).
    """
    t = np.asarray(t_gev_n, dtype=np.float64)
    return 2.70e3 * t**1.12 / _beta(t, PROTON_MASS_GEV) ** 2 * ((t + 0.67) / 1.67) ** -3.93


def proton_lis_burger(t_gev_n: np.ndarray) -> np.ndarray:
    """Proton LIS of Burger et al. (2000), ``1.9e4 P^-2.78 / (1 + 0.4866 P^-2.51)`` per GV.

    Converted from rigidity ``P`` (GV) to kinetic energy (GeV) with
    ``dP/dT = 1/beta`` for protons.

    Returns
    -------
    ndarray
        Differential intensity (m^-2 s^-1 sr^-1 GeV^-1).
    """
    t = np.asarray(t_gev_n, dtype=np.float64)
    m = PROTON_MASS_GEV
    p = np.sqrt(t * (t + 2 * m))
    j_p = 1.9e4 * p**-2.78 / (1.0 + 0.4866 * p**-2.51)
    return j_p / _beta(t, m)


def proton_lis(t_gev_n: np.ndarray, model: str = "vos_potgieter") -> np.ndarray:
    """Proton LIS of the named model (m^-2 s^-1 sr^-1 (GeV/n)^-1)."""
    if model == "vos_potgieter":
        return proton_lis_vos_potgieter(t_gev_n)
    if model == "burger":
        return proton_lis_burger(t_gev_n)
    raise InputError(f"unknown LIS model {model!r}; expected one of {LIS_MODELS}")


def force_field(t_gev_n: np.ndarray, phi_gv: float, charge_z: int, mass_number_a: int, lis: Any) -> np.ndarray:
    """Force-field modulated intensity (Gleeson & Axford 1968).

    ``J(T) = J_LIS(T + Phi) T (T + 2m) / ((T + Phi)(T + Phi + 2m))`` with
    ``Phi = (Z/A) phi`` and ``m`` the nucleon rest energy.

    Parameters
    ----------
    t_gev_n : array_like
        Kinetic energy per nucleon at L2 (GeV/n).
    phi_gv : float
        Modulation potential (GV), about 0.4 (solar minimum) to 1.4 (maximum).
    charge_z, mass_number_a : int
        Charge and mass numbers of the nucleus.
    lis : callable
        ``lis(T)`` giving the LIS per energy per nucleon.

    Returns
    -------
    ndarray
        Modulated intensity in the units of ``lis``.
    """
    if not (phi_gv >= 0 and np.isfinite(phi_gv)):
        raise InputError(f"modulation potential phi must be a finite number >= 0 GV, got {phi_gv!r}")
    t = np.asarray(t_gev_n, dtype=np.float64)
    big_phi = charge_z / mass_number_a * phi_gv
    m = NUCLEON_MASS_GEV
    return lis(t + big_phi) * t * (t + 2 * m) / ((t + big_phi) * (t + big_phi + 2 * m))


def differential_intensity(species: Species, t_gev_n: np.ndarray, phi_gv: float, lis_model: str = "vos_potgieter") -> np.ndarray:
    """Modulated differential intensity of one species at L2 (m^-2 s^-1 sr^-1 (GeV/n)^-1)."""
    return species.abundance * force_field(t_gev_n, phi_gv, species.charge_z, species.mass_number_a, lambda x: proton_lis(x, lis_model))


def integral_intensity(species: Species, phi_gv: float, t_min_gev_n: float, t_max_gev_n: float = 1e4, lis_model: str = "vos_potgieter", n_grid: int = 4000) -> float:
    """Intensity above ``t_min_gev_n`` (cm^-2 s^-1 sr^-1), per steradian.

    Multiply by ``4 pi`` for the omnidirectional flux (cm^-2 s^-1), by ``pi``
    for the rate through one face of a unit plate.
    """
    t = np.geomspace(t_min_gev_n, t_max_gev_n, n_grid)
    return float(np.trapezoid(differential_intensity(species, t, phi_gv, lis_model), t) * 1e-4)


def omnidirectional_flux(species: Species, phi_gv: float, t_min_gev_n: float, **kw: Any) -> float:
    """Omnidirectional integral flux above ``t_min_gev_n`` (cm^-2 s^-1) = 4 pi x intensity."""
    return 4.0 * np.pi * integral_intensity(species, phi_gv, t_min_gev_n, **kw)


# --------------------------------------------------------------------------- sampling
@dataclass
class Primaries:
    """Primary particles arriving at a plate (one row per particle).

    Attributes
    ----------
    time_s : ndarray of float64
        Arrival time (s).
    species : ndarray of int16
        Index into the :class:`SpectraConfig` species.
    charge_z : ndarray of int16
        Charge number.
    mass_number_a : ndarray of int16
        Mass number.
    kinetic_energy_mev : ndarray of float64
        Total kinetic energy of the nucleus at L2, before shielding (MeV).
    cos_theta : ndarray of float64
        Cosine of the angle to the plate normal, in (0, 1] (cosine law).
    azimuth_rad : ndarray of float64
        Azimuth in the plate plane (rad).
    face : ndarray of int8
        +1 for particles coming through the front face, -1 through the back.
    """

    time_s: np.ndarray
    species: np.ndarray
    charge_z: np.ndarray
    mass_number_a: np.ndarray
    kinetic_energy_mev: np.ndarray
    cos_theta: np.ndarray
    azimuth_rad: np.ndarray
    face: np.ndarray

    def __len__(self) -> int:
        return len(self.time_s)

    def select(self, mask: np.ndarray) -> "Primaries":
        return Primaries(**{k: v[mask] for k, v in self.__dict__.items()})


class PrimarySampler:
    """Poisson sampler of cosmic-ray primaries crossing a plate.

    Parameters
    ----------
    config : SpectraConfig
        Species and energy range.
    phi_gv : float
        Modulation potential (GV).
    area_cm2 : float
        Area of the plate (cm^2).  Both faces are exposed to the isotropic
        flux, so the total rate is ``2 pi A sum_s I_s``.

    Notes
    -----
    Energies are drawn by inverse CDF on a logarithmic grid of kinetic
    energy per nucleon (linear interpolation of the cumulative integral in
    log T); directions follow the cosine law (``cos theta = sqrt(U)``), the
    azimuth is uniform and the face is chosen with probability 1/2.
    """

    def __init__(self, config: SpectraConfig, phi_gv: float, area_cm2: float) -> None:
        if not (area_cm2 > 0):
            raise InputError(f"plate area must be > 0 cm^2, got {area_cm2}")
        self.config = config
        self.phi_gv = float(phi_gv)
        self.area_cm2 = float(area_cm2)
        self.t_grid_gev_n = np.geomspace(config.t_min_mev_n * 1e-3, config.t_max_gev_n, config.n_grid)
        t = self.t_grid_gev_n
        self._cdf = []
        intens = []
        for s in config.species:
            j = differential_intensity(s, t, self.phi_gv, config.lis_model)
            cum = np.concatenate([[0.0], np.cumsum(0.5 * (j[1:] + j[:-1]) * np.diff(t))])
            intens.append(cum[-1] * 1e-4)  # cm^-2 s^-1 sr^-1
            self._cdf.append(cum / cum[-1] if cum[-1] > 0 else cum)
        #: Intensity of each species over the sampled range (cm^-2 s^-1 sr^-1).
        self.intensity_cm2_s_sr = np.array(intens)
        #: Rate of each species through the plate, both faces (Hz).
        self.rate_hz_by_species = 2.0 * np.pi * self.area_cm2 * self.intensity_cm2_s_sr
        self.rate_hz = float(self.rate_hz_by_species.sum())
        self._logt = np.log(t)
        self._z = np.array([s.charge_z for s in config.species], dtype=np.int16)
        self._a = np.array([s.mass_number_a for s in config.species], dtype=np.int16)

    def sample(self, rng: np.random.Generator, t_start_s: float, duration_s: float) -> Primaries:
        """Primaries arriving in ``[t_start_s, t_start_s + duration_s)``, sorted by time.

        The draw order is fixed (count, times, species, energies, directions),
        so a given generator always yields the same particles.
        """
        n = int(rng.poisson(self.rate_hz * duration_s))
        times = np.sort(t_start_s + duration_s * rng.random(n))
        probs = self.rate_hz_by_species / self.rate_hz
        species = rng.choice(len(probs), size=n, p=probs).astype(np.int16)
        u = rng.random(n)
        t_n = np.empty(n)
        for k in range(len(probs)):
            m = species == k
            if np.any(m):
                t_n[m] = np.exp(np.interp(u[m], self._cdf[k], self._logt))
        cos_theta = np.sqrt(1.0 - rng.random(n))  # in (0, 1]
        azimuth = 2.0 * np.pi * rng.random(n)
        face = np.where(rng.random(n) < 0.5, 1, -1).astype(np.int8)
        a = self._a[species]
        return Primaries(
            time_s=times,
            species=species,
            charge_z=self._z[species],
            mass_number_a=a,
            kinetic_energy_mev=t_n * 1e3 * a,
            cos_theta=cos_theta,
            azimuth_rad=azimuth,
            face=face,
        )
