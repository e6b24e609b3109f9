"""The pulse table of the GAN's additive glitches, fitted on training data with and without a truth table.

Synthetic TOD whose glitch shape depends on the height and on the sub-sample
phase of the hit: an exponential decay of ``tau`` samples averaged over each
sample's interval (the area of a hit does not depend on its phase), ``tau``
0.3 samples for hits of area 20-80 and 2 samples for hits of area 200-800,
in white noise of unit RMS.
"""

from __future__ import annotations

import numpy as np
import pytest

from crab.models.dataset import TodSource
from crab.models.glitch_layer.direct_population import fit_direct_hits, pulse_table
from crab.physics.events import EVENT_KIND_DIRECT, EventTable

FS = 19.0
KERNEL = 17
TAUS = (0.3, 2.0)


def _pulse(lags: np.ndarray, phase: float, tau: float) -> np.ndarray:
    """Unit-area samples (lags from the hit's sample) of a decay of ``tau`` samples starting at ``phase``."""
    lo = np.maximum(lags, phase)
    hi = lags + 1.0
    v = np.where(hi > phase, tau * (np.exp(-(lo - phase) / tau) - np.exp(-(hi - phase) / tau)), 0.0)
    return v / tau


def _synthetic(n_events: int = 3000, gap: int = 60, seed: int = 0):
    g = np.random.default_rng(seed)
    n = n_events * gap + 200
    t0 = 100 + np.arange(n_events) * gap + g.uniform(0, gap - 30, n_events)
    big = g.random(n_events) < 0.5
    area = np.where(big, g.uniform(200, 800, n_events), g.uniform(20, 80, n_events))
    x = g.normal(0.0, 1.0, n)
    lags = np.arange(-3, 40)
    for t, a, b in zip(t0, area, big):
        k = int(np.floor(t))
        x[k + lags] += a * _pulse(lags, t - k, TAUS[int(b)])
    return x, t0, area, big


@pytest.fixture(scope="module")
def synthetic():
    return _synthetic()


def test_table_recovers_height_and_phase_dependent_pulses(synthetic):
    """From the true hit times: each band's pulse at each phase within 0.05 (unit-area pulses, peaks
    0.3-0.9; the table is linear in the phase between its 6 phases) of the known one, and the events' areas within 3 %."""
    x, t0, area, big = synthetic
    table, log_centre, areas = pulse_table([x], [t0], KERNEL, n_phases=6, n_bands=2)
    lags = np.arange(KERNEL) - KERNEL // 2
    for b, tau in enumerate(TAUS):
        for j, p in enumerate(np.linspace(0.0, 1.0, 6)):
            assert np.abs(table[b, j] - _pulse(lags, p, tau)).max() < 0.05, (b, j)
    assert np.exp(log_centre) == pytest.approx([np.median(area[~big]), np.median(area[big])], rel=0.05)
    assert np.median(np.abs(areas[0] / area - 1.0)) < 0.03


def test_table_from_detected_glitches_without_truth(synthetic, tmp_path):
    """Without a truth table the hits are the glitch finder's, their phases estimated from the samples
    around the peak: the fast (small) and slow (large) pulses come out per band, and the estimated
    phases resolve the small hits' split between two samples (a table of random phases would give the
    same mixed split at every phase)."""
    x, t0, area, big = synthetic
    src = TodSource(tod=x[None].astype(np.float32), sampling_rate_hz=FS, detectors=["a"], path=tmp_path / "x.h5")
    fit = fit_direct_hits([src], use_truth=False, kernel=KERNEL, n_bands=2, n_phases=6)
    assert fit.source == "detected"
    table = fit.profiles
    lags = np.arange(KERNEL) - KERNEL // 2
    # the tail two samples and more after the largest sample: about 0 for tau 0.3, about 0.3 of the area for tau 2
    for b, tau in enumerate(TAUS):
        truth = np.mean([_pulse(lags, p, tau) for p in np.linspace(0, 1, 6)], axis=0)
        fitted = table[b].mean(axis=0)
        k, kt = int(np.argmax(fitted)), int(np.argmax(truth))
        assert fitted[k + 2 :].sum() == pytest.approx(truth[kt + 2 :].sum(), abs=0.1), b
    # phase resolution of the small, fast hits: the share of the area in the larger of the two samples,
    # from 0.5 (a hit between two samples) to 0.96 (all in one) in truth; the estimated phases are
    # offset by an unknown constant, so only the range is compared
    share = table[0].max(axis=1)
    share_truth = np.array([_pulse(lags, p, TAUS[0]).max() for p in np.linspace(0, 1, 6)])
    assert share.min() == pytest.approx(share_truth.min(), abs=0.1) and share.max() == pytest.approx(share_truth.max(), abs=0.1)


