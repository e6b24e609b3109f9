"""Energy deposited in the wafer and in the detectors' absorbers.

Stage 3 of the physics Monte Carlo (see ``docs/design.md``).

Consumes
    primaries behind the shield (:class:`crab.physics.spectra.Primaries` with their
    residual kinetic energy) and a :class:`WaferConfig`.
Produces
    hits: for every particle, whether it crossed a detector's absorber
    (*direct* hit, detector index) or the bare wafer (*wafer* hit, detector
    -1), and the energy it left there (keV), as a :class:`crab.io.tod.EventTable`.

Geometry
--------
A square silicon wafer (side ``side_mm``, thickness ``thickness_um``) carries
``n`` detectors on a square grid of pitch ``pitch_mm``, centred on the wafer.
Each detector's absorber (square, ``absorber_side_mm``, silicon-equivalent
thickness ``absorber_thickness_um``) sits on a membrane over a hole in the
wafer, so a particle crossing the wafer's mid-plane inside an absorber's
footprint deposits energy in that absorber only, and elsewhere in the wafer
only.  Path length ``t / cos(theta)``, capped at the lateral size of the
layer for grazing tracks.  Tracks that clip an absorber edge and the wafer
both are counted once (at the mid-plane crossing).

Energy loss
-----------
Mean loss from the CSDA range tables of :mod:`crab.physics.transport` (so a thick
layer or a stopping particle is handled; a particle whose range is shorter
than its path deposits all its kinetic energy), with the ``Z^2`` scaling of
the Bethe-Bloch formula.  Fluctuations by the Vavilov parameter
``kappa = xi / T_max``:

- ``kappa < kappa_landau`` (thin layers): Landau distribution (scipy's
  ``landau``, rescaled so that its width is Landau's ``xi``), with the most
  probable loss of Bichsel/PDG and truncated at the value that makes its mean
  equal the Bethe mean (the usual way of turning Landau into a Vavilov-like
  distribution with a finite mean and variance ~ ``xi T_max``);
- ``kappa_landau <= kappa < kappa_gauss``: the Vavilov distribution
  approximated by a shifted Gamma distribution with its exact first three
  cumulants (``k2 = xi T_max (1 - beta^2/2)``, ``k3 = xi T_max^2 (1/2 - beta^2/3)``);
- ``kappa >= kappa_gauss`` (thick layers, heavy ions): Gaussian with the
  Vavilov variance.

The deposit is clipped to ``[0, E_kin]``.  Delta rays are assumed absorbed
where they are made (none escape), there is no channelling, and the
straggling width uses the velocity at entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.optimize
import scipy.stats

from crab.core.errors import InputError
from crab.physics.events import EVENT_KIND_DIRECT, EVENT_KIND_WAFER, EventTable
from crab.physics.spectra import Primaries
from crab.physics.transport import (
    ELECTRON_MASS_MEV,
    K_BETHE_MEV_CM2_MOL,
    beta_gamma,
    density_effect,
    effective_charge,
    get_material,
    particle_mass_mev,
    residual_energy_mev,
    t_max_mev,
)

#: Bichsel's constant j in the most probable energy loss.
_BICHSEL_J = 0.200


@dataclass
class WaferConfig:
    """Geometry of one wafer and its detectors.

    Attributes
    ----------
    side_mm : float
        Side of the square wafer (mm); LiteBIRD MHFT wafers are ~30 mm across.
    thickness_um : float
        Wafer thickness (um of silicon), 500-675 um.
    pitch_mm : float
        Centre-to-centre spacing of the detectors on their square grid (mm).
    absorber_side_mm : float
        Side of each detector's (square) absorber (mm).
    absorber_thickness_um : float
        Absorber thickness in um of silicon equivalent.
    material : str
        Material of wafer and absorbers (``"silicon"``).
    """

    side_mm: float = 30.0
    thickness_um: float = 500.0
    pitch_mm: float = 5.0
    absorber_side_mm: float = 3.0
    absorber_thickness_um: float = 2.0
    material: str = "silicon"

    def __post_init__(self) -> None:
        for name in ("side_mm", "thickness_um", "pitch_mm", "absorber_side_mm", "absorber_thickness_um"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise InputError(f"WaferConfig.{name} must be a positive number, got {v!r}")
        if self.absorber_side_mm > self.pitch_mm:
            raise InputError(f"absorbers ({self.absorber_side_mm} mm) are wider than the detector pitch ({self.pitch_mm} mm)")
        get_material(self.material)

    @property
    def area_cm2(self) -> float:
        """Area of the wafer footprint (cm^2), absorbers included."""
        return (self.side_mm / 10.0) ** 2

    @property
    def absorber_area_cm2(self) -> float:
        return (self.absorber_side_mm / 10.0) ** 2

    def max_detectors(self) -> int:
        """How many detectors fit on the wafer at this pitch."""
        per_side = int(np.floor((self.side_mm - self.absorber_side_mm) / self.pitch_mm + 1e-9)) + 1
        return per_side * per_side

    def detector_centres_mm(self, n_detectors: int) -> np.ndarray:
        """Centres (n, 2) of the absorbers (mm, wafer centre at 0): a centred square grid, row by row.

        Raises
        ------
        InputError
            If ``n_detectors`` < 1 or the detectors do not fit on the wafer.
        """
        if n_detectors < 1:
            raise InputError(f"number of detectors must be at least 1, got {n_detectors}")
        if n_detectors > self.max_detectors():
            raise InputError(
                f"{n_detectors} detectors do not fit on a {self.side_mm:g} mm wafer at a {self.pitch_mm:g} mm pitch "
                f"(at most {self.max_detectors()}); use a larger wafer side or a smaller pitch"
            )
        ncol = int(np.ceil(np.sqrt(n_detectors)))
        nrow = int(np.ceil(n_detectors / ncol))
        idx = np.arange(n_detectors)
        col, row = idx % ncol, idx // ncol
        x = (col - (ncol - 1) / 2.0) * self.pitch_mm
        y = (row - (nrow - 1) / 2.0) * self.pitch_mm
        return np.stack([x, y], axis=1)

    def direct_hit_fraction(self, n_detectors: int) -> float:
        """Fraction of the wafer footprint covered by absorbers."""
        return n_detectors * self.absorber_area_cm2 / self.area_cm2


# --------------------------------------------------------------------------- Landau tables
@dataclass(frozen=True)
class _LandauTables:
    x_mode: float
    x: np.ndarray  # truncation points (scipy units)
    cdf: np.ndarray  # F(x)
    mean_below: np.ndarray  # E[X | X <= x]


@lru_cache(maxsize=1)
def _landau_tables() -> _LandauTables:
    """Truncated-Landau tables in scipy's convention (mode ~ -0.4293, FWHM 4.018 * 2/pi)."""
    lan = scipy.stats.landau
    x_core = np.concatenate([np.linspace(-6.0, 30.0, 14401), np.geomspace(30.0, 1e4, 4000)[1:]])
    pdf = lan.pdf(x_core)
    cdf = lan.cdf(x_core)
    # partial first moment by trapezoid, starting from the (negligible) far-left tail
    mom = np.concatenate([[0.0], np.cumsum(0.5 * (x_core[1:] * pdf[1:] + x_core[:-1] * pdf[:-1]) * np.diff(x_core))])
    mom += x_core[0] * cdf[0]
    # analytic tail beyond 1e4: pdf ~ (2/pi) / x^2
    x_tail = np.geomspace(1e4, 1e15, 400)[1:]
    xg, fg, mg = x_core[-1], cdf[-1], mom[-1]
    cdf_tail = fg + (2 / np.pi) * (1.0 / xg - 1.0 / x_tail)
    mom_tail = mg + (2 / np.pi) * np.log(x_tail / xg)
    x = np.concatenate([x_core, x_tail])
    f = np.concatenate([cdf, cdf_tail])
    m = np.concatenate([mom, mom_tail])
    keep = f > 1e-12
    x, f, m = x[keep], f[keep], m[keep]
    mean_below = m / f
    # enforce monotonicity for the inversion (it is monotone analytically)
    mean_below = np.maximum.accumulate(mean_below)
    xm = scipy.optimize.minimize_scalar(lambda t: -lan.pdf(t), bounds=(-1.0, 0.0), method="bounded").x
    return _LandauTables(x_mode=float(xm), x=x, cdf=f, mean_below=mean_below)


