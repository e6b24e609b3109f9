"""The Monte Carlo chain: reproducibility, chunking, rates, common-mode wafer hits, files."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from crab.core.errors import InputError
from crab.io.montecarlo_file import simulate_to_file
from crab.io.tod import read_tod
from crab.physics.events import EventTable
from crab.physics.montecarlo import MonteCarloSimulator, simulate, simulate_hits
from crab.physics.montecarlo_config import MonteCarloConfig
from crab.physics.tes import J_PER_KEV

FS = 19.0


def _hits(times, dets, energies_kev):
    dets = np.asarray(dets)
    return EventTable(time_s=times, detector=dets, charge_z=np.ones(len(dets)), energy_kev=energies_kev, kind=(dets < 0).astype(np.uint8))


def test_same_seed_same_bytes_other_seed_differs():
    cfg = MonteCarloConfig(n_detectors=2)
    a, ea, _ = simulate(cfg, 40.0, 5)
    b, eb, _ = simulate(cfg, 40.0, 5)
    c, _, _ = simulate(cfg, 40.0, 6)
    assert a.dtype == np.float32 and a.shape == (2, 40 * 19)
    assert a.tobytes() == b.tobytes()
    assert np.array_equal(ea.time_s, eb.time_s) and np.array_equal(ea.energy_kev, eb.energy_kev)
    assert not np.array_equal(a, c)


def test_1800s_in_one_go_or_in_chunks_is_identical():
    cfg = MonteCarloConfig(n_detectors=1)
    one, ev_one, _ = simulate(cfg, 1800.0, 1)
    # a simulator continued over consecutive calls with irregular chunk sizes
    sim = MonteCarloSimulator(cfg, 1)
    out = list(sim.run(600.0, chunk_s=45.3)) + list(sim.run(1200.0, chunk_s=317.0))
    assert np.concatenate([t for t, _ in out], axis=1).tobytes() == one.tobytes()
    ev_chunked = EventTable.concatenate([e for _, e in out])
    for col in ("time_s", "detector", "energy_kev", "kind", "charge_z"):
        assert np.array_equal(getattr(ev_one, col), getattr(ev_chunked, col))
    assert np.all(np.diff(ev_one.time_s) >= 0) and ev_one.time_s.max() < 1800.0


def test_segmentation_batching_and_length_do_not_change_the_result():
    cfg = MonteCarloConfig(n_detectors=1)
    a, _, _ = simulate(cfg, 120.0, 2)
    other = dataclasses.replace(cfg, segment_s=20.0, pulse_batch_s=40.0)
    b, _, _ = simulate(other, 240.0, 2)
    assert a.tobytes() == b[:, : a.shape[1]].tobytes()


def test_rates_species_and_visibility_of_hits():
    cfg = MonteCarloConfig()
    duration = 400.0
    tod, ev, meta = simulate(cfg, duration, 3)
    assert meta.config["phi_gv"] == 0.6 and meta.seed == 3 and len(meta.detectors) == 4
    direct = ev.select(ev.kind == 0)
    wafer = ev.select(ev.kind == 1)
    rates = np.bincount(direct.detector, minlength=4) / duration
    assert np.all((rates > 0.05) & (rates < 1.0))  # a direct hit every few seconds per detector
    assert len(wafer) / duration > 5.0  # the wafer sees many more
    assert np.all(wafer.detector == -1) and set(np.unique(wafer.charge_z)) >= {1, 2}
    # typical direct hits stand out of the noise: median peak above 10 sigma
    sigma = 1.4826 * np.median(np.abs(np.diff(tod[0]) - np.median(np.diff(tod[0])))) / np.sqrt(2)
    white = cfg.noise.white_rms(FS)
    assert 0.8 * white < sigma < 1.6 * white
    base = np.median(tod, axis=1)
    peaks = []
    for t, d in zip(direct.time_s, direct.detector):
        k = int(np.ceil(t * FS))
        if k + 4 < tod.shape[1]:
            peaks.append(tod[d, k : k + 4].max() - base[d])
    assert np.median(peaks) > 10 * sigma


def test_known_direct_hit_energy_bookkeeping_and_causality():
    cfg = MonteCarloConfig(n_detectors=2, add_noise=False)
    rng = np.random.default_rng(0)
    times = 5.0 + 5.0 * np.arange(20) + rng.random(20) / FS  # random phases
    e_kev = 0.1
    tod = simulate_hits(cfg, _hits(times, np.zeros(20, int), np.full(20, e_kev)), 110.0).astype(np.float64)
    assert np.all(tod[1] == 0.0)  # the other detector sees nothing
    k_first = int(np.floor(times[0] * FS))
    assert np.all(tod[0, : k_first + 1] == 0.0)  # nothing before the first hit (no acausal leakage)
    areas = [tod[0, int(t * FS) - 1 : int(t * FS) + 60].sum() / FS for t in times]
    assert np.mean(areas) * 1e-12 == pytest.approx(e_kev * J_PER_KEV, rel=0.01)  # heat injected = energy deposited


def test_wafer_hit_on_every_detector_smaller_and_slower_than_direct():
    cfg = MonteCarloConfig(n_detectors=4, add_noise=False)
    e = 100.0
    wafer = simulate_hits(cfg, _hits([10.3], [-1], [e]), 30.0).astype(np.float64)
    direct = simulate_hits(cfg, _hits([10.3], [2], [e]), 30.0).astype(np.float64)
    assert wafer[0].max() > 0
    for d in range(1, 4):
        assert np.array_equal(wafer[d], wafer[0])  # common mode, at once
    assert np.all(direct[[0, 1, 3]] == 0)
    w, s = wafer[0], direct[2]
    assert w.max() < 0.05 * s.max()  # smaller
    assert np.argmax(w) > np.argmax(s)  # peaks later
    assert np.sum(w > 0.1 * w.max()) > 3 * np.sum(s > 0.1 * s.max())  # lasts longer
    assert np.nonzero(w)[0][0] == np.nonzero(s)[0][0]  # both start at the first sample after the hit


def test_baseline_is_zero_without_hits_and_noise_has_its_level():
    cfg = MonteCarloConfig(n_detectors=2, add_noise=False)
    assert np.all(simulate_hits(cfg, EventTable(), 60.0) == 0.0)
    noisy = simulate_hits(dataclasses.replace(cfg, add_noise=True), EventTable(), 600.0)
    assert np.std(np.diff(noisy[0])) / np.sqrt(2) == pytest.approx(cfg.noise.white_rms(FS), rel=0.1)


def test_config_roundtrip_through_json():
    cfg = MonteCarloConfig(n_detectors=3, phi_gv=1.1, sampling_rate_hz=31.0)
    back = MonteCarloConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    with pytest.raises(InputError, match="unknown"):
        MonteCarloConfig.from_dict({**cfg.to_dict(), "bogus": 1})


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(n_detectors=0), "detectors"),
        (dict(sampling_rate_hz=30000.0), "above the internal"),
        (dict(sampling_rate_hz=-1.0), "sampling rate"),
        (dict(internal_rate_hz=500.0), "internal rate"),
        (dict(n_detectors=100), "do not fit"),
        (dict(phi_gv=-0.2), "phi"),
    ],
)
def test_bad_configurations_raise_input_errors(kw, match):
    with pytest.raises(InputError, match=match):
        MonteCarloSimulator(MonteCarloConfig(**kw), 0)


@pytest.mark.parametrize("duration", [-5.0, 0.0, float("nan"), 0.01])
def test_bad_durations(duration):
    sim = MonteCarloSimulator(MonteCarloConfig(n_detectors=1), 0)
    with pytest.raises(InputError):
        next(sim.run(duration))


def test_simulate_to_file_matches_memory_and_is_atomic(tmp_path, monkeypatch):
    cfg = MonteCarloConfig(n_detectors=2)
    out = simulate_to_file(cfg, 100.0, 4, tmp_path / "mc.h5", chunk_s=30.0, progress=False)
    f = read_tod(out)
    tod, ev, _ = simulate(cfg, 100.0, 4)
    assert f.tod.tobytes() == tod.tobytes()
    assert np.array_equal(f.events.time_s, ev.time_s) and np.array_equal(f.events.energy_kev, ev.energy_kev)
    assert f.meta.kind == "montecarlo" and f.meta.seed == 4 and f.meta.units == "pW"
    assert MonteCarloConfig.from_dict(f.meta.config) == cfg
    with pytest.raises(InputError, match="exists"):
        simulate_to_file(cfg, 10.0, 4, out, progress=False)

    calls = {"n": 0}
    original = MonteCarloSimulator._render_segment

    def failing(self):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("killed")
        return original(self)

    monkeypatch.setattr(MonteCarloSimulator, "_render_segment", failing)
    with pytest.raises(RuntimeError):
        simulate_to_file(cfg, 200.0, 4, tmp_path / "broken.h5", chunk_s=50.0, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mc.h5"]
