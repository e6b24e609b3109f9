"""Template baseline: fit on Monte Carlo truth, counter-based seam-free generation, JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_synthetic_tod

from crab.core.errors import FileFormatError, ModelCompatibilityError
from crab.generation import TodGenerator
from crab.models.template import TemplateSource, fit_template, fit_template_file, load_template, save_template
from crab.models.glitch_layer.shapes import render_events, render_glitches, render_response
from crab.io.tod import EventTable, TodMetadata, default_detector_names, write_tod

FS = 19.0


def _truth_table(truth: dict, wafer_times=()) -> EventTable:
    n, w = len(truth["time_s"]), len(wafer_times)
    return EventTable(
        time_s=np.concatenate([truth["time_s"], wafer_times]),
        detector=np.concatenate([truth["detector"], -np.ones(w)]),
        charge_z=np.ones(n + w),
        energy_kev=np.concatenate([truth["amplitude"], np.ones(w)]),
        kind=np.concatenate([np.zeros(n), np.ones(w)]),
    )


@pytest.fixture(scope="module")
def mc():
    """Synthetic 'Monte Carlo': direct glitches (tau 0.15 s) plus common-mode wafer glitches (tau 0.6 s)."""
    tod, truth = make_synthetic_tod(n_detectors=2, n_samples=int(FS * 7200), glitch_rate_hz=0.1, seed=3)
    g = np.random.default_rng(9)
    wafer_t = np.sort(g.uniform(0, 7200, 300))
    t = np.arange(tod.shape[1]) / FS
    for t0 in wafer_t:
        i0 = int(np.ceil(t0 * FS))
        seg = t[i0 : i0 + 60] - t0
        tod[:, i0 : i0 + seg.size] += (0.5 * np.exp(-seg / 0.6)).astype(np.float32)
    return tod, truth, _truth_table(truth, wafer_t)


@pytest.fixture(scope="module")
def model(mc):
    tod, _, events = mc
    return fit_template(tod, events, FS)


def test_fit_recovers_rates_shapes_and_noise(mc, model):
    tod, truth, _ = mc
    assert model.direct.rate_hz == pytest.approx(len(truth["time_s"]) / (2 * 7200), rel=1e-9)
    assert model.wafer.rate_hz == pytest.approx(300 / 7200, rel=1e-9)
    p = np.asarray(model.direct.tau_quantiles_s)
    assert np.interp(0.5, np.linspace(0, 1, len(p)), np.sort(p)) == pytest.approx(0.15, rel=0.15)
    amp_med = np.quantile(model.direct.amplitude_quantiles, 0.5)
    assert amp_med == pytest.approx(np.median(truth["amplitude"]), rel=0.3)
    # wafer hits: one linear response per keV (here 0.5 exp(-t / 0.6) per 1-keV hit), fitted on all events at once
    w = model.wafer
    assert w.linear and w.n_events == 300
    s = np.linspace(0.0, 3.0, 301)
    h = sum(a * np.exp(-np.maximum(s - w.delay_s, 0) / tau) * (s >= w.delay_s) for a, tau in zip(w.response_pw_per_kev, w.response_tau_s))
    assert h.max() == pytest.approx(0.5, rel=0.1)
    assert np.trapezoid(h, s) == pytest.approx(0.5 * 0.6 * (1 - np.exp(-3 / 0.6)), rel=0.1)
    assert np.allclose(w.energy_quantiles_kev, 1.0)
    true_asd = 0.05 / np.sqrt(FS / 2)
    assert model.noise_params.white_asd == pytest.approx(true_asd, rel=0.15)


def test_generated_rates_and_common_wafer_hits(model):
    from crab.models.glitch_layer.wafer import WaferGrouping

    src = TemplateSource(model, 1, block_samples=4096, grouping=WaferGrouping(8))
    ev = [src.events(0, b) for b in range(200)]
    direct = sum(int(np.sum(~e["wafer"])) for e in ev)
    wafer = sum(int(np.sum(e["wafer"])) for e in ev)
    duration = 200 * 4096 / FS
    for n, rate in ((direct, model.direct.rate_hz), (wafer, model.wafer.rate_hz)):
        assert abs(n - rate * duration) < 5 * np.sqrt(rate * duration)
    # wafer hits are common to every detector; direct hits are not
    w0 = np.concatenate([e["t"][e["wafer"]] for e in ev])
    w1 = np.concatenate([src.events(7, b)["t"][src.events(7, b)["wafer"]] for b in range(200)])
    assert np.array_equal(w0, w1)
    assert not np.array_equal(src.events(0, 3)["t"], src.events(7, 3)["t"])
    # a detector of another wafer (key 8: wafer 1) sees other wafer hits
    w8 = np.concatenate([src.events(8, b)["t"][src.events(8, b)["wafer"]] for b in range(200)])
    assert w8.size > 0 and not np.array_equal(w0[: w8.size], w8[: w0.size])


def test_glitches_straddling_blocks_continue_exactly(model):
    src = TemplateSource(model, 4, block_samples=256)
    n_blocks = 400
    parts = np.concatenate([src.glitches(0, t) for t in range(n_blocks)])
    ev = [src.events(0, b) for b in range(n_blocks)]
    cat = {k: np.concatenate([e[k] for e in ev]) for k in ev[0]}
    whole = sum(pop.render(0, n_blocks * 256, *(cat[k][cat["wafer"] == is_w] for k in ("t", "c2", "tau_s")), FS) for pop, is_w in ((model.direct, False), (model.wafer, True)))
    np.testing.assert_allclose(parts, whole, rtol=0, atol=1e-6 * np.abs(whole).max())
    # at least one event really straddles a block boundary
    i0 = np.ceil(cat["t"]).astype(int)
    assert np.sum((i0 % 256) > 240) > 5


def test_render_matches_the_continuous_templates():
    """Exact sub-sample timing, rise, delay and peak normalisation of both renderers."""
    t0, tau, rise, delay = 10.37, 0.2, 0.03, 0.05
    y = render_events(0, 40, np.array([t0]), np.array([2.0]), np.array([tau]), FS, rise_s=rise, delay_s=delay)
    s = np.arange(40) / FS - t0 / FS - delay
    expect = np.where(s >= 0, np.exp(-np.maximum(s, 0) / tau) - np.exp(-np.maximum(s, 0) / rise), 0.0)
    expect *= 2.0 / (np.exp(-np.linspace(0, 1, 200001) / tau) - np.exp(-np.linspace(0, 1, 200001) / rise)).max()
    np.testing.assert_allclose(y, expect, rtol=1e-9, atol=1e-12)
    # the linear response: E sum_j a_j exp(-s / tau_j), through recursive filters
    r = render_response(0, 40, np.array([t0]), np.array([3.0]), [0.3, 0.03], [1.0, -1.0], FS, delay_s=delay)
    expect = np.where(s >= 0, 3.0 * (np.exp(-np.maximum(s, 0) / 0.3) - np.exp(-np.maximum(s, 0) / 0.03)), 0.0)
    np.testing.assert_allclose(r, expect, rtol=1e-9, atol=1e-12)
    # TOAST's template (no rise, no delay) through the compatibility name
    np.testing.assert_allclose(render_glitches(0, 40, np.array([t0]), np.array([2.0]), np.array([tau]), FS), 2.0 * np.where(s + delay >= 0, np.exp(-np.maximum(s + delay, 0) / tau), 0.0), rtol=1e-9)


def test_wafer_gain_is_not_biased_by_pile_up():
    """15 wafer hits/s piling up: the regression recovers the response that a per-event amplitude fit would overestimate."""
    g = np.random.default_rng(4)
    n, dur = int(FS * 1800), 1800.0
    tw = np.sort(g.uniform(0, dur, int(15 * dur)))
    e = np.exp(g.normal(np.log(300.0), 1.0, tw.size))
    true_tau, true_coef = [0.3, 0.04], [4e-8, -4e-8]
    sig = render_response(0, n, tw * FS, e, true_tau, true_coef, FS, delay_s=0.05)
    tod = (sig[None, :] + 2e-5 * g.standard_normal((2, n))).astype(np.float32)
    ev = EventTable(time_s=tw, detector=-np.ones(tw.size), charge_z=np.ones(tw.size), energy_kev=e, kind=np.ones(tw.size))
    m = fit_template(tod, ev, FS)
    s = np.linspace(0, 2, 2001)
    h = lambda taus, coefs, d: sum(a * np.exp(-np.maximum(s - d, 0) / t) * (s >= d) for a, t in zip(coefs, taus))  # noqa: E731
    ref = h(true_tau, true_coef, 0.05)
    fit = h(m.wafer.response_tau_s, m.wafer.response_pw_per_kev, m.wafer.delay_s)
    assert fit.max() == pytest.approx(ref.max(), rel=0.03)
    assert np.trapezoid(fit, s) == pytest.approx(np.trapezoid(ref, s), rel=0.03)
    assert m.wafer.rate_hz == pytest.approx(tw.size / dur)
    # the noise is fitted with the wafer model removed: no confusion noise counted twice
    asd = np.sqrt(m.noise_params.psd(np.array([0.1, 1.0, 5.0])))
    np.testing.assert_allclose(asd, 2e-5 / np.sqrt(FS / 2), rtol=0.2)


def test_same_bytes_for_chunks_start_and_order(model):
    gen = TodGenerator(model, 5)
    T = gen.tile_samples
    n = 3 * T + 1234
    ref = gen.generate(2, 0, n)
    for chunk_tiles in (1, 7, 64):
        parts = [c for _, c in gen.iter_chunks(2, 0, n, chunk_samples=chunk_tiles * T // 64 + 17)]
        assert np.array_equal(np.concatenate(parts, axis=1), ref), chunk_tiles
    assert np.array_equal(gen.generate(2, T - 50, 3000), ref[:, T - 50 : T + 2950])
    assert np.array_equal(TodGenerator(model, 5, n_workers=1).generate([1], 0, n)[0], ref[1])
    assert not np.array_equal(TodGenerator(model, 6).generate(2, 0, 5000), ref[:, :5000])


def test_join_statistics_match_inside_blocks(model):
    src = TemplateSource(model, 2, block_samples=256)
    gen = TodGenerator(src, 2)
    n_blocks = 1200
    x = gen.generate(1, 0, n_blocks * 256)[0].astype(np.float64).reshape(n_blocks, 256)
    join = x[1:, 0] - x[:-1, -1]
    inside = x[:-1, 128] - x[:-1, 127]
    a, b = join**2, inside**2
    # heavy-tailed glitches: compare medians of |d| (robust) and means of d^2 with their errors
    assert abs(np.median(np.abs(join)) / np.median(np.abs(inside)) - 1) < 0.15
    err = np.sqrt(a.var() / a.size + b.var() / b.size)
    assert abs(a.mean() - b.mean()) < 4 * err


def test_json_round_trip_and_errors(model, tmp_path):
    p = save_template(model, tmp_path / "tpl.json")
    m2 = load_template(p)
    assert m2.to_dict() == model.to_dict() and m2.path == p
    a = TodGenerator(model, 3).generate(1, 0, 2000)
    assert np.array_equal(TodGenerator(m2, 3).generate(1, 0, 2000), a)
    d = save_template(model, tmp_path / "dir")
    assert d.name == "template.json" and load_template(tmp_path / "dir").sampling_rate_hz == FS
    with pytest.raises(ModelCompatibilityError, match="31 Hz"):
        load_template(p, sampling_rate_hz=31.0)
    bad = json.loads(p.read_text())
    bad["format_version"] = 99
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ModelCompatibilityError, match="version"):
        load_template(tmp_path / "bad.json")
    bad["format_version"] = 1  # the layout before the linear wafer response
    (tmp_path / "v1.json").write_text(json.dumps(bad))
    with pytest.raises(ModelCompatibilityError, match="version 1 .*fit it again"):
        load_template(tmp_path / "v1.json")
    with pytest.raises(ModelCompatibilityError, match="not found"):
        load_template(tmp_path / "none.json")


def test_fit_template_file_needs_truth(mc, tmp_path):
    tod, _, events = mc
    meta = TodMetadata(sampling_rate_hz=FS, detectors=default_detector_names(2), kind="synthetic")
    with_truth = write_tod(tmp_path / "mc.h5", tod[:, : int(FS * 1800)], meta, events.select(events.time_s < 1800))
    m = fit_template_file(with_truth)
    assert m.fit_info["file"].endswith("mc.h5") and m.direct.n_events > 50
    no_truth = write_tod(tmp_path / "gan.h5", tod[:, :2000], meta)
    with pytest.raises(FileFormatError, match="events"):
        fit_template_file(no_truth)


def test_template_takes_no_gan_options(tmp_path):
    """The template's tile source rejects the GAN's generation options with a one-line InputError."""
    from crab.core.errors import InputError
    from crab.models.template import GlitchPopulation, TemplateModel
    from crab.physics.noise import NoiseParams

    model = TemplateModel(sampling_rate_hz=FS, noise_params=NoiseParams(white_asd=0.01), direct=GlitchPopulation("direct"), wafer=GlitchPopulation("wafer"))
    assert model.kind == "template"
    with pytest.raises(InputError, match="conditioned GAN models only"):
        TodGenerator(model, 1, cond=[0.5])
    with pytest.raises(InputError, match="takes no generation option tile_latents"):
        TodGenerator(model, 1, tile_latents=16)
    assert TodGenerator(model, 1, cond=None).generate(1, 0, 100).shape == (1, 100)
