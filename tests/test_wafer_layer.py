"""The wafer layer: fitted from a truth table, drawn once per wafer, seen by every detector of it."""

from __future__ import annotations

import numpy as np
import pytest

from crab.core.errors import InputError
from crab.models.dataset import TodSource
from crab.models.glitch_layer.population import GlitchPopulation
from crab.models.glitch_layer.shapes import QUANTILE_P, render_response
from crab.models.glitch_layer.wafer import WaferGrouping, WaferLayer, WaferSignal
from crab.models.glitch_layer.wafer_fit import fit_wafer_layer, subtract_wafer_layer
from crab.physics.events import EVENT_KIND_DIRECT, EVENT_KIND_WAFER, EventTable
from crab.physics.noise import highpass

FS = 19.0
TAUS, GAINS, DELAY = [0.3, 0.03, 0.015], [2.0e-3, -3.0e-3, 1.0e-3], 0.06  # per keV
COUPLINGS = [0.9, 1.0, 1.15]


def _pair_correlation(tod: np.ndarray) -> float:
    c = np.corrcoef(highpass(tod.astype(np.float64), FS, 0.02))
    return float(c[np.triu_indices(len(c), 1)].mean())


@pytest.fixture(scope="module")
def wafer_mc():
    """3 detectors, 1200 s: wafer hits (12/s, power-law energies) through a known response and
    couplings, direct hits per detector, white noise; with its truth table."""
    g = np.random.default_rng(5)
    n = int(1200 * FS)
    n_w = g.poisson(12.0 * n / FS)
    tw = np.sort(g.uniform(-20.0, n / FS, n_w))
    ew = 1.0 * (g.pareto(1.5, n_w) + 1.0)
    common = render_response(0, n, tw * FS, ew, TAUS, GAINS, FS, delay_s=DELAY)
    tod = np.array(COUPLINGS)[:, None] * common[None, :] + 2e-3 * g.standard_normal((3, n))
    rows = [("w", t, -1, e) for t, e in zip(tw, ew)]
    for d in range(3):
        td = np.sort(g.uniform(0, n / FS, 60))
        a = 0.05 * (g.pareto(1.0, td.size) + 1.0)
        for t0, a0 in zip(td, a):
            i0 = int(np.ceil(t0 * FS))
            s = np.arange(i0, min(n, i0 + 40)) / FS - t0
            tod[d, i0 : i0 + s.size] += a0 * np.exp(-s / 0.1)
            rows.append(("d", t0, d, a0 * 100.0))
    ev = EventTable(
        time_s=[r[1] for r in rows], detector=[r[2] for r in rows], charge_z=np.ones(len(rows)), energy_kev=[r[3] for r in rows],
        kind=[EVENT_KIND_WAFER if r[0] == "w" else EVENT_KIND_DIRECT for r in rows],
    )
    return tod.astype(np.float32), ev, common, ew[tw >= 0]


def test_fit_recovers_response_couplings_rate_and_energy_law(wafer_mc):
    tod, ev, common, energies = wafer_mc
    layer, pred = fit_wafer_layer(tod, ev, FS)
    pop = layer.population
    assert pop.n_events == energies.size and pop.rate_hz == pytest.approx(energies.size / 1200.0)
    np.testing.assert_allclose(layer.couplings, COUPLINGS, rtol=0.02)
    np.testing.assert_allclose(pop.energy_quantiles_kev, np.quantile(energies, QUANTILE_P))
    # the response: its peak and integral within 3 %, the fitted common signal within 5 % RMS
    s = np.linspace(0.0, 4.0, 4001)
    h_true = sum(a * np.exp(-np.maximum(s - DELAY, 0) / t) * (s >= DELAY) for a, t in zip(GAINS, TAUS))
    h_fit = sum(a * np.exp(-np.maximum(s - pop.delay_s, 0) / t) * (s >= pop.delay_s) for a, t in zip(pop.response_pw_per_kev, pop.response_tau_s))
    assert np.trapezoid(h_fit, s) == pytest.approx(np.trapezoid(h_true, s), rel=0.03)
    assert h_fit.max() == pytest.approx(h_true.max(), rel=0.03)
    c_fit = pred * np.mean(layer.couplings)
    c_true = common * np.mean(COUPLINGS)
    assert np.sqrt(np.mean((c_fit - c_true) ** 2)) < 0.05 * np.sqrt(np.mean(c_true**2))


