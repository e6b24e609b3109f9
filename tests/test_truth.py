"""The truth table of generated glitches (crab.generation.truth): it reproduces the glitch component,
it is the same for any chunking, worker count and slice, and flags come from it."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from crab.generation import TodGenerator
from crab.generation.output import generate_to_file
from crab.generation.truth import RunTruth, glitch_flags, glitch_signal
from crab.io.tod import read_tod
from crab.models.gan.config import ModelConfig
from crab.models.gan.network import Generator
from crab.models.gan.store import save_model
from crab.models.gan.transform import AmplitudeTransform
from crab.models.glitch_layer.population import GlitchPopulation
from crab.models.glitch_layer.shapes import QUANTILE_P
from crab.models.glitch_layer.wafer import WaferLayer
from crab.models.registry import load_generation_model
from crab.models.template.model import TemplateModel
from crab.physics.events import EVENT_KIND_DIRECT, EVENT_KIND_WAFER
from crab.physics.noise import NoiseParams

FS = 19.0
Q = len(QUANTILE_P)
#: A small generator with additive glitches (2 event channels with sub-sample phases) and a wafer layer.
CFG = dict(window_samples=64, latent_dim=72, noise_dim=16 * 4, event_channels=2, event_threshold=2.0, event_kernel=9,
           generator_channels=(8, 8, 8, 8, 8), transform_out_scale=1.5)


def _wafer_layer() -> WaferLayer:
    pop = GlitchPopulation("wafer", 2.0, n_events=10, energy_quantiles_kev=list(np.geomspace(1.0, 50.0, Q)), response_tau_s=[0.05, 0.4], response_pw_per_kev=[2e-3, 5e-4])
    return WaferLayer(pop, couplings=[1.0, 0.8])


def _gan_dir(path, zero_glitches: bool = False, fitted_law: bool = False) -> str:
    torch.manual_seed(3)
    g = Generator(ModelConfig(**CFG)).eval()
    with torch.no_grad():
        g.additive.log_a0.fill_(np.log(0.3) / g.additive.LR_MULT)
        # pulses that widen with the height (decays of 1 to 3 samples from band to band), unit area
        m = g.additive
        lag = np.arange(m.kernel) - m.half
        for b, tau in enumerate(np.linspace(1.0, 3.0, m.n_bands)):
            for j, p in enumerate(np.linspace(0.0, 1.0, m.n_phases)):
                k = np.where(lag >= 0, np.exp(-np.maximum(lag - p, 0.0) / tau), 0.0) * (lag - p > -1)
                m.table[b, j] = torch.from_numpy(k / k.sum())
        m.band_log_amp.copy_(torch.linspace(np.log(0.1), np.log(3.0), m.n_bands))
        if fitted_law:  # a tabulated amplitude law; 60 % of the events place no glitch
            m.set_law(np.linspace(np.log(0.2), np.log(30.0), m.LAW_POINTS), zero_fraction=0.6)
        if zero_glitches:  # the same generator without its additive glitches (A = 0)
            g.additive.log_a0.fill_(-1e3)
    path.mkdir(parents=True, exist_ok=True)
    save_model(path, g, AmplitudeTransform(offset=0.01, scale=0.1, out_scale=1.5), FS, noise_params=NoiseParams(white_asd=0.02), highpass_hz=FS / 64,
               wafer_layer=_wafer_layer().to_dict())
    return str(path)


@pytest.fixture(scope="module")
def gan_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("truth_gan")
    return _gan_dir(root / "with"), _gan_dir(root / "without", zero_glitches=True), _gan_dir(root / "fitted", fitted_law=True)


def _template(noise: bool = True) -> TemplateModel:
    direct = GlitchPopulation("direct", 0.2, list(np.geomspace(0.05, 5.0, Q)), list(np.geomspace(0.05, 0.5, Q)), rise_s=0.01)
    return TemplateModel(sampling_rate_hz=FS, noise_params=NoiseParams(white_asd=0.01 if noise else 0.0, f_knee_hz=0.0), direct=direct,
                         wafer=_wafer_layer().population, fit_info={"n_detectors": 2})


@pytest.mark.parametrize("law", ["pareto", "fitted"])
def test_gan_truth_reproduces_the_additive_glitches(gan_dirs, tmp_path, law):
    """The generated TOD minus the same generator's TOD without additive glitches is the sum of the truth
    table's pulses (float32 precision), and the wafer rows render the wafer's part; with a fitted
    amplitude law the events without a glitch are not listed."""
    with_dir, without_dir = gan_dirs[0] if law == "pareto" else gan_dirs[2], gan_dirs[1]
    n = 3 * 16384 + 123
    a = generate_to_file(TodGenerator(load_generation_model(with_dir), 4, n_workers=1), tmp_path / "a.h5", n / FS, 3, progress=False)
    b = generate_to_file(TodGenerator(load_generation_model(without_dir), 4, n_workers=1), tmp_path / "b.h5", n / FS, 3, progress=False, truth=False)
    fa, fb = read_tod(a.path), read_tod(b.path)
    ev = fa.events
    assert fb.events is None
    assert {EVENT_KIND_DIRECT, EVENT_KIND_WAFER} <= set(np.unique(ev.kind))
    direct, wafer = ev.select(ev.kind == EVENT_KIND_DIRECT), ev.select(ev.kind == EVENT_KIND_WAFER)
    assert set(np.unique(direct.detector)) == {0, 1, 2} and np.all(wafer.detector == -1)
    assert set(np.unique(wafer.wafer)) == {0, 1}  # 3 detectors on wafers of 2: wafers 0 and 1, each listed once
    assert set(np.unique(direct.family)) == {0, 1} and np.all(np.isfinite(direct.amplitude)) and np.all(direct.amplitude > 0)
    assert np.all(np.diff(ev.time_s) >= 0)
    src = TodGenerator(load_generation_model(with_dir), 4).source
    for d in range(3):
        diff = fa.tod[d].astype(np.float64) - fb.tod[d].astype(np.float64)  # additive glitches only
        own = src.render_events(ev.select(ev.kind == EVENT_KIND_DIRECT), d, 0, n)
        tol = 4e-7 * np.abs(fa.tod[d]).max()
        assert np.abs(diff).max() > 100 * tol  # there are glitches to reproduce
        np.testing.assert_allclose(own, diff, rtol=0, atol=tol)
    # the whole glitch signal (the one flags use), tile by tile, is the rendering of all the truth rows
    # (the wafer's recursive filter is started TAIL_FRACTION = 1e-7 of a height before each tile)
    gen = TodGenerator(load_generation_model(with_dir), 4)
    sig = glitch_signal(gen, [0, 1, 2], 0, n)
    for d in range(3):
        whole = src.render_events(ev, d, 0, n)
        assert np.abs(whole - src.render_events(ev.select(ev.kind == EVENT_KIND_DIRECT), d, 0, n)).max() > 0  # the wafer's part is there
        np.testing.assert_allclose(sig[d], whole, rtol=0, atol=1e-6 * np.abs(whole).max())


def test_template_truth_is_the_whole_tod_without_noise(tmp_path):
    """Noise off: the template's TOD is the sum of its truth table's pulses."""
    model = _template(noise=False)
    n = 2 * 65536 + 77
    gen = TodGenerator(model, 9, n_workers=1)
    out = generate_to_file(gen, tmp_path / "t.h5", n / FS, 4, progress=False)
    f = read_tod(out.path)
    ev = f.events
    assert np.sum(ev.kind == EVENT_KIND_DIRECT) > 50 and np.sum(ev.kind == EVENT_KIND_WAFER) > 50
    assert np.all(np.isfinite(ev.select(ev.kind == EVENT_KIND_DIRECT).tau_s))
    for d in range(4):
        rendered = gen.source.render_events(ev, d, 0, n)
        np.testing.assert_allclose(f.tod[d], rendered, rtol=2e-6, atol=1e-9 * np.abs(rendered).max())


@pytest.mark.parametrize("method", ["gan", "template"])
def test_truth_is_the_same_for_any_chunking_workers_and_slice(method, gan_dirs, tmp_path):
    model = load_generation_model(gan_dirs[0]) if method == "gan" else _template()
    n = 40000
    tables = []
    for chunk, workers in ((1 << 20, 2), (1000, 1), (7777, 2)):
        out = generate_to_file(TodGenerator(model, 11, n_workers=workers), tmp_path / f"{method}_{chunk}.h5", n / FS, 3, chunk_samples=chunk, progress=False)
        with h5py.File(out.path) as f:
            tables.append({k: f["events"][k][()] for k in f["events"]})
    for t in tables[1:]:
        assert t.keys() == tables[0].keys()
        for k in t:
            assert np.array_equal(t[k], tables[0][k], equal_nan=True), k
    # a slice lists exactly the full run's rows whose hit sample lies in it
    s0, m = 12345, 9000
    out = generate_to_file(TodGenerator(model, 11), tmp_path / f"{method}_slice.h5", m / FS, 3, start_s=s0 / FS, progress=False)
    with h5py.File(out.path) as f:
        sl = {k: f["events"][k][()] for k in f["events"]}
    keep = (tables[0]["sample"] >= s0) & (tables[0]["sample"] < s0 + m)
    assert keep.sum() > 0
    for k in sl:
        assert np.array_equal(sl[k], tables[0][k][keep], equal_nan=True), k


def test_a_detector_subset_lists_its_own_rows_and_its_wafers(gan_dirs):
    gen = TodGenerator(load_generation_model(gan_dirs[0]), 5)
    full = RunTruth(gen, 4).chunk(0, 30000)
    sub = RunTruth(gen, [3]).chunk(0, 30000)  # key 3: position 1 of wafer 1
    assert set(np.unique(sub.wafer)) == {1} and set(np.unique(sub.detector)) == {-1, 0}
    mine = full.select(((full.detector == 3) & (full.kind == EVENT_KIND_DIRECT)) | ((full.kind == EVENT_KIND_WAFER) & (full.wafer == 1)))
    assert np.array_equal(sub.time_s, mine.time_s) and np.array_equal(sub.amplitude, mine.amplitude)


def test_flags_cover_the_glitches_above_threshold_and_nothing_else():
    """Noise off: a flagged sample is exactly one where the TOD (all glitch) exceeds the threshold,
    and every truth glitch above the threshold has its peak flagged."""
    model = _template(noise=False)
    gen = TodGenerator(model, 2, n_workers=1)
    n, thr = 70000, 0.5
    tod = gen.generate([0, 1], 0, n).astype(np.float64)
    flags = glitch_flags(gen, [0, 1], 0, n, thr)
    assert flags.shape == (2, n) and flags.any()
    sig = glitch_signal(gen, [0, 1], 0, n)
    np.testing.assert_allclose(tod, sig, rtol=2e-6, atol=1e-12)
    assert np.array_equal(flags, np.abs(sig) > thr)
    assert not np.any(flags & (np.abs(tod) < 0.99 * thr)) and not np.any(~flags & (np.abs(tod) > 1.01 * thr))
    ev = RunTruth(gen, [0, 1]).chunk(0, n)
    big = ev.select((ev.kind == EVENT_KIND_DIRECT) & (ev.amplitude > 2 * thr))
    assert len(big) > 5
    for row in range(len(big)):
        d, s = int(big.detector[row]), int(big.sample[row])
        assert flags[d, s : s + 4].any()
    with pytest.raises(Exception, match="threshold"):
        glitch_flags(gen, [0], 0, 10, -1.0)


def test_truth_can_be_switched_off(gan_dirs, tmp_path):
    out = generate_to_file(TodGenerator(load_generation_model(gan_dirs[0]), 1), tmp_path / "n.h5", 100.0, 2, truth=False, progress=False)
    with h5py.File(out.path) as f:
        assert "events" not in f