def most_probable_loss_mev(kinetic_energy_mev: np.ndarray, charge_z: int, mass_number_a: int, thickness_g_cm2: np.ndarray, material: str = "silicon") -> np.ndarray:
    """Most probable energy loss in a thin layer (MeV), Bichsel / PDG.

    ``Delta_p = xi [ln(2 m c^2 beta^2 gamma^2 / I) + ln(xi / I) + j - beta^2 - delta]``, ``j = 0.200``.
    """
    mat = get_material(material)
    m = particle_mass_mev(charge_z, mass_number_a)
    beta, gamma = beta_gamma(kinetic_energy_mev, m)
    xi = landau_xi_mev(kinetic_energy_mev, charge_z, mass_number_a, thickness_g_cm2, material)
    i_mev = mat.mean_excitation_ev * 1e-6
    return xi * (
        np.log(2 * ELECTRON_MASS_MEV * beta**2 * gamma**2 / i_mev) + np.log(xi / i_mev) + _BICHSEL_J - beta**2 - density_effect(beta, gamma, mat)
    )


def landau_xi_mev(kinetic_energy_mev: np.ndarray, charge_z: int, mass_number_a: int, thickness_g_cm2: np.ndarray, material: str = "silicon") -> np.ndarray:
    """Landau's width ``xi = (K/2) z^2 <Z/A> x / beta^2`` (MeV), with the effective charge."""
    mat = get_material(material)
    m = particle_mass_mev(charge_z, mass_number_a)
    beta, _ = beta_gamma(kinetic_energy_mev, m)
    z = effective_charge(charge_z, beta)
    return 0.5 * K_BETHE_MEV_CM2_MOL * z**2 * mat.z_over_a * np.asarray(thickness_g_cm2) / np.maximum(beta, 1e-12) ** 2