def test_subtracting_the_layer_removes_the_shared_signal(wafer_mc, tmp_path):
    tod, ev, _, _ = wafer_mc
    src = TodSource(tod=tod, sampling_rate_hz=FS, detectors=["a", "b", "c"], path=tmp_path / "mc.h5", events=ev)
    layer, (res,), note = subtract_wafer_layer([src])
    assert layer is not None and "3 detector(s)" in note
    assert _pair_correlation(tod) > 0.3
    assert abs(_pair_correlation(res.tod)) < 0.02
    # without truth the files are used as they are; a mixture is refused
    plain = TodSource(tod=tod, sampling_rate_hz=FS, detectors=["a", "b", "c"], path=tmp_path / "own.npz")
    none, (same,), note = subtract_wafer_layer([plain])
    assert none is None and same is plain and "no truth table" in note
    with pytest.raises(InputError, match="own.npz has none"):
        subtract_wafer_layer([src, plain])


def test_layer_round_trip_and_checks():
    pop = GlitchPopulation("wafer", 10.0, n_events=5, energy_quantiles_kev=list(np.linspace(1, 2, len(QUANTILE_P))), response_tau_s=[0.3], response_pw_per_kev=[1e-3])
    layer = WaferLayer(pop, couplings=[1.0, 0.5])
    back = WaferLayer.from_dict(layer.to_dict())
    assert back.couplings == [1.0, 0.5] and back.population.response_tau_s == [0.3] and back.coupling(3) == 0.5
    with pytest.raises(InputError):
        WaferLayer(pop, couplings=[float("nan")])
    with pytest.raises(InputError):
        WaferGrouping(0)
    assert WaferGrouping(4).of(9) == (2, 1)
    assert WaferGrouping(4, {9: (7, 0)}).of(9) == (7, 0)
    named = WaferGrouping(4)
    named.assign(WaferGrouping.by_name([11, 12, 13], ["A", "B", "A"]))
    assert named.of(11)[0] == named.of(13)[0] != named.of(12)[0] and named.of(13)[1] == 13


def test_wafer_signal_is_keyed_on_wafer_and_block(wafer_mc):
    tod, ev, _, _ = wafer_mc
    layer, _ = fit_wafer_layer(tod, ev, FS)
    a = WaferSignal(layer.population, FS, 3, "gan_wafer", 512)
    b = WaferSignal(layer.population, FS, 3, "gan_wafer", 512, n_wafers=9)
    whole = np.concatenate([a.signal(2, t) for t in range(6)])
    again = np.concatenate([b.signal(2, t) for t in (5, 4, 3, 2, 1, 0)][::-1])  # other order, other cache
    np.testing.assert_array_equal(whole, again)
    assert not np.array_equal(a.signal(2, 3), a.signal(1, 3))
    # tiles join into one rendering of all hits
    evs = [a.events(2, blk) for blk in range(6)]
    assert np.isnan(evs[0][2]).all()  # a linear population: energies, no decay times
    ref = render_response(0, 6 * 512, np.concatenate([e[0] for e in evs]), np.concatenate([e[1] for e in evs]),
                          layer.population.response_tau_s, layer.population.response_pw_per_kev, FS, delay_s=layer.population.delay_s)
    np.testing.assert_allclose(whole, ref, rtol=0, atol=1e-6 * np.abs(ref).max())  # tails dropped below 1e-7 of a hit


# --------------------------------------------------------------------------- generation
@pytest.fixture(scope="module")
def gan_with_layer(tmp_path_factory, wafer_mc):
    from test_generation import make_model_dir

    from crab.models.gan.store import load_model

    tod, ev, _, _ = wafer_mc
    model = load_model(make_model_dir(tmp_path_factory.mktemp("wafer_model")))
    model.wafer_layer, _ = fit_wafer_layer(tod, ev, FS)
    return model


def test_generated_wafer_is_shared_and_independent_wafers_are_not(gan_with_layer):
    import dataclasses

    from crab.generation import TodGenerator

    n = 8192
    layer = gan_with_layer.wafer_layer
    plain = TodGenerator(dataclasses.replace(gan_with_layer, wafer_layer=None), 4, n_workers=1).generate(64, 0, n)
    gen = TodGenerator(gan_with_layer, 4, n_workers=1)
    assert gen.detector_names(3) == ["W00_D000", "W00_D001", "W00_D002"]
    # 64 detectors (trained on 3): wafers of 3; each detector gets its coupling times its wafer's signal
    added = (gen.generate(64, 0, n) - plain).astype(np.float64)
    shared = added / np.array([layer.coupling(d % 3) for d in range(64)])[:, None]
    assert np.abs(shared[60]).max() > 1e-3
    np.testing.assert_allclose(shared[61], shared[60], rtol=0, atol=1e-6)
    np.testing.assert_allclose(shared[62], shared[60], rtol=0, atol=1e-6)
    assert np.abs(shared[63] - shared[60]).max() > 1e-3
    # with the signal well above the network's output: detectors of one wafer correlate, of wafer size 1 not
    loud = dataclasses.replace(gan_with_layer, wafer_layer=dataclasses.replace(layer, couplings=[30.0 * c for c in layer.couplings]))
    assert _pair_correlation(TodGenerator(loud, 4, n_workers=1).generate(3, 0, 19 * 600)) > 0.3
    indep = TodGenerator(loud, 4, n_workers=1, wafer_size=1)
    assert abs(_pair_correlation(indep.generate(3, 0, 19 * 600))) < 0.05
    assert indep.detector_names(2) == ["W00_D000", "W01_D000"]


