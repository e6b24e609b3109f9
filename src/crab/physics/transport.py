"""Stopping power and continuous slowing down of nuclei through matter.

Stage 2 of the physics Monte Carlo (see ``docs/design.md``).

Consumes
    primaries' kinetic energies, charges and masses; a :class:`ShieldConfig`.
Produces
    kinetic energies behind the shield (0 for particles that stop), and the
    stopping-power / range tables used by :mod:`crab.physics.deposit`.

Model and its limits
--------------------
- Mean electronic stopping power from the Bethe-Bloch formula (PDG, with the
  full ``T_max`` for a heavy projectile and Sternheimer's density-effect
  correction), scaled by the square of the projectile's *effective* charge
  ``z_eff = z (1 - exp(-125 beta z^(-2/3)))`` (Barkas), which matters only for
  slow heavy ions.  No shell, Barkas-Andersen or Bloch corrections: the
  formula is good to a few per cent above ~1 MeV/n and poor below.  Below
  ``T_LOW_MEV_N`` the stopping power is continued as proportional to the
  velocity (Lindhard), only so that ranges are finite.
- Continuous slowing-down approximation (CSDA): particles follow straight
  lines and lose exactly the mean energy; no range or energy straggling in
  the shield, no multiple scattering.
- The shield is a spherical shell of aluminium-equivalent areal density
  around the focal plane, crossed radially, so every direction sees the same
  areal density.
- **No secondaries**: no nuclear interactions (fragmentation of heavy ions,
  spallation, neutrons), no delta rays or electromagnetic showers leaving
  the shield, no Bremsstrahlung.  A Geant4 simulation (Stever et al. 2021,
  Tominaga et al. 2022) includes them; they add low-energy particles and
  multiply hits behind thick shields.
- Particles whose CSDA range is shorter than the shield are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from crab.core.errors import InputError

#: Electron rest energy (MeV).
ELECTRON_MASS_MEV = 0.51099895
#: K = 4 pi N_A r_e^2 m_e c^2 (MeV mol^-1 cm^2).
K_BETHE_MEV_CM2_MOL = 0.307075
#: Below this kinetic energy per nucleon (MeV/n) the stopping power is continued as ~ velocity.
T_LOW_MEV_N = 0.5
#: Lindhard low-velocity stopping coefficient for protons, S = k sqrt(T / MeV) (MeV cm^2/g).
LINDHARD_COEFF: dict[str, float] = {"silicon": 3.2e3, "aluminium": 3.0e3}
#: Proton rest energy (MeV) and atomic mass unit (MeV).
PROTON_MASS_MEV = 938.272
AMU_MEV = 931.494


@dataclass(frozen=True)
class Material:
    """A target material for Bethe-Bloch (PDG atomic and nuclear properties).

    Attributes
    ----------
    name : str
    z_over_a : float
        <Z/A> (mol/g).
    density_g_cm3 : float
    mean_excitation_ev : float
        Mean excitation energy I (eV).
    c_bar, x0, x1, a, k, delta0 : float
        Sternheimer density-effect parameters.
    """

    name: str
    z_over_a: float
    density_g_cm3: float
    mean_excitation_ev: float
    c_bar: float
    x0: float
    x1: float
    a: float
    k: float
    delta0: float


SILICON = Material("silicon", 14.0 / 28.0855, 2.329, 173.0, 4.4355, 0.2015, 2.8716, 0.14921, 3.2546, 0.14)
ALUMINIUM = Material("aluminium", 13.0 / 26.9815, 2.699, 166.0, 4.2395, 0.1708, 3.0127, 0.08024, 3.6345, 0.12)
MATERIALS: dict[str, Material] = {"silicon": SILICON, "aluminium": ALUMINIUM}


def get_material(name: str) -> Material:
    """The :class:`Material` of a given name (``"silicon"``, ``"aluminium"``)."""
    try:
        return MATERIALS[name]
    except KeyError:
        raise InputError(f"unknown material {name!r}; known: {sorted(MATERIALS)}") from None


@dataclass
class ShieldConfig:
    """Aluminium-equivalent shield around the focal plane.

    Attributes
    ----------
    areal_density_g_cm2 : float
        Areal density crossed radially by every particle (g/cm^2); "a few".
    material : str
        Shield material (``"aluminium"``).
    """

    areal_density_g_cm2: float = 2.0
    material: str = "aluminium"

    def __post_init__(self) -> None:
        if not (np.isfinite(self.areal_density_g_cm2) and self.areal_density_g_cm2 >= 0):
            raise InputError(f"shield areal density must be a finite number >= 0 g/cm^2, got {self.areal_density_g_cm2!r}")
        get_material(self.material)


# --------------------------------------------------------------------------- kinematics
def particle_mass_mev(charge_z: int, mass_number_a: int) -> float:
    """Rest energy (MeV): the proton mass for Z = A = 1, else A atomic mass units."""
    return PROTON_MASS_MEV if (charge_z == 1 and mass_number_a == 1) else mass_number_a * AMU_MEV


def beta_gamma(kinetic_energy_mev: np.ndarray, mass_mev: float) -> tuple[np.ndarray, np.ndarray]:
    """``(beta, gamma)`` of a particle of given kinetic energy and rest energy (MeV)."""
    gamma = 1.0 + np.asarray(kinetic_energy_mev, dtype=np.float64) / mass_mev
    beta = np.sqrt(np.maximum(1.0 - 1.0 / gamma**2, 0.0))
    return beta, gamma


def t_max_mev(beta: np.ndarray, gamma: np.ndarray, mass_mev: float) -> np.ndarray:
    """Maximum energy transfer to a free electron in one collision (MeV)."""
    r = ELECTRON_MASS_MEV / mass_mev
    return 2 * ELECTRON_MASS_MEV * beta**2 * gamma**2 / (1 + 2 * gamma * r + r * r)


def density_effect(beta: np.ndarray, gamma: np.ndarray, mat: Material) -> np.ndarray:
    """Sternheimer density-effect correction delta(beta gamma)."""
    x = np.log10(np.maximum(beta * gamma, 1e-30))
    ln10 = np.log(10.0)
    d = np.where(
        x >= mat.x1,
        2 * ln10 * x - mat.c_bar,
        np.where(
            x >= mat.x0,
            2 * ln10 * x - mat.c_bar + mat.a * np.maximum(mat.x1 - x, 0.0) ** mat.k,
            mat.delta0 * 10.0 ** (2 * (x - mat.x0)),
        ),
    )
    return d


def effective_charge(charge_z: int, beta: np.ndarray) -> np.ndarray:
    """Barkas effective charge ``z (1 - exp(-125 beta z^(-2/3)))`` of a slow ion (1 for protons).

    Protons are left at z = 1: their low-energy stopping is described by the
    Lindhard continuation directly.
    """
    z = float(charge_z)
    if charge_z == 1:
        return np.ones_like(np.asarray(beta, dtype=np.float64))
    return z * (1.0 - np.exp(-125.0 * beta * z ** (-2.0 / 3.0)))


def _bethe_raw(kinetic_energy_mev: np.ndarray, charge_z: int, mass_mev: float, mat: Material) -> np.ndarray:
    beta, gamma = beta_gamma(kinetic_energy_mev, mass_mev)
    tmax = t_max_mev(beta, gamma, mass_mev)
    i_mev = mat.mean_excitation_ev * 1e-6
    arg = 2 * ELECTRON_MASS_MEV * beta**2 * gamma**2 * tmax / i_mev**2
    log_term = 0.5 * np.log(np.maximum(arg, 1e-300)) - beta**2 - 0.5 * density_effect(beta, gamma, mat)
    zeff = effective_charge(charge_z, beta)
    return K_BETHE_MEV_CM2_MOL * zeff**2 * mat.z_over_a / np.maximum(beta, 1e-12) ** 2 * log_term


def stopping_power_mev_cm2_g(kinetic_energy_mev: np.ndarray, charge_z: int, mass_number_a: int, material: Material | str = SILICON) -> np.ndarray:
    """Mean electronic mass stopping power -dE/dx (MeV cm^2 / g).

    Above ``T_LOW_MEV_N`` (per nucleon), Bethe-Bloch with the projectile's
    effective charge.  Below, a rough low-energy continuation so that ranges
    of stopping particles are sensible: the Bethe value is continued as
    ``1/T`` and combined harmonically with a Lindhard term ``~ sqrt(T)``
    (``1/S = 1/S_Lindhard + 1/S_Bethe``, Ziegler's interpolation), which puts
    the Bragg peak of protons in silicon near 0.1 MeV and 550 MeV cm^2/g.
    Accuracy there is tens of per cent; it matters only for the last few
    microns of a track.

    Parameters
    ----------
    kinetic_energy_mev : array_like
        Total kinetic energy of the nucleus (MeV).
    charge_z, mass_number_a : int
        Charge and mass numbers of the projectile.
    material : Material or str
        Target.

    Returns
    -------
    ndarray
        Stopping power (MeV cm^2/g).  Multiply by the density for MeV/cm;
        for silicon, a minimum-ionising proton gives about 1.66 MeV cm^2/g,
        i.e. 388 eV/um.
    """
    mat = get_material(material) if isinstance(material, str) else material
    m = particle_mass_mev(charge_z, mass_number_a)
    t = np.maximum(np.asarray(kinetic_energy_mev, dtype=np.float64), 1e-12)
    t_low = T_LOW_MEV_N * mass_number_a
    s_bethe = _bethe_raw(np.maximum(t, t_low), charge_z, m, mat)
    low = t < t_low
    if not np.any(low):
        return s_bethe
    beta, _ = beta_gamma(t, m)
    zeff2 = effective_charge(charge_z, beta) ** 2
    # proton-equivalent kinetic energy (same velocity) for the Lindhard term
    t_p = t / m * PROTON_MASS_MEV
    s_lindhard = zeff2 * LINDHARD_COEFF.get(mat.name, 3.2e3) * np.sqrt(t_p)
    s_ext = s_bethe * (t_low / t) * zeff2 / np.maximum(effective_charge(charge_z, beta_gamma(np.maximum(t, t_low), m)[0]) ** 2, 1e-30)
    s_low = 1.0 / (1.0 / s_lindhard + 1.0 / s_ext)
    return np.where(low, s_low, s_bethe)


# --------------------------------------------------------------------------- CSDA range tables
@dataclass(frozen=True)
class RangeTable:
    """CSDA range of one nucleus in one material, on a log grid of kinetic energy.

    Attributes
    ----------
    log_e : ndarray
        ln of the kinetic energy (MeV) grid.
    log_r : ndarray
        ln of the CSDA range (g/cm^2) at those energies.
    """

    log_e: np.ndarray
    log_r: np.ndarray

    def range_g_cm2(self, kinetic_energy_mev: np.ndarray) -> np.ndarray:
        """CSDA range (g/cm^2); 0 for zero energy."""
        e = np.asarray(kinetic_energy_mev, dtype=np.float64)
        out = np.zeros_like(e)
        pos = e > 0
        le = np.log(e[pos])
        lo = le < self.log_e[0]
        r = np.exp(np.interp(le, self.log_e, self.log_r))
        # below the grid: S ~ sqrt(E) so R ~ sqrt(E)
        r = np.where(lo, np.exp(self.log_r[0]) * np.exp(0.5 * (le - self.log_e[0])), r)
        out[pos] = r
        return out

    def energy_mev(self, range_g_cm2: np.ndarray) -> np.ndarray:
        """Kinetic energy (MeV) whose CSDA range is ``range_g_cm2`` (0 for ranges <= 0)."""
        r = np.asarray(range_g_cm2, dtype=np.float64)
        out = np.zeros_like(r)
        pos = r > 0
        lr = np.log(r[pos])
        e = np.exp(np.interp(lr, self.log_r, self.log_e))
        lo = lr < self.log_r[0]
        e = np.where(lo, np.exp(self.log_e[0]) * np.exp(2.0 * (lr - self.log_r[0])), e)
        out[pos] = e
        return out


@lru_cache(maxsize=64)
def range_table(charge_z: int, mass_number_a: int, material: str = "silicon", n: int = 800) -> RangeTable:
    """CSDA range table of a nucleus in a material (cached).

    Built by integrating ``1 / S(E)`` on a logarithmic grid from 1 keV/n to
    10 TeV/n; below the grid ``S ~ sqrt(E)`` gives ``R(E0) = 2 E0 / S(E0)``.
    """
    mat = get_material(material)
    a = int(mass_number_a)
    e = np.geomspace(1e-3 * a, 1e7 * a, n)
    s = stopping_power_mev_cm2_g(e, int(charge_z), a, mat)
    inv = 1.0 / s
    r0 = 2.0 * e[0] / s[0]
    # trapezoid in log E: dE = E dlnE
    g = inv * e
    r = r0 + np.concatenate([[0.0], np.cumsum(0.5 * (g[1:] + g[:-1]) * np.diff(np.log(e)))])
    return RangeTable(log_e=np.log(e), log_r=np.log(r))


def residual_energy_mev(kinetic_energy_mev: np.ndarray, thickness_g_cm2: np.ndarray | float, charge_z: int, mass_number_a: int, material: str = "silicon") -> np.ndarray:
    """Kinetic energy after crossing ``thickness_g_cm2`` (CSDA); 0 if the particle stops.

    ``E_out = E(R(E_in) - x)`` with the tabulated CSDA range ``R``; this
    accounts for the growth of the stopping power along thick layers.
    """
    tab = range_table(int(charge_z), int(mass_number_a), material)
    e = np.asarray(kinetic_energy_mev, dtype=np.float64)
    r = tab.range_g_cm2(e) - np.asarray(thickness_g_cm2, dtype=np.float64)
    out = tab.energy_mev(r)
    # never gain energy (interpolation noise for negligible thickness)
    return np.minimum(out, e)


def transport_through_shield(kinetic_energy_mev: np.ndarray, charge_z: np.ndarray, mass_number_a: np.ndarray, shield: ShieldConfig) -> np.ndarray:
    """Kinetic energies (MeV) behind the shield; 0 for particles that stop in it.

    Parameters
    ----------
    kinetic_energy_mev : ndarray
        Total kinetic energy at L2 (MeV).
    charge_z, mass_number_a : ndarray of int
        Per-particle charge and mass numbers.
    shield : ShieldConfig
        Areal density (crossed radially: the same for every direction).

    Notes
    -----
    CSDA only: no secondaries, no nuclear interactions, no straggling (see
    the module docstring).
    """
    e = np.asarray(kinetic_energy_mev, dtype=np.float64)
    out = np.zeros_like(e)
    if shield.areal_density_g_cm2 == 0:
        return e.copy()
    z = np.asarray(charge_z)
    a = np.asarray(mass_number_a)
    for zz, aa in sorted(set(zip(z.tolist(), a.tolist()))):
        m = (z == zz) & (a == aa)
        out[m] = residual_energy_mev(e[m], shield.areal_density_g_cm2, zz, aa, shield.material)
    return out
