"""The wafer path: the linear response of every TES on a wafer to hits on the wafer itself.

Stage 4b of the physics Monte Carlo (see ``docs/design.md``).  A *wafer* hit
heats the wafer (heat capacity ``C_w``, link to the heat sink with time
constant ``tau_wafer_s``); the wafer reaches every TES on it through a
second, slower stage (the frame under the TES legs, time constant
``tau_link_s``), whose temperature is the TES bath.  This path is linear: the
4-state system (wafer, link, TES temperature, TES current), linearised at the
TES operating point (:class:`crab.physics.tes.TESModel`), is diagonalised once
and each of its modes is an exact one-pole recursive filter driven by the hits
at their exact (sub-sample) times.  The response is common to all detectors,
in pW of absorbed-power equivalent.

Approximations: the wafer path is linear (small wafer excursions:
microkelvins for the largest hits); it is superposed on the direct-hit
pulses (cross-terms between a wafer excursion and a simultaneous direct hit
are neglected); a direct hit does not heat the wafer (the absorber sits on a
membrane).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.signal

from crab.core.errors import InputError
from crab.physics.tes import W_PER_PW, TESModel


@dataclass
class WaferThermalParams:
    """Thermal model of the wafer seen by its detectors.

    Attributes
    ----------
    heat_capacity_nj_per_k : float
        Heat capacity of the wafer and what is bonded to it (nJ/K).
    tau_wafer_s : float
        Time constant of the wafer's link to the heat sink (s): ``C_w / G_w``.
    tau_link_s : float
        Time constant of the second stage, from the wafer to the frame under
        the TES legs (the TES bath) (s); it sets the rise of wafer glitches.
    """

    heat_capacity_nj_per_k: float = 20.0
    tau_wafer_s: float = 0.3
    tau_link_s: float = 0.03

    def __post_init__(self) -> None:
        for name, v in asdict(self).items():
            if not (np.isfinite(v) and v > 0):
                raise InputError(f"WaferThermalParams.{name} must be a positive number, got {v!r}")
        if abs(self.tau_wafer_s - self.tau_link_s) < 0.01 * self.tau_wafer_s:
            raise InputError("tau_wafer_s and tau_link_s must differ by more than 1 %")


# --------------------------------------------------------------------------- the wafer path
class WaferPath:
    """Linear response of every TES of a wafer to hits on the wafer (pW-equivalent).

    The state ``(dT_wafer, dT_link, dT_tes, dI_tes)`` obeys ``x' = A x`` with
    ``A`` from the wafer time constants and the TES Jacobian; a hit of energy
    ``E`` raises ``dT_wafer`` by ``E / C_w``.  ``A`` is diagonalised once and
    each mode ``j`` (rate ``lambda_j``, residue ``r_j`` on ``P_eq``) is an exact
    one-pole filter ``y[n] = exp(lambda_j dt) y[n-1] + x[n]`` driven by
    ``E r_j exp(lambda_j (n dt - t_hit))`` at the first sample ``n`` at or after
    the hit.  Filter states persist between calls.

    Parameters
    ----------
    tes : TESModel
    wafer : WaferThermalParams
    dt_s : float
        Internal sample spacing (s).
    """

    def __init__(self, tes: TESModel, wafer: WaferThermalParams, dt_s: float) -> None:
        self.dt = float(dt_s)
        c_w = wafer.heat_capacity_nj_per_k * 1e-9
        a = np.zeros((4, 4))
        a[0, 0] = -1.0 / wafer.tau_wafer_s
        a[1, 0] = 1.0 / wafer.tau_link_s
        a[1, 1] = -1.0 / wafer.tau_link_s
        a[2:, 2:] = tes.jacobian
        a[2, 1] = tes.g_bath / tes.c0
        self.matrix = a
        w, v = np.linalg.eig(a)
        b = np.array([1.0 / c_w, 0.0, 0.0, 0.0])
        c = np.array([0.0, 0.0, 0.0, 1.0 / tes.s_i / W_PER_PW])
        coef = np.linalg.solve(v, b)
        res = (c @ v) * coef  # pW per joule, per mode
        self.complex = bool(np.any(np.abs(w.imag) > 0))
        order = np.argsort(-w.real)
        self.rates = w[order] if self.complex else w.real[order]
        self.residues = res[order] if self.complex else res.real[order]
        self.poles = np.exp(self.rates * self.dt)
        dtype = np.complex128 if self.complex else np.float64
        self._zi = [np.zeros(1, dtype=dtype) for _ in self.rates]
        #: DC gain: pW-equivalent per W of steady wafer heating.
        self.dc_pw_per_w = float(np.real(-c @ np.linalg.solve(a, b)))

    def impulse_response_pw(self, t_s: np.ndarray, energy_j: float = 1.0) -> np.ndarray:
        """Continuous response (pW) to a wafer hit of ``energy_j`` at t = 0."""
        t_s = np.asarray(t_s, dtype=np.float64)
        y = (self.residues[None, :] * np.exp(np.outer(t_s, self.rates))).sum(axis=1)
        return np.where(t_s >= 0, np.real(y) * energy_j, 0.0)

    def process(self, n_samples: int, sample_index: np.ndarray, phase_s: np.ndarray, energies_j: np.ndarray) -> np.ndarray:
        """Signal (pW) at the next ``n_samples`` internal samples.

        Parameters
        ----------
        n_samples : int
            Length of this segment (internal samples).
        sample_index : ndarray of int
            For each hit, the index within this segment of the first sample at
            or after it.
        phase_s : ndarray
            ``sample time - hit time`` (s, in [0, dt)).
        energies_j : ndarray
            Deposited energies (J).
        """
        dtype = np.complex128 if self.complex else np.float64
        out = np.zeros(n_samples)
        idx = np.asarray(sample_index, dtype=np.int64)
        for k, (lam, r, a) in enumerate(zip(self.rates, self.residues, self.poles)):
            x = np.zeros(n_samples, dtype=dtype)
            if idx.size:
                np.add.at(x, idx, energies_j * r * np.exp(lam * phase_s))
            y, self._zi[k] = scipy.signal.lfilter([1.0], [1.0, -a], x, zi=self._zi[k])
            out += np.real(y)
        return out