def test_wafer_layer_bytes_do_not_depend_on_chunking_start_or_workers(gan_with_layer):
    from crab.generation import TodGenerator

    gen = TodGenerator(gan_with_layer, 9, n_workers=2)
    whole = gen.generate(5, 0, 40000)
    chunks = np.concatenate([c for _, c in TodGenerator(gan_with_layer, 9, n_workers=1).iter_chunks(5, 0, 40000, chunk_samples=7001)], axis=1)
    np.testing.assert_array_equal(whole, chunks)
    np.testing.assert_array_equal(whole[[3, 4], 17000:], gen.generate([3, 4], 17000, 23000))


def test_stored_layer_loads_back(gan_with_layer, tmp_path):
    from crab.models.gan.store import load_model, save_model

    m = gan_with_layer
    save_model(tmp_path, m.generator, m.transform, m.sampling_rate_hz, noise_params=m.noise_params, highpass_hz=m.highpass_hz, wafer_layer=m.wafer_layer.to_dict())
    back = load_model(tmp_path)
    assert back.wafer_layer.couplings == m.wafer_layer.couplings
    from crab.generation import TodGenerator

    np.testing.assert_array_equal(TodGenerator(back, 1, n_workers=1).generate(2, 0, 5000), TodGenerator(m, 1, n_workers=1).generate(2, 0, 5000))


# --------------------------------------------------------------------------- direct hits
@pytest.mark.parametrize("use_truth", [True, False])
def test_direct_fit_recovers_pulse_and_amplitude_law(synthetic_tod, tmp_path, use_truth):
    """Exponential pulses (tau 0.15 s) with Pareto heights (P(A > x) ~ x^-1 above 0.25): recovered
    from the truth table, and from the glitch finder's detections without one."""
    from crab.models.gan.pulses import pareto_law
    from crab.models.glitch_layer.direct_population import fit_direct_hits

    tod, truth = synthetic_tod(n_detectors=2, n_samples=19 * 3000, glitch_rate_hz=0.05, seed=3)
    ev = EventTable(time_s=truth["time_s"], detector=truth["detector"], charge_z=np.ones(truth["time_s"].size),
                    energy_kev=np.ones(truth["time_s"].size), kind=np.full(truth["time_s"].size, EVENT_KIND_DIRECT))
    src = TodSource(tod=tod, sampling_rate_hz=FS, detectors=["a", "b"], path=tmp_path / "x.h5", events=ev if use_truth else None)
    fit = fit_direct_hits([src], use_truth=use_truth, kernel=17, n_bands=2, n_phases=3)
    assert fit.source == ("truth" if use_truth else "detected")
    assert np.median(fit.tau_quantiles_s([0.5])) == pytest.approx(0.15, rel=0.1)
    x_med, alpha = pareto_law(fit.amplitude)
    # detections miss the heights near the threshold (5 sigma = 0.25): a higher median
    assert x_med == pytest.approx(np.median(truth["amplitude"]), rel=0.1 if use_truth else 0.3)
    assert alpha == pytest.approx(1.0, rel=0.2)
    # the mean pulse at phase 1/2 (unit area): nothing before the hit, then the exponential decay of 0.15 s (2.85 samples)
    pulse = fit.profiles[1, 1]  # lags -8 .. 8, time order
    assert fit.profiles[1].sum(axis=1).mean() == pytest.approx(1.0, rel=1e-6) and abs(pulse[:8]).max() < 0.1 * pulse.max()
    k = int(np.argmax(pulse))
    assert pulse[k + 3] / pulse[k] == pytest.approx(np.exp(-3 / (0.15 * FS)), abs=0.08)


