"""The glitch detector: efficiency, false alarms, features, merging, coincidences."""

from __future__ import annotations

import numpy as np
import pytest

from crab.core.errors import InputError
from crab.analysis.glitches import (
    GlitchDetectorConfig,
    accidental_coincidence_rate_hz,
    baseline_subtract,
    detect_glitches,
    find_coincidences,
    running_median,
    wafer_of,
)

FS = 19.0


def _white(n_det: int, n: int, sigma: float = 1.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, sigma, (n_det, n))


def test_running_median_keeps_edges_and_constants():
    x = np.full(100, 3.0)
    assert np.allclose(running_median(x, 21), 3.0)
    ramp = np.arange(200, dtype=float)
    med = running_median(ramp, 11)
    assert np.allclose(med, ramp)  # a ramp is its own running median, edges included


def test_no_false_alarms_on_noise(synthetic_tod):
    tod, _ = synthetic_tod(n_detectors=2, n_samples=int(FS * 3600), glitch_rate_hz=0.0, seed=3)
    g = detect_glitches(tod, FS)
    # P(> 5 sigma) ~ 3e-7 per sample: ~0.04 expected in 1.4e5 samples
    assert len(g) <= 1
    _, _, sigma = baseline_subtract(tod, FS)
    assert np.allclose(sigma, 0.05, rtol=0.1)  # make_synthetic_tod's noise RMS


def test_efficiency_amplitude_and_decay(synthetic_tod):
    tod, truth = synthetic_tod(n_detectors=2, n_samples=int(FS * 1200), glitch_rate_hz=0.05, tau_s=0.15, seed=1)
    g = detect_glitches(tod, FS)
    sigma = g.sigma.mean()
    t, d, a = truth["time_s"], truth["detector"], truth["amplitude"]
    # isolated, large glitches (no other within 3 s on the same detector)
    iso = np.array([np.sum((d == d[i]) & (np.abs(t - t[i]) < 3.0)) == 1 for i in range(len(t))])
    big = iso & (a > 10 * sigma)
    assert big.sum() > 20
    found, ratios = 0, []
    for ti, di, ai in zip(t[big], d[big], a[big]):
        m = (g.detector == di) & (np.abs(g.peak_time_s - ti) <= 2.0 / FS)
        if m.any():
            found += 1
            ratios.append(g.amplitude[m][0] / ai)
    assert found / big.sum() >= 0.95
    # the peak sample lies 0..1 sample after the hit: amplitude in [exp(-1/(fs tau)), 1] x truth, plus noise
    ratios = np.array(ratios)
    assert np.all(ratios > 0.6) and np.all(ratios < 1.1)
    dec = g.decay_time_s[g.amplitude_sigma > 30]
    assert np.nanmedian(dec) == pytest.approx(0.15, rel=0.15)
    # integral of a sampled exponential ~ amplitude * (tau + dt/2)
    sel = (g.amplitude_sigma > 50) & np.isfinite(g.decay_time_s)
    assert np.median(g.integral[sel] / g.amplitude[sel]) == pytest.approx(0.15 + 0.5 / FS, rel=0.25)


def test_merging_and_separation():
    x = np.zeros((1, 400)) + _white(1, 400, 0.01, seed=5)
    x[0, 100] = 1.0
    x[0, 101] = 0.02  # dips under threshold for one sample
    x[0, 102] = 0.5  # same glitch (merge gap 2)
    x[0, 300] = 1.0  # another glitch
    g = detect_glitches(x, FS, GlitchDetectorConfig(merge_gap_samples=2))
    assert list(g.peak_index) == [100, 300]
    g0 = detect_glitches(x, FS, GlitchDetectorConfig(merge_gap_samples=0))
    assert list(g0.peak_index) == [100, 102, 300]


def test_negative_excursions_are_not_glitches():
    x = _white(1, 2000, 1.0, seed=2)
    x[0, 500] -= 50.0
    assert len(detect_glitches(x, FS)) == 0


def test_unresolved_decay_is_nan():
    x = _white(1, 1000, 0.01, seed=4)
    x[0, 400] += 1.0  # one sample only
    g = detect_glitches(x, FS)
    assert len(g) == 1 and np.isnan(g.decay_time_s[0])


def test_coincidences_across_a_wafer():
    n = int(FS * 600)
    x = _white(4, n, 1.0, seed=7)
    common = [1000, 4000, 7000]
    for c in common:
        x[:3, c] += 40.0  # detectors 0-2: common-mode hit
    x[3, 2000] += 40.0  # detector 3 alone
    x[0, 9000] += 40.0
    g = detect_glitches(x, FS)
    co = find_coincidences(g, 0.2)
    assert co.n_coincident == 3
    assert sorted(co.multiplicity[co.multiplicity >= 2]) == [3, 3, 3]
    # split into two wafers: detector 0 alone on W01 -> coincidences now 2-fold
    wafers = wafer_of(["W01_D0", "W00_D1", "W00_D2", "W00_D3"])
    assert list(wafers) == [0, 1, 1, 1]
    co2 = find_coincidences(g, 0.2, wafers)
    assert co2.n_coincident == 3 and set(co2.multiplicity[co2.multiplicity >= 2]) == {2}


def test_accidental_rate_formula():
    assert accidental_coincidence_rate_hz(np.array([1.0, 1.0]), 0.1) == pytest.approx(0.2)


def test_bad_inputs():
    with pytest.raises(InputError):
        detect_glitches(np.zeros((1, 2)), FS)
    with pytest.raises(InputError):
        detect_glitches(np.zeros((1, 100)), 0.0)
    with pytest.raises(InputError):
        GlitchDetectorConfig(threshold_sigma=0)
