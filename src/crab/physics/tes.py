"""The TES bolometer: its electro-thermal equations and the nonlinear response to direct hits.

Stage 4a of the physics Monte Carlo (see ``docs/design.md``): a *direct* hit
(energy deposited in a detector's absorber) becomes a pulse in pW of
absorbed-power equivalent at the internal rate.  The wafer path is in
:mod:`crab.physics.wafer_thermal`, the anti-alias filter and decimation in
:mod:`crab.physics.decimation`.

The TES
-------
Electro-thermal equations (Irwin & Hilton 2005) for the TES temperature
``T`` and current ``I``::

    C(T) dT/dt = -K (T^n - T_bath^n) + I^2 R(T, I) + P_opt + P_CR(t)
    L dI/dt    = V_bias - I R_shunt - I R(T, I)

with ``C(T) = C0 (T / T0)^gamma`` (``gamma = 1``: metal-dominated heat
capacity), and a smooth transition written with an algebraic sigmoid (only
``+ - * / sqrt``, so results are bit-reproducible whatever the array layout)::

    R(T, I) = R_n / 2 * (1 + u / sqrt(1 + u^2)),   u = (T - T_mid) / dT_w + b (I / I0 - 1).

The operating point is fixed by the bath power at ``T0 = T_c`` (``P_sat =
K (T_c^n - T_bath^n)``), the bias point ``R0 = r_frac R_n`` and the optical
load: ``I0^2 R0 = P_sat - P_opt``.  The width ``dT_w`` and ``b`` follow from
the requested loop gain ``L_I = alpha P_J / (G T0)`` and current sensitivity
``beta``.  Defaults (physics reference): T_c = 171 mK, T_bath = 100 mK, P_sat
= 1.25 pW, n = 4 (so G = 33 pW/K), C = 1.1 pJ/K, L_I = 13, hence tau_0 = C/G
= 33 ms and an effective time constant of about 2.6 ms.

The TOD is the current change converted to absorbed-power equivalent with the
small-signal DC responsivity: ``P_eq = (I - I0) / s_I(0)``; it is exact for
small signals, and large deposits show the real nonlinearity (saturation at
the normal resistance, longer pulses) as deviations from a scaled template.

Direct hits
-----------
A direct hit deposits its energy in the detector's absorber, taken as
instantaneously thermalised with the TES: ``T`` jumps so that the enthalpy
``int C dT`` grows by the deposit.  The full nonlinear equations are
integrated from the operating point with a fixed-step classical Runge-Kutta
(RK4) scheme, in sub-steps of at most a quarter of the shortest time constant
(the electrical one, ~0.05-0.1 ms: about 100 kHz), recorded at the internal
rate (~20 kHz), vectorised over a batch of *clusters* (hits on one detector
close enough in time to pile up are integrated together; sub-sample hit
times are honoured by splitting the step).  Once a cluster's state is back
within 1e-4 of the operating point (relative to the transition width and to
I0) it is carried on by the exact propagator of the linearised equations
(neglected terms below 1e-6 of the peak), until its signal stays below
``relax_tol_pw``.  The result depends only on the cluster, not on the batch
it was computed in.  A cluster is a run of hits on one detector each
arriving before the previous pulse has relaxed (pile-up in the nonlinear
TES, see :mod:`crab.physics.montecarlo`).

Approximations: the absorber thermalises instantly with the TES (no
absorber-TES link, no athermal phonons); the TES parameters are the same for
every detector; the bias voltage is ideal and the readout (SQUID,
multiplexing) is not modelled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import scipy.linalg

from crab.core.errors import InputError

#: Joules per keV.
J_PER_KEV = 1.602176634e-16
#: Watts per pW.
W_PER_PW = 1e-12
#: A direct-hit cluster is continued with the exact linearised propagator once its
#: temperature and current are within this fraction of the transition width and of I0.
LINEAR_TAIL_EPS = 1e-4


# --------------------------------------------------------------------------- parameters
@dataclass
class TESParams:
    """TES bolometer parameters (LiteBIRD-like defaults from the physics reference).

    Attributes
    ----------
    t_c_k : float
        Operating temperature, in the transition (K).
    t_bath_k : float
        Nominal bath (wafer) temperature (K).
    p_sat_pw : float
        Saturation power ``K (T_c^n - T_bath^n)`` (pW).
    n_exponent : float
        Exponent of the thermal link to the bath (4 gives G = 33 pW/K).
    c_pj_per_k : float
        Heat capacity at ``t_c_k`` (pJ/K).
    c_exponent : float
        ``C ~ T^c_exponent`` (1: electrons of the metal films; 0: constant).
    loop_gain : float
        Electro-thermal loop gain ``L_I = alpha P_J / (G T0)``.
    beta_i : float
        Current sensitivity ``(I/R) dR/dI`` at the operating point.
    r_n_ohm : float
        Normal resistance (Ohm).
    r_frac : float
        Bias point ``R0 / R_n`` in (0, 1).
    r_shunt_ohm : float
        Shunt (load) resistance of the voltage bias (Ohm).
    inductance_uh : float
        Inductance of the bias circuit (uH).
    p_opt_pw : float
        Optical power absorbed at the operating point (pW).
    """

    t_c_k: float = 0.171
    t_bath_k: float = 0.100
    p_sat_pw: float = 1.25
    n_exponent: float = 4.0
    c_pj_per_k: float = 1.1
    c_exponent: float = 1.0
    loop_gain: float = 13.0
    beta_i: float = 0.1
    r_n_ohm: float = 1.0
    r_frac: float = 0.5
    r_shunt_ohm: float = 0.02
    inductance_uh: float = 50.0
    p_opt_pw: float = 0.4

    def __post_init__(self) -> None:
        for name, v in asdict(self).items():
            if not np.isfinite(v):
                raise InputError(f"TESParams.{name} must be finite, got {v!r}")
        positive = ("t_c_k", "t_bath_k", "p_sat_pw", "n_exponent", "c_pj_per_k", "loop_gain", "r_n_ohm", "inductance_uh")
        for name in positive:
            if getattr(self, name) <= 0:
                raise InputError(f"TESParams.{name} must be > 0, got {getattr(self, name)!r}")
        if not self.t_bath_k < self.t_c_k:
            raise InputError(f"the bath ({self.t_bath_k} K) must be colder than the TES ({self.t_c_k} K)")
        if not 0 < self.r_frac < 1:
            raise InputError(f"TESParams.r_frac must be in (0, 1), got {self.r_frac}")
        if not 0 <= self.p_opt_pw < self.p_sat_pw:
            raise InputError(f"optical power {self.p_opt_pw} pW must be >= 0 and below P_sat = {self.p_sat_pw} pW")
        if self.r_shunt_ohm < 0 or self.beta_i < 0 or self.c_exponent < 0:
            raise InputError("TESParams.r_shunt_ohm, beta_i and c_exponent must be >= 0")



# --------------------------------------------------------------------------- the TES model
@dataclass(frozen=True)
class OperatingPoint:
    """Quiescent state of the TES and its small-signal parameters (SI units).

    Attributes
    ----------
    t0_k, i0_a, r0_ohm, v_bias_v : float
        Temperature, current, resistance and bias voltage.
    p_j_w, p_opt_w, k_w_per_kn : float
        Joule power, optical power, bath-link coefficient.
    g_w_per_k, g_bath_w_per_k : float
        ``dP_bath/dT`` at the TES and ``-dP_bath/dT_bath`` at the bath.
    c0_j_per_k, alpha, beta, loop_gain : float
    tau0_s : float
        ``C / G``.
    jacobian : ndarray (2, 2)
        d(dT/dt, dI/dt)/d(T, I) at the operating point.
    s_i_a_per_w : float
        DC power-to-current responsivity (A/W, negative).
    tau_plus_s, tau_minus_s : float
        Electrical-like (fast) and thermal (effective) time constants of the
        linearised system; ``tau_minus_s`` is the pulse decay time.
    """

    t0_k: float
    i0_a: float
    r0_ohm: float
    v_bias_v: float
    p_j_w: float
    p_opt_w: float
    k_w_per_kn: float
    g_w_per_k: float
    g_bath_w_per_k: float
    c0_j_per_k: float
    alpha: float
    beta: float
    loop_gain: float
    tau0_s: float
    jacobian: np.ndarray
    s_i_a_per_w: float
    tau_plus_s: float
    tau_minus_s: float


class TESModel:
    """The nonlinear TES equations with their operating point.

    Parameters
    ----------
    params : TESParams
    """

    def __init__(self, params: TESParams) -> None:
        self.params = p = params
        self.t0 = p.t_c_k
        self.tb = p.t_bath_k
        self.n = p.n_exponent
        self.p_opt = p.p_opt_pw * W_PER_PW
        p_sat = p.p_sat_pw * W_PER_PW
        self.k = p_sat / (self.t0**self.n - self.tb**self.n)
        self.tb_n = self.tb**self.n
        self.c0 = p.c_pj_per_k * 1e-12
        self.gamma_c = p.c_exponent
        self.r_n = p.r_n_ohm
        self.r_sh = p.r_shunt_ohm
        self.ind = p.inductance_uh * 1e-6
        self.r0 = p.r_frac * p.r_n_ohm
        self.p_j = p_sat - self.p_opt
        self.i0 = float(np.sqrt(self.p_j / self.r0))
        self.v = self.i0 * (self.r0 + self.r_sh)
        g = self.n * self.k * self.t0 ** (self.n - 1)
        self.g = g
        self.g_bath = self.n * self.k * self.tb ** (self.n - 1)
        alpha = p.loop_gain * g * self.t0 / self.p_j
        s0 = 2.0 * p.r_frac - 1.0
        u0 = s0 / np.sqrt(1.0 - s0 * s0)
        g0 = (1.0 + u0 * u0) ** -1.5
        self.dt_w = self.t0 * self.r_n * g0 / (2.0 * self.r0 * alpha)
        self.t_mid = self.t0 - u0 * self.dt_w
        self.b_i = 2.0 * p.beta_i * self.r0 / (self.r_n * g0)
        self.alpha = alpha
        self.beta = p.beta_i
        # Jacobian at the operating point (analytic)
        r_t = alpha * self.r0 / self.t0
        r_i = p.beta_i * self.r0 / self.i0
        jac = np.array(
            [
                [(-g + self.i0**2 * r_t) / self.c0, (2 * self.i0 * self.r0 + self.i0**2 * r_i) / self.c0],
                [-self.i0 * r_t / self.ind, -(self.r_sh + self.r0 + self.i0 * r_i) / self.ind],
            ]
        )
        self.jacobian = jac
        b_p = np.array([1.0 / self.c0, 0.0])
        x_dc = -np.linalg.solve(jac, b_p)
        self.s_i = float(x_dc[1])
        ev = np.linalg.eigvals(jac)
        if np.any(ev.real >= 0):
            raise InputError(f"the TES is unstable at its operating point (eigenvalues {ev}); lower the loop gain or the inductance")
        rates = np.sort(-ev.real)
        self.eigenvalues = ev
        self.op = OperatingPoint(
            t0_k=self.t0,
            i0_a=self.i0,
            r0_ohm=self.r0,
            v_bias_v=self.v,
            p_j_w=self.p_j,
            p_opt_w=self.p_opt,
            k_w_per_kn=self.k,
            g_w_per_k=g,
            g_bath_w_per_k=self.g_bath,
            c0_j_per_k=self.c0,
            alpha=alpha,
            beta=p.beta_i,
            loop_gain=p.loop_gain,
            tau0_s=self.c0 / g,
            jacobian=jac,
            s_i_a_per_w=self.s_i,
            tau_plus_s=float(1.0 / rates[1]),
            tau_minus_s=float(1.0 / rates[0]),
        )
        self._inv_dtw = 1.0 / self.dt_w
        self._inv_i0 = 1.0 / self.i0
        self._r_half = 0.5 * self.r_n
        self._inv_l = 1.0 / self.ind
        self._inv_t0 = 1.0 / self.t0
        self._inv_si = 1.0 / self.s_i
        self._b_over_i0 = self.b_i / self.i0
        self._k_tbn = self.k * self.tb_n
        self._c_over_t0 = self.c0 / self.t0

    # ----------------------------------------------------------- nonlinear model
    def resistance(self, t: np.ndarray, i: np.ndarray) -> np.ndarray:
        """R(T, I) (Ohm)."""
        u = (t - self.t_mid) * self._inv_dtw + (i * self._b_over_i0 - self.b_i)
        return self._r_half + self._r_half * (u / np.sqrt(1.0 + u * u))

    def bath_power(self, t: np.ndarray) -> np.ndarray:
        """Power flowing to the bath ``K (T^n - T_bath^n)`` (W)."""
        if self.n == 4.0:
            t2 = t * t
            return self.k * (t2 * t2 - self.tb_n)
        return self.k * (np.power(t, self.n) - self.tb_n)

    def heat_capacity(self, t: np.ndarray) -> np.ndarray:
        """C(T) (J/K)."""
        if self.gamma_c == 0.0:
            return self.c0 + 0.0 * t
        if self.gamma_c == 1.0:
            return self.c0 * (t * self._inv_t0)
        return self.c0 * np.power(t * self._inv_t0, self.gamma_c)

    def rhs(self, t: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Time derivatives ``(dT/dt, dI/dt)`` without external power."""
        r = self.resistance(t, i)
        if self.n == 4.0:
            t2 = t * t
            pb = t2 * t2 * self.k - self._k_tbn
        else:
            pb = self.bath_power(t)
        if self.gamma_c == 1.0:
            c = t * self._c_over_t0
        else:
            c = self.heat_capacity(t)
        dt = (i * i * r + self.p_opt - pb) / c
        di = (self.v - i * (r + self.r_sh)) * self._inv_l
        return dt, di

    def rk4_step(self, t: np.ndarray, i: np.ndarray, h: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """One classical Runge-Kutta step of length ``h`` (s, scalar or per element)."""
        k1t, k1i = self.rhs(t, i)
        hh = h * 0.5
        k2t, k2i = self.rhs(t + hh * k1t, i + hh * k1i)
        k3t, k3i = self.rhs(t + hh * k2t, i + hh * k2i)
        k4t, k4i = self.rhs(t + h * k3t, i + h * k3i)
        h6 = h / 6.0
        return t + h6 * (k1t + 2.0 * k2t + 2.0 * k3t + k4t), i + h6 * (k1i + 2.0 * k2i + 2.0 * k3i + k4i)

    def heat(self, t: np.ndarray, energy_j: np.ndarray) -> np.ndarray:
        """Temperature after depositing ``energy_j`` instantly at temperature ``t`` (enthalpy conserved)."""
        g1 = self.gamma_c + 1.0
        if self.gamma_c == 0.0:
            return t + energy_j / self.c0
        if self.gamma_c == 1.0:
            return np.sqrt(t * t + 2.0 * energy_j * self.t0 / self.c0)
        return self.t0 * np.power(np.power(t * self._inv_t0, g1) + g1 * energy_j / (self.c0 * self.t0), 1.0 / g1)

    def power_equivalent_pw(self, i: np.ndarray) -> np.ndarray:
        """TOD value of a current: ``(I - I0) / s_I(0)`` in pW."""
        return (i - self.i0) * self._inv_si / W_PER_PW

    # ----------------------------------------------------------- rates for step-size control
    def fastest_rate_hz(self, t_peak_k: float | np.ndarray | None = None) -> np.ndarray:
        """Largest decay rate (1/s) met up to a peak temperature ``t_peak_k`` (default: anywhere).

        The maximum of the linearised rates at the operating point, the
        electrical rate ``(R_sh + R (1 + beta)) / L`` at the resistance reached
        and the bath cooling rate ``dP_bath/dT / C`` at the peak temperature.
        Without ``t_peak_k``, the normal-state electrical rate is used.
        """
        lin = float(np.max(np.abs(self.eigenvalues)))
        if t_peak_k is None:
            return np.asarray(max(lin, (self.r_sh + self.r_n * (1.0 + self.beta)) / self.ind))
        tp = np.asarray(t_peak_k, dtype=np.float64)
        r = self.resistance(np.maximum(tp, self.t0), np.full(tp.shape, self.i0))
        el = (self.r_sh + r * (1.0 + self.beta)) / self.ind
        th = self.n * self.k * tp ** (self.n - 1) / self.heat_capacity(tp)
        return np.maximum(np.maximum(lin, el), th)

    # ----------------------------------------------------------- small-signal reference
    def linear_pulse_pw(self, energy_j: float, t_s: np.ndarray) -> np.ndarray:
        """Small-signal response (pW-equivalent) to ``energy_j`` deposited at t = 0 (exact for E -> 0)."""
        t_s = np.asarray(t_s, dtype=np.float64)
        x0 = np.array([energy_j / self.c0, 0.0])
        w, v = np.linalg.eig(self.jacobian)
        c = np.linalg.solve(v, x0)
        di = (v[1][None, :] * c[None, :] * np.exp(np.outer(t_s, w))).sum(axis=1).real
        return np.where(t_s >= 0, di * self._inv_si / W_PER_PW, 0.0)

    # ----------------------------------------------------------- clusters of direct hits
    def integrate_clusters(
        self,
        hit_times_s: Sequence[np.ndarray],
        energies_j: Sequence[np.ndarray],
        dt_s: float,
        *,
        relax_tol_pw: float = 1e-9,
        max_duration_s: float = 10.0,
        check_every: int = 64,
        max_h_rate: float = 0.25,
        max_batch: int = 2048,
        return_state: bool = False,
    ) -> list:
        """Integrate the nonlinear equations for clusters of direct hits.

        Parameters
        ----------
        hit_times_s : sequence of 1-D arrays
            For each cluster, its hit times (s, sorted, on the global clock
            whose internal samples are at ``j * dt_s``).
        energies_j : sequence of 1-D arrays
            Deposited energies (J), same shapes.
        dt_s : float
            Internal sample spacing (s).
        relax_tol_pw : float
            A cluster is finished once its signal has stayed below this
            (pW) for ``check_every`` samples after its last hit.
        max_duration_s : float
            Hard limit on the length of one cluster's integration (s).
        check_every : int
            Samples between convergence checks.
        max_h_rate : float
            Largest ``h * rate`` allowed for a Runge-Kutta step, with ``rate``
            the fastest decay rate met (linearised modes, normal-state
            electrical time constant and, for very hot clusters, cooling at
            the peak temperature): each internal sample interval is split
            into ``ceil(dt * rate / max_h_rate)`` sub-steps (RK4 is stable up
            to 2.78; 0.25 keeps its error far below 1e-4 per step).
        max_batch : int
            Most clusters integrated together (memory bound).
        return_state : bool
            Also return the temperature and current at every sample.

        Returns
        -------
        list
            One item per cluster: ``(j0, pulse_pw)`` with ``j0`` the global
            index of the first internal sample after the first hit and
            ``pulse_pw`` the signal from there on (float64); with
            ``return_state``, ``(j0, pulse_pw, T, I)``.  Samples at or
            before the first hit are exactly 0 and are not returned.
        """
        n_cl = len(hit_times_s)
        out: list = [None] * n_cl
        if n_cl == 0:
            return out
        e_tot = np.array([float(np.sum(e)) for e in energies_j])
        t_peak = self.heat(np.full(n_cl, self.t0), e_tot)
        # one sub-step count for all clusters (bounded by the normal-state electrical rate), more only
        # for clusters hot enough that bath cooling is faster still: fewer batches, same step everywhere
        n_base = max(1, int(np.ceil(dt_s * float(self.fastest_rate_hz()) / max_h_rate)))
        n_sub = np.maximum(n_base, np.ceil(dt_s * self.fastest_rate_hz(t_peak) / max_h_rate)).astype(np.int64)
        for ns in np.unique(n_sub):
            group = np.flatnonzero(n_sub == ns)
            for a in range(0, group.size, max_batch):  # bounded memory; results do not depend on the split
                idx = group[a : a + max_batch]
                res = self._integrate_batch([hit_times_s[k] for k in idx], [energies_j[k] for k in idx], dt_s, int(ns), relax_tol_pw, max_duration_s, check_every, return_state)
                for k, r in zip(idx, res):
                    out[k] = r
        return out

    def _integrate_batch(self, times, energies, dt, n_sub, tol, max_s, check_every, return_state):
        """RK4 for a batch of clusters sharing the number of sub-steps.

        Each member is integrated with the nonlinear equations until, after
        its last hit, its state is within ``LINEAR_TAIL_EPS`` of the operating
        point (relative to the transition width and to I0); from there the
        exact propagator of the linearised system (``expm(J dt)``) carries it
        to the end (the neglected terms are ~1e-4 of an already tiny tail).
        Every decision uses only the member's own state, and only exactly
        rounded arithmetic is used per element, so a cluster's result does not
        depend on the batch it is computed in.
        """
        b = len(times)
        first = np.array([t[0] for t in times], dtype=np.float64)
        j0 = np.floor(first / dt).astype(np.int64) + 1
        h0 = j0 * dt - first  # first partial step, in (0, dt]
        # injections after the first: step i (into local sample i) holds hits in (t_{j0+i-1}, t_{j0+i}]
        inj: dict[int, list[tuple[int, float, float]]] = {}
        last_step = np.zeros(b, dtype=np.int64)
        for m in range(b):
            tm, em = np.asarray(times[m], dtype=np.float64), np.asarray(energies[m], dtype=np.float64)
            for tk, ek in zip(tm[1:], em[1:]):
                if tk <= j0[m] * dt:
                    step, off = 0, tk - first[m]
                else:
                    f = int(np.floor(tk / dt))
                    if f * dt >= tk:  # exactly on the grid: belongs to the step ending there
                        f -= 1
                    step, off = f + 1 - int(j0[m]), tk - f * dt
                inj.setdefault(step, []).append((m, off, ek))
                last_step[m] = max(last_step[m], step)
        t = self.heat(np.full(b, self.t0), np.array([float(np.asarray(e)[0]) for e in energies]))
        i = np.full(b, self.i0)
        phi = scipy.linalg.expm(self.jacobian * dt)
        p00, p01, p10, p11 = (float(x) for x in phi.ravel())
        eps_t = LINEAR_TAIL_EPS * self.dt_w
        eps_i = LINEAR_TAIL_EPS * self.i0
        nonlinear = np.ones(b, dtype=bool)
        act = np.arange(b)
        lin = np.zeros(0, dtype=np.int64)
        max_steps = int(np.ceil(max_s / dt)) + 1
        cap = min(max_steps, 4096)
        rec = np.empty((cap, b))
        rec_t = np.empty((cap, b)) if return_state else None
        rec_i = np.empty((cap, b)) if return_state else None
        length = np.full(b, -1, dtype=np.int64)
        step = 0
        sub = float(n_sub)
        while True:
            here = inj.get(step)
            if here:
                back = np.array(sorted({x[0] for x in here}))
                if np.any(~nonlinear[back]):
                    nonlinear[back] = True
                    act, lin = np.flatnonzero(nonlinear), np.flatnonzero(~nonlinear)
            if act.size:
                ta, ia = t[act], i[act]
                h_full = h0[act] if step == 0 else dt
                if here:
                    pos = {m: k for k, m in enumerate(act.tolist())}
                    consumed = np.zeros(act.size)
                    pending = sorted(here, key=lambda x: (x[1], x[0]))
                    while pending:
                        # one injection per member per round, in time order
                        seen: set[int] = set()
                        this, rest = [], []
                        for item in pending:
                            (rest if item[0] in seen else this).append(item)
                            seen.add(item[0])
                        h_a = np.zeros(act.size)
                        mem = np.array([pos[x[0]] for x in this])
                        offs = np.array([x[1] for x in this])
                        h_a[mem] = offs - consumed[mem]
                        ta, ia = self._advance(ta, ia, h_a, n_sub, sub)
                        consumed[mem] = offs
                        ta[mem] = self.heat(ta[mem], np.array([x[2] for x in this]))
                        pending = rest
                    h_rest = (h_full - consumed) if np.ndim(h_full) else (np.full(act.size, h_full) - consumed)
                    ta, ia = self._advance(ta, ia, h_rest, n_sub, sub)
                else:
                    ta, ia = self._advance(ta, ia, h_full, n_sub, sub)
                t[act], i[act] = ta, ia
            if lin.size:
                dtl = t[lin] - self.t0
                dil = i[lin] - self.i0
                t[lin] = self.t0 + (p00 * dtl + p01 * dil)
                i[lin] = self.i0 + (p10 * dtl + p11 * dil)
            if step >= cap:
                new_cap = min(max_steps, 2 * cap)
                rec = np.concatenate([rec, np.empty((new_cap - cap, b))])
                if return_state:
                    rec_t = np.concatenate([rec_t, np.empty((new_cap - cap, b))])
                    rec_i = np.concatenate([rec_i, np.empty((new_cap - cap, b))])
                cap = new_cap
            rec[step] = self.power_equivalent_pw(i)
            if return_state:
                rec_t[step], rec_i[step] = t, i
            step += 1
            if step % check_every == 0 or step >= max_steps:
                calm = (np.abs(t - self.t0) < eps_t) & (np.abs(i - self.i0) < eps_i) & (step - 1 >= last_step)
                if np.any(nonlinear & calm):
                    nonlinear &= ~calm
                    act, lin = np.flatnonzero(nonlinear), np.flatnonzero(~nonlinear)
                win = np.max(np.abs(rec[step - min(step, check_every) : step]), axis=0)
                done_now = (length < 0) & (win < tol) & (step - 1 > last_step)
                length[done_now] = step
                if step >= max_steps:
                    length[length < 0] = step
                if np.all(length >= 0):
                    break
        res = []
        for m in range(b):
            n = int(length[m])
            pulse = rec[:n, m].copy()
            if return_state:
                res.append((int(j0[m]), pulse, rec_t[:n, m].copy(), rec_i[:n, m].copy()))
            else:
                res.append((int(j0[m]), pulse))
        return res

    def _advance(self, t, i, h, n_sub, sub):
        if n_sub == 1:
            return self.rk4_step(t, i, h)
        hs = h / sub
        for _ in range(n_sub):
            t, i = self.rk4_step(t, i, hs)
        return t, i