def test_litebird_bridge_shares_hits_by_wafer_name(gan_with_layer):
    import dataclasses

    from crab.generation import TodGenerator
    from crab.integrations.litebird import CosmicRayParams, _add_block

    names = ["det_a1", "det_b1", "det_a2"]
    params = CosmicRayParams(wafers={"det_a1": "A", "det_a2": "A", "det_b1": "B"}, n_workers=1)
    out = np.zeros((3, 6000), np.float32)
    _add_block(out, names, TodGenerator(gan_with_layer, 5, n_workers=1), 1000, params, ["A", "B", "A"])
    plain = np.zeros((3, 6000), np.float32)
    _add_block(plain, names, TodGenerator(dataclasses.replace(gan_with_layer, wafer_layer=None), 5, n_workers=1), 1000, params)
    from crab.core.rng import detector_key

    layer = gan_with_layer.wafer_layer
    shared = (out - plain).astype(np.float64) / np.array([layer.coupling(detector_key(n)) for n in names])[:, None]
    np.testing.assert_allclose(shared[2], shared[0], rtol=0, atol=1e-6)
    assert np.abs(shared[1] - shared[0]).max() > 1e-3


def test_cli_wafer_size_groups_detectors(gan_with_layer, tmp_path):
    from crab.cli import main
    from crab.io.tod import read_tod
    from crab.models.gan.store import save_model

    m = gan_with_layer
    (tmp_path / "m").mkdir()
    save_model(tmp_path / "m", m.generator, m.transform, m.sampling_rate_hz, noise_params=m.noise_params, highpass_hz=m.highpass_hz, wafer_layer=m.wafer_layer.to_dict())
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(tmp_path / "m"), "--duration", "100", "--detectors", "4", "--wafer-size", "2", "--seed", "3", "--out", str(tmp_path / "x.h5"), "--no-progress"])
    assert e.value.code == 0
    assert read_tod(tmp_path / "x.h5").meta.detectors == ["W00_D000", "W00_D001", "W01_D000", "W01_D001"]


# --------------------------------------------------------------------------- training
def test_training_fits_the_layer_with_truth_and_goes_without(wafer_mc, tmp_path):
    """A file with a truth table gets the wafer layer (and the network sees the TOD without it);
    one detector and no truth table (a user's own TOD) trains and generates without one."""
    from test_training import SMALL_MODEL, TINY

    from crab.generation import TodGenerator
    from crab.models.gan.config import TrainConfig
    from crab.models.gan.store import load_model
    from crab.models.gan.training import train

    tod, ev, _, _ = wafer_mc
    n = 19 * 240
    with_truth = TodSource(tod=tod[:, :n], sampling_rate_hz=FS, detectors=["a", "b", "c"], path=tmp_path / "mc.h5", events=ev.select(ev.time_s < n / FS))
    res = train([with_truth], tmp_path / "m1", TrainConfig(**TINY), SMALL_MODEL, progress=False)
    layer = load_model(tmp_path / "m1").wafer_layer
    assert layer is not None and layer.n_detectors == 3 and layer.population.rate_hz == pytest.approx(12.0, rel=0.15)
    assert abs(_pair_correlation(np.concatenate([s for s in res.data.train], axis=0))) < 0.05  # what the network learns
    own = TodSource(tod=tod[:1, :n], sampling_rate_hz=FS, detectors=["mine"], path=tmp_path / "own.npz")
    train([own], tmp_path / "m2", TrainConfig(**TINY), SMALL_MODEL, progress=False)
    m2 = load_model(tmp_path / "m2")
    assert m2.wafer_layer is None and "no truth table" in m2.extra["wafer_layer_note"]
    assert TodGenerator(m2, 1, n_workers=1).generate(5, 0, 2000).shape == (5, 2000)


def test_energy_lookup_matches_quantile_interpolation():
    """sample_energy (a lookup on a uniform probability grid between 0.01 and 0.99) equals the log-linear
    interpolation of the quantiles: to 1e-9 away from the quantile knots, 1e-3 next to them."""
    from crab.models.glitch_layer.population import ENERGY_GRID

    q = np.exp(np.sort(np.random.default_rng(0).normal(6.0, 2.0, len(QUANTILE_P))))
    pop = GlitchPopulation("wafer", 15.0, energy_quantiles_kev=list(q), response_tau_s=[0.3], response_pw_per_kev=[1e-3])
    u = np.random.default_rng(1).random(200_000)
    exact = np.exp(np.interp(u, QUANTILE_P, np.log(q)))
    rel = np.abs(pop.sample_energy(u) / exact - 1.0)
    near_knot = np.min(np.abs(u[:, None] - np.asarray(QUANTILE_P)[None, :]), axis=1) < 1.0 / ENERGY_GRID
    assert rel[~near_knot].max() < 1e-9 and rel.max() < 1e-3
    assert pop.sample_energy(np.array([0.0]))[0] == pytest.approx(q[0])