def energy_loss_mev(
    kinetic_energy_mev: np.ndarray,
    charge_z: int,
    mass_number_a: int,
    path_um: np.ndarray,
    rng: np.random.Generator | None,
    material: str = "silicon",
    kappa_landau: float = 0.01,
    kappa_gauss: float = 10.0,
) -> np.ndarray:
    """Energy lost by nuclei of one species crossing ``path_um`` of material (MeV).

    Parameters
    ----------
    kinetic_energy_mev : ndarray
        Kinetic energy at entry (MeV).
    charge_z, mass_number_a : int
        The nucleus.
    path_um : ndarray
        Path length in the layer (um).
    rng : numpy.random.Generator or None
        Source of the fluctuations; ``None`` returns the mean (CSDA) loss.
    material : str
        Layer material.
    kappa_landau, kappa_gauss : float
        Vavilov-parameter bounds of the Landau and Gaussian regimes.

    Returns
    -------
    ndarray
        Energy lost (MeV), in ``[0, kinetic_energy_mev]``.
    """
    mat = get_material(material)
    e = np.asarray(kinetic_energy_mev, dtype=np.float64)
    x_g = np.broadcast_to(np.asarray(path_um, dtype=np.float64) * 1e-4 * mat.density_g_cm3, e.shape)
    e_out = residual_energy_mev(e, x_g, charge_z, mass_number_a, material)
    mean = e - e_out
    if rng is None or e.size == 0:
        return mean
    stopped = e_out <= 0
    m = particle_mass_mev(charge_z, mass_number_a)
    beta, gamma = beta_gamma(e, m)
    xi = landau_xi_mev(e, charge_z, mass_number_a, x_g, material)
    tmax = t_max_mev(beta, gamma, m)
    kappa = xi / tmax
    out = mean.copy()
    live = ~stopped
    # --- Landau (thin) ---
    lan = live & (kappa < kappa_landau)
    if np.any(lan):
        tab = _landau_tables()
        d_mp = most_probable_loss_mev(e[lan], charge_z, mass_number_a, x_g[lan], material)
        target = tab.x_mode + (2.0 / np.pi) * (mean[lan] - d_mp) / xi[lan]
        x_max = np.interp(target, tab.mean_below, tab.x)
        f_max = np.interp(x_max, tab.x, tab.cdf)
        u = rng.random(int(lan.sum())) * f_max
        xs = scipy.stats.landau.ppf(np.clip(u, 1e-300, None))
        xs = np.minimum(xs, x_max)
        out[lan] = d_mp + xi[lan] * (np.pi / 2.0) * (xs - tab.x_mode)
    # --- Vavilov as a shifted Gamma with the first three cumulants ---
    gam = live & (kappa >= kappa_landau) & (kappa < kappa_gauss)
    if np.any(gam):
        b2 = beta[gam] ** 2
        k2 = xi[gam] * tmax[gam] * (1.0 - 0.5 * b2)
        k3 = xi[gam] * tmax[gam] ** 2 * (0.5 - b2 / 3.0)
        skew = k3 / k2**1.5
        shape = 4.0 / skew**2
        scale = np.sqrt(k2 / shape)
        out[gam] = mean[gam] - shape * scale + scale * rng.standard_gamma(shape)
    # --- Gaussian (thick) ---
    gau = live & (kappa >= kappa_gauss)
    if np.any(gau):
        sigma = np.sqrt(xi[gau] * tmax[gau] * (1.0 - 0.5 * beta[gau] ** 2))
        out[gau] = mean[gau] + sigma * rng.standard_normal(int(gau.sum()))
    return np.clip(out, 0.0, e)