def test_table_from_truth_table(synthetic, tmp_path):
    """fit_direct_hits reads the hits from the truth table and records the table, band centres and areas."""
    x, t0, area, big = synthetic
    ev = EventTable(time_s=t0 / FS, detector=np.zeros(t0.size), charge_z=np.ones(t0.size), energy_kev=np.ones(t0.size), kind=np.full(t0.size, EVENT_KIND_DIRECT))
    src = TodSource(tod=x[None].astype(np.float32), sampling_rate_hz=FS, detectors=["a"], path=tmp_path / "x.h5", events=ev)
    fit = fit_direct_hits([src], use_truth=True, kernel=KERNEL, n_bands=2, n_phases=6)
    assert fit.source == "truth" and fit.profiles.shape == (2, 6, KERNEL)
    assert fit.profiles.sum(axis=2).mean(axis=1) == pytest.approx([1.0, 1.0], rel=1e-6)
    assert np.median(fit.area) == pytest.approx(np.median(area), rel=0.1)


def test_fitted_amplitude_law_draws_the_data_law_and_rate():
    """set_law: the event latents' amplitudes follow the tabulated quantiles, and the share q0 of
    events without a glitch leaves the data's rate; the Pareto law is used before."""
    import math

    import torch

    from crab.models.gan.network import AdditiveGlitches

    m = AdditiveGlitches(n_events=3, kernel=9, threshold=2.5, subsample=True, n_bands=2, n_phases=4)
    assert not m.law_fitted
    g = np.random.default_rng(0)
    data = np.exp(g.normal(1.0, 1.5, 5000))  # a log-normal law: no Pareto tail
    m.set_law(np.log(np.quantile(data, np.linspace(0, 1, m.LAW_POINTS))), zero_fraction=0.7)
    assert m.law_fitted
    z = torch.randn(8_000_000, generator=torch.Generator().manual_seed(1))
    z = z[z.abs() > m.threshold]  # the events
    a = m.amplitudes(z, 50.0, torch.zeros(z.shape[0], dtype=torch.long)).numpy()
    assert np.mean(a == 0) == pytest.approx(0.7, abs=0.01)
    kept = a[a > 0]
    table = np.quantile(data, np.linspace(0, 1, m.LAW_POINTS))
    for q in (0.1, 0.5, 0.9, 0.99):  # ln A linear between the table's quantiles; ~30 000 events drawn
        assert np.quantile(kept, q) == pytest.approx(np.exp(np.interp(q, np.linspace(0, 1, m.LAW_POINTS), np.log(table))), rel=0.04)
    assert kept.max() <= data.max() * (1 + 1e-5)
    # pulses of events without a glitch are zero
    assert torch.all(m.event_pulses(torch.zeros(3), torch.full((3,), 0.5)) == 0)
    assert math.isfinite(float(m.event_pulses(torch.full((1,), 1e-30), None).detach().sum()))


def test_fit_and_generator_interpolate_the_phase_alike():
    """The fit's phase design (the weights its least squares solves for) and the generator's pulse
    interpolation are the same linear interpolation between the table's phases, so a fitted table
    means the same pulses in both."""
    import torch

    from crab.models.gan.network import AdditiveGlitches
    from crab.models.glitch_layer.direct_population import _phase_design

    m = AdditiveGlitches(n_events=1, kernel=9, threshold=2.5, subsample=True, n_bands=1, n_phases=6)
    table = np.random.default_rng(2).normal(size=(1, 6, 9))
    m.set_table(table, [0.0])
    p = np.concatenate([np.linspace(0.0, 1.0, 11), np.random.default_rng(3).random(50)])
    with torch.no_grad():
        gen = m.event_pulses(torch.ones(p.size), torch.from_numpy(p).float()).numpy()
    np.testing.assert_allclose(gen, _phase_design(p, 6) @ table[0], rtol=0, atol=1e-5)
