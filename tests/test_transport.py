"""Bethe-Bloch stopping power and continuous slowing down through the shield."""

from __future__ import annotations

import numpy as np
import pytest

from crab.core.errors import InputError
from crab.physics.transport import (
    SILICON,
    ShieldConfig,
    range_table,
    residual_energy_mev,
    stopping_power_mev_cm2_g,
    transport_through_shield,
)

#: Reference mean loss of a minimum-ionising particle in silicon (eV/um), physics reference.
MIP_SI_EV_PER_UM = 388.0


def test_minimum_ionising_proton_in_silicon():
    e = np.geomspace(100.0, 1e6, 4000)  # MeV
    s = stopping_power_mev_cm2_g(e, 1, 1, SILICON)
    ev_per_um = s.min() * SILICON.density_g_cm3 * 1e2  # MeV cm^2/g * g/cm^3 -> MeV/cm -> eV/um
    assert ev_per_um == pytest.approx(MIP_SI_EV_PER_UM, rel=0.10)
    # minimum near beta*gamma ~ 3-4, i.e. a kinetic energy of 2-3 GeV for a proton
    assert 1500 < e[s.argmin()] < 4000


@pytest.mark.parametrize("z,a", [(2, 4), (8, 16), (26, 56)])
def test_stopping_power_scales_as_z_squared(z, a):
    t_per_n = np.array([300.0, 1000.0, 10000.0])  # MeV/n, same velocity as the proton
    s_ion = stopping_power_mev_cm2_g(t_per_n * a, z, a, SILICON)
    s_p = stopping_power_mev_cm2_g(t_per_n * 938.272 / 931.494, 1, 1, SILICON)
    assert np.allclose(s_ion / s_p, z * z, rtol=0.02)


def test_proton_stopping_and_ranges_against_pstar():
    # NIST PSTAR: protons in silicon, 10 MeV: 34.6 MeV cm2/g; CSDA ranges in aluminium
    assert stopping_power_mev_cm2_g(10.0, 1, 1, SILICON) == pytest.approx(34.6, rel=0.05)
    al = range_table(1, 1, "aluminium")
    assert al.range_g_cm2(np.array([10.0]))[0] == pytest.approx(0.170, rel=0.10)
    assert al.range_g_cm2(np.array([100.0]))[0] == pytest.approx(9.98, rel=0.10)
    si = range_table(1, 1, "silicon")
    assert si.range_g_cm2(np.array([1.0]))[0] / SILICON.density_g_cm3 * 1e4 == pytest.approx(16.0, rel=0.25)  # um
    # table inversion
    e = np.geomspace(0.01, 1e5, 50)
    assert np.allclose(si.energy_mev(si.range_g_cm2(e)), e, rtol=1e-6)


def test_thin_layer_loss_is_stopping_power_times_thickness():
    x = 1e-4  # g/cm2
    e = np.array([50.0, 500.0, 5000.0])
    loss = e - residual_energy_mev(e, x, 1, 1, "silicon")
    assert np.allclose(loss, stopping_power_mev_cm2_g(e, 1, 1, SILICON) * x, rtol=1e-3)


def test_shield_stops_slow_particles_and_slows_the_others():
    shield = ShieldConfig(areal_density_g_cm2=2.0)
    e = np.array([5.0, 20.0, 40.0, 60.0, 200.0, 2000.0, 40.0 * 4])
    z = np.array([1, 1, 1, 1, 1, 1, 2])
    a = np.array([1, 1, 1, 1, 1, 1, 4])
    out = transport_through_shield(e, z, a, shield)
    assert np.all(out[:3] == 0)  # stopped: dropped by the caller
    assert np.all((out[3:6] > 0) & (out[3:6] < e[3:6]))
    # helium at 40 MeV/n: range = (A/Z^2) x proton range at the same velocity = the proton's: stopped too
    assert out[-1] == 0
    # a 2 GeV proton loses about S * x
    assert e[5] - out[5] == pytest.approx(stopping_power_mev_cm2_g(2000.0, 1, 1, "aluminium") * 2.0, rel=0.02)
    # no shield: unchanged
    assert np.array_equal(transport_through_shield(e, z, a, ShieldConfig(0.0)), e)
    # a thicker shield stops more
    out2 = transport_through_shield(e, z, a, ShieldConfig(5.0))
    assert np.all(out2 <= out)
    with pytest.raises(InputError):
        ShieldConfig(-1.0)
    with pytest.raises(InputError):
        ShieldConfig(1.0, material="lead")