# --------------------------------------------------------------------------- hits
@dataclass
class HitGeometry:
    """Where each primary crosses the wafer's mid-plane.

    Attributes
    ----------
    x_mm, y_mm : ndarray
        Crossing point (mm, wafer centre at 0).
    detector : ndarray of int32
        Detector whose absorber is crossed, or -1 for the bare wafer.
    """

    x_mm: np.ndarray
    y_mm: np.ndarray
    detector: np.ndarray


def locate_hits(wafer: WaferConfig, n_detectors: int, x_mm: np.ndarray, y_mm: np.ndarray) -> np.ndarray:
    """Detector index whose absorber footprint contains each point, -1 elsewhere."""
    centres = wafer.detector_centres_mm(n_detectors)
    ncol = int(np.ceil(np.sqrt(n_detectors)))
    nrow = int(np.ceil(n_detectors / ncol))
    x0 = -(ncol - 1) / 2.0 * wafer.pitch_mm
    y0 = -(nrow - 1) / 2.0 * wafer.pitch_mm
    col = np.rint((np.asarray(x_mm) - x0) / wafer.pitch_mm).astype(np.int64)
    row = np.rint((np.asarray(y_mm) - y0) / wafer.pitch_mm).astype(np.int64)
    idx = row * ncol + col
    ok = (col >= 0) & (col < ncol) & (row >= 0) & (row < nrow) & (idx < n_detectors)
    idx_c = np.where(ok, idx, 0)
    half = wafer.absorber_side_mm / 2.0
    inside = ok & (np.abs(x_mm - centres[idx_c, 0]) < half) & (np.abs(y_mm - centres[idx_c, 1]) < half)
    return np.where(inside, idx, -1).astype(np.int32)


def sample_positions(wafer: WaferConfig, n_detectors: int, n: int, rng: np.random.Generator) -> HitGeometry:
    """Uniform crossing points on the wafer footprint and the layer they fall in."""
    half = wafer.side_mm / 2.0
    x = (rng.random(n) * 2.0 - 1.0) * half
    y = (rng.random(n) * 2.0 - 1.0) * half
    return HitGeometry(x_mm=x, y_mm=y, detector=locate_hits(wafer, n_detectors, x, y))


def path_length_um(thickness_um: float, cos_theta: np.ndarray, max_um: float) -> np.ndarray:
    """Chord ``t / cos(theta)`` through a slab, capped at ``max_um`` for grazing tracks (um)."""
    return np.minimum(thickness_um / np.maximum(np.asarray(cos_theta), 1e-12), max_um)


def deposit_hits(
    primaries: Primaries,
    geometry: HitGeometry,
    wafer: WaferConfig,
    rng: np.random.Generator | None,
    *,
    kappa_landau: float = 0.01,
    kappa_gauss: float = 10.0,
) -> tuple[EventTable, np.ndarray]:
    """Energy left by each primary in the absorber or wafer it crosses.

    Parameters
    ----------
    primaries : Primaries
        Particles behind the shield (``kinetic_energy_mev`` = residual energy;
        particles with zero energy were stopped and are skipped).
    geometry : HitGeometry
        Their crossing points and layers (from :func:`sample_positions`).
    wafer : WaferConfig
        Thicknesses and sizes.
    rng : Generator or None
        Fluctuations (``None``: mean losses).

    Returns
    -------
    events : EventTable
        One row per particle with a positive deposit, in the input order
        (time-sorted if the primaries are): direct hits carry their detector
        index and kind 0, wafer hits detector -1 and kind 1.
    species : ndarray of int16
        The species index of each row (for the plots).
    """
    n = len(primaries)
    e_dep = np.zeros(n)
    direct = geometry.detector >= 0
    thick = np.where(direct, wafer.absorber_thickness_um, wafer.thickness_um)
    cap = np.where(direct, wafer.absorber_side_mm, wafer.side_mm) * 1e3
    path = np.minimum(thick / np.maximum(primaries.cos_theta, 1e-12), cap)
    alive = primaries.kinetic_energy_mev > 0
    z = primaries.charge_z
    a = primaries.mass_number_a
    for zz, aa in sorted(set(zip(z[alive].tolist(), a[alive].tolist()))):
        m = alive & (z == zz) & (a == aa)
        e_dep[m] = energy_loss_mev(primaries.kinetic_energy_mev[m], zz, aa, path[m], rng, wafer.material, kappa_landau, kappa_gauss)
    keep = e_dep > 0
    events = EventTable(
        time_s=primaries.time_s[keep],
        detector=np.where(direct, geometry.detector, -1)[keep],
        charge_z=z[keep],
        energy_kev=e_dep[keep] * 1e3,
        kind=np.where(direct, EVENT_KIND_DIRECT, EVENT_KIND_WAFER)[keep],
    )
    return events, primaries.species[keep]
