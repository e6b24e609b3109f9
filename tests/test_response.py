"""TES electro-thermal response, wafer path, anti-aliasing and decimation.

References are computed independently of the model code: the small-signal
responsivity and time constants from the closed forms of Irwin & Hilton
(2005), the pulse shape from the matrix exponential of their linear system.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.signal

from crab.core.errors import InputError
from crab.physics.decimation import Decimator, antialias_sos
from crab.physics.tes import J_PER_KEV, TESModel, TESParams
from crab.physics.wafer_thermal import WaferPath, WaferThermalParams

DT = 1.0 / 20007.0


@pytest.fixture(scope="module")
def tes():
    return TESModel(TESParams())


def irwin_hilton(p: TESParams, op):
    """Small-signal quantities from Irwin & Hilton (2005), from the TES parameters only."""
    k = p.p_sat_pw * 1e-12 / (p.t_c_k**p.n_exponent - p.t_bath_k**p.n_exponent)
    g = p.n_exponent * k * p.t_c_k ** (p.n_exponent - 1)
    c = p.c_pj_per_k * 1e-12
    r0 = p.r_frac * p.r_n_ohm
    p_j = (p.p_sat_pw - p.p_opt_pw) * 1e-12
    i0 = np.sqrt(p_j / r0)
    li, beta, rl, ind = p.loop_gain, p.beta_i, p.r_shunt_ohm, p.inductance_uh * 1e-6
    tau = c / g
    tau_i = tau / (1 - li)
    tau_el = ind / (rl + r0 * (1 + beta))
    disc = np.sqrt((1 / tau_el - 1 / tau_i) ** 2 - 4 * r0 / ind * li * (2 + beta) / tau + 0j)
    inv_plus = 1 / (2 * tau_el) + 1 / (2 * tau_i) + 0.5 * disc
    inv_minus = 1 / (2 * tau_el) + 1 / (2 * tau_i) - 0.5 * disc
    s_i0 = -1 / (i0 * r0) / (ind / (tau_el * r0 * li) + 1 - rl / r0)
    m = -np.array([[1 / tau_el, li * g / (i0 * ind)], [-i0 * r0 * (2 + beta) / c, 1 / tau_i]])  # d/dt (dI, dT)
    return dict(g=g, tau=tau, tau_plus=1 / inv_plus.real, tau_minus=1 / inv_minus.real, s_i0=s_i0, m=m, c=c, i0=i0, r0=r0)


def ih_pulse_pw(ih, energy_j, t):
    x0 = np.array([0.0, energy_j / ih["c"]])
    step = scipy.linalg.expm(ih["m"] * (t[1] - t[0]))  # uniform grid: propagate exactly, sample by sample
    x = scipy.linalg.expm(ih["m"] * t[0]) @ x0
    di = np.empty(t.size)
    for k in range(t.size):
        di[k] = x[0]
        x = step @ x
    return di / ih["s_i0"] * 1e12


def test_operating_point_matches_reference_numbers(tes):
    op = tes.op
    assert op.g_w_per_k * 1e12 == pytest.approx(33.0, rel=0.02)
    assert op.tau0_s == pytest.approx(0.033, rel=0.05)
    assert op.alpha * op.p_j_w / (op.g_w_per_k * op.t0_k) == pytest.approx(13.0)
    dt, di = tes.rhs(np.array([op.t0_k]), np.array([op.i0_a]))
    assert abs(dt[0]) < 1e-12 and abs(di[0]) < 1e-9  # K/s, A/s: a fixed point
    assert 2e-3 < op.tau_minus_s < 3.2e-3  # effective time constant ~ 2-3 ms
    assert tes.resistance(np.array([op.t0_k]), np.array([op.i0_a]))[0] == pytest.approx(op.r0_ohm, rel=1e-12)


def test_responsivity_and_time_constants_match_irwin_hilton(tes):
    ih = irwin_hilton(tes.params, tes.op)
    assert tes.op.s_i_a_per_w == pytest.approx(ih["s_i0"], rel=1e-9)
    assert tes.op.tau_minus_s == pytest.approx(ih["tau_minus"], rel=1e-6)
    assert tes.op.tau_plus_s == pytest.approx(ih["tau_plus"], rel=1e-6)


def test_small_direct_hit_pulse_height_and_decay(tes):
    ih = irwin_hilton(tes.params, tes.op)
    e = 0.05 * J_PER_KEV
    t_hit = 0.37 * DT
    (j0, pulse), = tes.integrate_clusters([np.array([t_hit])], [np.array([e])], DT)
    t = (j0 + np.arange(pulse.size)) * DT - t_hit
    ref = ih_pulse_pw(ih, e, t[:400])
    assert pulse.max() == pytest.approx(ref.max(), rel=0.10)
    assert np.max(np.abs(pulse[:400] - ref)) < 0.02 * ref.max()
    # decay time from the log-slope of the tail, against Irwin & Hilton's tau_-
    sel = (t > 4 * ih["tau_minus"]) & (t < 12 * ih["tau_minus"])
    slope = np.polyfit(t[sel], np.log(pulse[sel]), 1)[0]
    assert -1 / slope == pytest.approx(ih["tau_minus"], rel=0.10)
    # and the peak is close to E / tau_eff (single-pole limit), reduced by the electrical rise
    assert 0.7 < pulse.max() * 1e-12 * ih["tau_minus"] / e < 1.0


def _budget(tes, e_kev):
    e = e_kev * J_PER_KEV
    t_hit = 0.5 * DT
    (j0, pulse, temp, cur), = tes.integrate_clusters([np.array([t_hit])], [np.array([e])], DT, return_state=True)
    t0 = tes.heat(np.array([tes.t0]), np.array([e]))[0]
    times = np.concatenate([[t_hit], (j0 + np.arange(pulse.size)) * DT])
    temp = np.concatenate([[t0], temp])
    cur = np.concatenate([[tes.i0], cur])
    p_bath = tes.bath_power(temp) - tes.bath_power(np.array([tes.t0]))[0]
    p_joule = cur * cur * tes.resistance(temp, cur) - tes.p_j
    through_bath = np.trapezoid(p_bath, times)
    joule_drop = -np.trapezoid(p_joule, times)
    area = np.trapezoid(np.concatenate([[0.0], pulse]), times) * 1e-12
    return e, through_bath, joule_drop, area, pulse


@pytest.mark.parametrize("e_kev", [0.05, 5.0, 300.0])
def test_energy_bookkeeping(tes, e_kev):
    # C dT/dt = -dP_bath + dP_joule + P_CR, back to T0: the heat injected leaves by the bath or as less Joule power
    e, bath, joule_drop, area, _ = _budget(tes, e_kev)
    assert bath + joule_drop == pytest.approx(e, rel=0.01)
    if e_kev < 1:
        assert area == pytest.approx(e, rel=0.005)  # small signal: the power-equivalent area is the energy
        assert joule_drop / e == pytest.approx(13.0 / 14.0, rel=0.05)  # L / (L + 1) through electro-thermal feedback


def test_large_deposit_is_nonlinear_not_a_scaled_template(tes):
    _, _, _, area_s, small = _budget(tes, 0.05)
    e_big, _, _, area_b, big = _budget(tes, 300.0)
    scale = 300.0 / 0.05
    assert big.max() < 0.1 * scale * small.max()  # saturates
    assert area_b < 0.8 * e_big  # the feedback cannot absorb it: heat leaves through the bath
    bound_pw = (tes.i0 - tes.v / (tes.r_n + tes.r_sh)) / abs(tes.s_i) * 1e12
    assert big.max() <= bound_pw * 1.001  # no more than the drop to the normal-state current
    width = lambda p: np.sum(p > 0.5 * p.max()) * DT
    assert width(big) > 3 * width(small)


def test_cluster_integration_does_not_depend_on_batch(tes):
    times = [np.array([0.0123]), np.array([1.5, 1.5004]), np.array([3.2])]
    energies = [np.array([1.0]) * J_PER_KEV, np.array([20.0, 3.0]) * J_PER_KEV, np.array([0.2]) * J_PER_KEV]
    together = tes.integrate_clusters(times, energies, DT)
    for k in range(3):
        (j0, p), = tes.integrate_clusters([times[k]], [energies[k]], DT)
        assert j0 == together[k][0] and np.array_equal(p, together[k][1])


def test_pileup_linear_for_small_and_nonlinear_for_large(tes):
    for e_kev, linear in [(0.05, True), (40.0, False)]:
        e = e_kev * J_PER_KEV
        ta, tb = 0.2 * DT, 0.2 * DT + 0.004
        (j0, both), = tes.integrate_clusters([np.array([ta, tb])], [np.array([e, e])], DT)
        (ja, a), (jb, b) = tes.integrate_clusters([np.array([ta]), np.array([tb])], [np.array([e]), np.array([e])], DT)
        n = both.size
        s = np.zeros(n + 20000)
        s[ja - j0 : ja - j0 + a.size] += a
        s[jb - j0 : jb - j0 + b.size] += b
        err = np.max(np.abs(both - s[:n])) / both.max()
        assert (err < 0.02) if linear else (err > 0.1)


def test_wafer_hit_is_smaller_slower_and_exactly_discretised(tes):
    wp = WaferPath(tes, WaferThermalParams(), DT)
    e = 100.0 * J_PER_KEV
    t = np.arange(0, 3.0, DT)
    w = wp.impulse_response_pw(t, e)
    d = tes.linear_pulse_pw(e, t[:2000])
    assert w[0] == pytest.approx(0.0, abs=1e-15) and np.all(w[1:] > 0)
    assert w.max() < 0.01 * d.max()  # smaller (wafer heat capacity, weak link)
    assert t[w.argmax()] > 10 * t[d.argmax()]  # rises slower
    width = lambda p: np.sum(p > 0.5 * p.max()) * DT
    assert width(w) > 20 * width(d)  # lasts longer
    # DC: steady wafer heating -> G_bath / G_wafer of it seen as absorbed power
    wt = WaferThermalParams()
    g_wafer = wt.heat_capacity_nj_per_k * 1e-9 / wt.tau_wafer_s
    assert wp.dc_pw_per_w == pytest.approx(tes.g_bath / g_wafer * 1e12, rel=1e-6)
    # the recursive filters reproduce the continuous response at the samples (sub-sample hit time), in pieces
    n = 30000
    t_hit = 123.4567 * DT
    k = int(np.ceil(t_hit / DT))
    phase = k * DT - t_hit
    a = wp.process(n // 3, np.array([k]), np.array([phase]), np.array([e]))
    b = wp.process(n - n // 3, np.array([], dtype=int), np.array([]), np.array([]))
    got = np.concatenate([a, b])
    ref = wp.impulse_response_pw(np.arange(n) * DT - t_hit, e)
    assert np.allclose(got, ref, rtol=1e-9, atol=1e-12 * ref.max())


def test_decimation_keeps_constants_and_is_causal():
    fs, m = 19.0, 1053
    sos = antialias_sos(fs * m, 0.3 * fs)
    assert abs(scipy.signal.sosfreqz(sos, worN=[0.0])[1][0]) == pytest.approx(1.0, abs=1e-12)
    dec = Decimator(sos, m)
    dec.reset(2.5)
    out = dec.process(np.full(40 * m, 2.5))
    assert np.allclose(out, 2.5, rtol=1e-12)
    # from rest, a constant settles on the constant (DC gain 1)
    dec = Decimator(sos, m)
    out = dec.process(np.full(200 * m, 1.0))
    assert out[-1] == pytest.approx(1.0, abs=1e-9)
    # a fast pulse: nothing before it, area kept
    x = np.zeros(100 * m)
    j_hit = 50 * m + 377
    x[j_hit : j_hit + 60] = 1.0
    dec = Decimator(sos, m)
    y = dec.process(x)
    k = np.arange(y.size)
    assert np.all(y[k * m <= j_hit] == 0.0)
    assert y[k * m > j_hit].max() > 0
    area_in = x.sum() / (fs * m)
    assert y.sum() / fs == pytest.approx(area_in, rel=0.05)
    # averaged over hit phases the sampled area is exact
    areas = []
    for ph in np.linspace(0, m, 16, endpoint=False).astype(int):
        x = np.zeros(100 * m)
        x[50 * m + ph : 50 * m + ph + 60] = 1.0
        areas.append(Decimator(sos, m).process(x).sum() / fs)
    assert np.mean(areas) == pytest.approx(area_in, rel=0.005)


def test_decimation_in_pieces_is_identical():
    fs, m = 31.0, 200
    sos = antialias_sos(fs * m, 0.3 * fs)
    x = np.random.default_rng(0).standard_normal((2, 60 * m))
    one = Decimator(sos, m, 2).process(x)
    dec = Decimator(sos, m, 2)
    parts = [dec.process(x[:, a : a + 20 * m]) for a in range(0, 60 * m, 20 * m)]
    assert np.array_equal(one, np.concatenate(parts, axis=1))
    with pytest.raises(ValueError):
        dec.process(np.zeros((2, m + 1)))


def test_bad_tes_parameters():
    with pytest.raises(InputError):
        TESParams(t_bath_k=0.2)
    with pytest.raises(InputError):
        TESParams(r_frac=1.0)
    with pytest.raises(InputError):
        TESParams(p_opt_pw=2.0)
    with pytest.raises(InputError):
        WaferThermalParams(tau_wafer_s=0.0)


def test_linearised_tail_matches_full_nonlinear_integration(tes, monkeypatch):
    import crab.physics.tes as tes_module

    times = [np.array([0.3 * DT]), np.array([0.7 * DT, 0.7 * DT + 0.02])]
    energies = [np.array([2.0]) * J_PER_KEV, np.array([60.0, 5.0]) * J_PER_KEV]
    fast = tes.integrate_clusters(times, energies, DT)
    monkeypatch.setattr(tes_module, "LINEAR_TAIL_EPS", 0.0)  # never switch: nonlinear to the end
    full = tes.integrate_clusters(times, energies, DT)
    for (ja, a), (jb, b) in zip(fast, full):
        n = min(a.size, b.size)
        assert ja == jb and abs(a.size - b.size) <= 64
        assert np.max(np.abs(a[:n] - b[:n])) < 1e-6 * b.max()
