"""The litebird_sim bridge (crab.integrations.litebird).

The numpy layer is tested everywhere; the ``Observation`` / ``Simulation``
layers need the ``crab-tod[litebird]`` extra (skipped without it; CI installs
it).  The MPI test needs ``crab-tod[mpi]`` too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import require_extra

from crab.integrations import litebird as cl
from crab.core import rng
from crab.core.errors import InputError

FS = 19.0
SEED = 11
NAMES = ["L1-140_000_QA", "L1-140_000_QB"]


def make_model():
    """A slice-exact stand-in for a trained model: a factory ``(seed, rate) -> generator``."""
    return _model_factory


def _model_factory(seed, sampling_rate_hz):
    from crab.physics.noise import NoiseGenerator, NoiseParams

    return NoiseGenerator(NoiseParams(white_asd=0.05, f_knee_hz=0.05), sampling_rate_hz, seed=seed, stream="template_noise", block_samples=1024)


# --------------------------------------------------------------------------- numpy layer
def test_add_is_additive_keyed_on_name_and_absolute_time():
    n = 4000
    base = np.random.default_rng(0).normal(size=(2, n)).astype(np.float32)
    g = cl.cosmic_ray_tod(n, FS, 100.0, NAMES, make_model(), SEED)
    assert g.dtype == np.float32 and g.shape == (2, n) and np.any(g != 0)
    out = cl.add_cosmic_rays(base.copy(), FS, 100.0, NAMES, make_model(), SEED)
    assert np.array_equal(out, base + g)
    # rows follow the names, not the positions
    swapped = cl.cosmic_ray_tod(n, FS, 100.0, NAMES[::-1], make_model(), SEED)
    assert np.array_equal(swapped, g[::-1])
    # a later start time continues the same series (absolute sample index)
    k = 1234
    tail = cl.cosmic_ray_tod(n - k, FS, 100.0 + k / FS, NAMES, make_model(), SEED)
    assert np.array_equal(tail, g[:, k:])
    # chunking does not matter
    small = cl.add_cosmic_rays(np.zeros((2, n), np.float32), FS, 100.0, NAMES, make_model(), SEED, params=cl.CosmicRayParams(chunk_samples=333))
    assert np.array_equal(small, g)
    # another seed, another realisation
    assert not np.array_equal(cl.cosmic_ray_tod(n, FS, 100.0, NAMES, make_model(), SEED + 1), g)


def test_conversion_factor_scalar_and_per_detector():
    n = 500
    g = cl.cosmic_ray_tod(n, FS, 0.0, NAMES, make_model(), SEED)
    p = cl.CosmicRayParams(conversion_factor={NAMES[0]: 2.0, NAMES[1]: -0.5})
    out = cl.add_cosmic_rays(np.zeros((2, n), np.float32), FS, 0.0, NAMES, make_model(), SEED, params=p)
    assert np.array_equal(out[0], (g[0].astype(np.float64) * 2.0).astype(np.float32))
    assert np.array_equal(out[1], (g[1].astype(np.float64) * -0.5).astype(np.float32))
    with pytest.raises(InputError, match="no entry"):
        cl.add_cosmic_rays(np.zeros((1, n), np.float32), FS, 0.0, ["other"], make_model(), SEED, params=p)
    with pytest.raises(InputError, match="finite"):
        cl.CosmicRayParams(conversion_factor=float("nan"))


def test_absolute_start_sample_convention():
    assert cl.absolute_start_sample(0.0, FS) == 0
    assert cl.absolute_start_sample(10.0, FS) == 190
    assert cl.absolute_start_sample(10.0 + 0.4 / FS, FS) == 190  # off-grid: nearest sample
    assert cl.absolute_start_sample(10.0 + 0.6 / FS, FS) == 191
    with pytest.raises(InputError, match="before 0"):
        cl.absolute_start_sample(-1.0, FS)


def test_bad_inputs_are_explained():
    with pytest.raises(InputError, match="shape"):
        cl.add_cosmic_rays(np.zeros((3, 10), np.float32), FS, 0.0, NAMES, make_model(), SEED)
    with pytest.raises(InputError, match="floating"):
        cl.add_cosmic_rays(np.zeros((2, 10), np.int32), FS, 0.0, NAMES, make_model(), SEED)
    gen = _model_factory(SEED, FS)
    with pytest.raises(InputError, match="seed"):
        cl.add_cosmic_rays(np.zeros((2, 10), np.float32), FS, 0.0, NAMES, gen, SEED + 1)
    with pytest.raises(InputError, match="Hz"):
        cl.add_cosmic_rays(np.zeros((2, 10), np.float32), 31.0, 0.0, NAMES, gen, SEED)
    with pytest.raises(InputError, match="user_seed is required"):
        cl.apply_cosmic_rays_to_observations([], make_model())


def test_kcmb_per_pw():
    k = cl.kcmb_per_pw(140.0, 42.0)
    assert 2.5 < k < 3.1  # ~0.36 pW/K for a single-mode top-hat 140 GHz band, eta = 1
    assert np.isclose(cl.kcmb_per_pw(140.0, 42.0, optical_efficiency=0.5), 2 * k)
    with pytest.raises(InputError):
        cl.kcmb_per_pw(140.0, 0.0)


def test_core_does_not_import_optional_extras():
    code = (
        "import sys, crab, crab.integrations.litebird, crab.io.litebird_layout, crab.generation.mpi, crab.cli, crab.cli.export_cmd\n"
        "bad = [m for m in ('litebird_sim', 'mpi4py', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------- litebird_sim layers
@pytest.fixture(scope="module")
def lbs():
    return require_extra("litebird_sim", "litebird")


def _simulation(lbs, tmp_path, n_obs=1, start_time=0.0, duration_s=3600.0):
    imo = lbs.Imo(flatfile_location=lbs.PTEP_IMO_LOCATION)
    sim = lbs.Simulation(imo=imo, base_path=str(tmp_path / "sim"), start_time=start_time, duration_s=duration_s, random_seed=SEED)
    dets = [lbs.DetectorInfo(name=n, sampling_rate_hz=FS, bandcenter_ghz=140.0, bandwidth_ghz=42.0) for n in NAMES]
    sim.create_observations(detectors=dets, num_of_obs_per_detector=n_obs)
    for obs in sim.observations:
        obs.tod[:] = np.random.default_rng(len(obs.tod[0])).normal(size=obs.tod.shape)  # some signal to add to
    return sim


def test_apply_to_observations_adds_exactly_add_cosmic_rays(lbs, tmp_path, gan_model_dir):
    """Simulation with two detectors and one hour, the real generator loaded from a model directory."""
    sim = _simulation(lbs, tmp_path)
    (obs,) = sim.observations
    assert obs.tod.shape == (2, int(3600 * FS))
    before = obs.tod.copy()
    params = cl.CosmicRayParams(conversion_factor=cl.kcmb_per_pw(140.0, 42.0, 0.3), n_workers=1)
    cl.apply_cosmic_rays_to_observations(sim.observations, gan_model_dir, params=params, user_seed=SEED)
    from crab.generation import TodGenerator
    from crab.models.gan.store import load_model

    model = load_model(gan_model_dir)  # a loaded model works as well as its directory
    expected = cl.add_cosmic_rays(before.copy(), FS, float(obs.start_time), list(obs.name), model, SEED, params=params)
    assert np.array_equal(obs.tod, expected)
    assert not np.array_equal(obs.tod, before)
    # applying twice with the same seed adds twice (never overwrites)
    cl.apply_cosmic_rays_to_observations(sim.observations, model, params=params, user_seed=SEED)
    twice = cl.add_cosmic_rays(expected.copy(), FS, float(obs.start_time), list(obs.name), model, SEED, params=params)
    assert np.array_equal(obs.tod, twice)
    # the generator is the one crab generate uses, keyed on the detector names
    gen = TodGenerator(model, SEED, n_workers=1)
    g = gen.generate(cl.detector_keys(NAMES), 0, obs.n_samples).astype(np.float64) * params.conversion_factor
    assert np.allclose(obs.tod, before + 2 * g, atol=1e-4)
    assert np.array_equal(cl.cosmic_ray_tod(1000, FS, 0.0, NAMES, gen, SEED), gen.generate(cl.detector_keys(NAMES), 0, 1000))


def test_split_into_observations_gives_same_glitches(lbs, tmp_path):
    one = _simulation(lbs, tmp_path / "a", n_obs=1, start_time=1000.0)
    four = _simulation(lbs, tmp_path / "b", n_obs=4, start_time=1000.0)
    for sim in (one, four):
        for obs in sim.observations:
            obs.tod[:] = 0
        cl.apply_cosmic_rays_to_observations(sim.observations, make_model(), user_seed=SEED)
    joined = np.concatenate([o.tod for o in four.observations], axis=1)
    assert np.array_equal(joined, one.observations[0].tod)


@pytest.mark.filterwarnings("ignore:ERFA function")
def test_astropy_start_time_and_component(lbs, tmp_path):
    import astropy.time

    t0 = astropy.time.Time("2032-04-01T00:00:00")
    sim = _simulation(lbs, tmp_path, start_time=t0, duration_s=600.0)
    obs = sim.observations[0]
    obs.tod[:] = 0
    cl.apply_cosmic_rays_to_observations(obs, make_model(), user_seed=SEED)
    ref = cl.cosmic_ray_tod(obs.n_samples, FS, float(t0.cxcsec), NAMES, make_model(), SEED)
    assert np.array_equal(obs.tod, ref)
    with pytest.raises(InputError, match="component"):
        cl.apply_cosmic_rays_to_observations(obs, make_model(), user_seed=SEED, component="nope")


def test_simulation_wrapper_uses_simulation_seed(lbs, tmp_path):
    sim = _simulation(lbs, tmp_path, duration_s=300.0)
    obs = sim.observations[0]
    obs.tod[:] = 0
    cl.apply_cosmic_rays_to_simulation(sim, make_model(), params=cl.CosmicRayParams(conversion_factor=3.0))
    ref = cl.cosmic_ray_tod(obs.n_samples, FS, 0.0, NAMES, make_model(), SEED)
    assert np.array_equal(obs.tod, (ref.astype(np.float64) * 3.0).astype(np.float32))


MPI_WORKER = textwrap.dedent(
    """
    import sys, numpy as np
    import litebird_sim as lbs
    from crab.integrations import litebird as cl
    sys.path.insert(0, {here!r})
    from test_litebird import make_model, NAMES, FS, SEED
    comm = lbs.MPI_COMM_WORLD
    assert comm.size == 2
    n_total = int(600 * FS)
    for n_blocks_det, n_blocks_time, out in ((2, 1, sys.argv[1]), (1, 2, sys.argv[2])):
        sim = lbs.Simulation(imo=lbs.Imo(flatfile_location=lbs.PTEP_IMO_LOCATION), base_path={base!r}, start_time=50.0, duration_s=600.0, random_seed=SEED)
        dets = [lbs.DetectorInfo(name=n, sampling_rate_hz=FS, bandcenter_ghz=140.0, bandwidth_ghz=42.0) for n in NAMES]
        sim.create_observations(detectors=dets, n_blocks_det=n_blocks_det, n_blocks_time=n_blocks_time, split_list_over_processes=False)
        obs = sim.observations[0]
        assert obs.tod.size == len(NAMES) * n_total // 2, obs.tod.shape  # each rank holds half
        obs.tod[:] = 0
        cl.apply_cosmic_rays_to_observations(sim.observations, make_model(), user_seed=SEED)
        parts = comm.gather((list(obs.name), int(obs.start_sample), obs.tod.copy()), root=0)
        if comm.rank == 0:
            full = np.full((len(NAMES), n_total), np.nan, np.float32)
            for names, start, tod in parts:
                for name, row in zip(names, tod):
                    full[NAMES.index(name), start:start + row.size] = row
            np.save(out, full)
    """
)


def test_mpi_split_observations_give_same_glitches(lbs, tmp_path):
    """Observations split over 2 MPI ranks by detector, then by time: same glitches as one process."""
    from test_mpi import _mpiexec

    exe = _mpiexec()
    script = tmp_path / "worker.py"
    script.write_text(MPI_WORKER.format(here=str(Path(__file__).parent), base=str(tmp_path / "sim")))
    outs = [tmp_path / "by_det.npy", tmp_path / "by_time.npy"]
    env = {**os.environ, "CRAB_PROGRESS": "0"}
    r = subprocess.run([str(exe), "-n", "2", sys.executable, str(script), *map(str, outs)], capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = cl.cosmic_ray_tod(int(600 * FS), FS, 50.0, NAMES, make_model(), SEED)
    for out in outs:
        assert np.array_equal(np.load(out), ref), out.name


def test_detector_keys_are_name_keys():
    assert cl.detector_keys(NAMES) == [rng.detector_key(n) for n in NAMES]


def test_flags_of_a_plain_array_and_of_observations(tmp_path):
    """add_cosmic_rays marks `flags` where the glitch signal (truth table) exceeds the threshold; a model that does
    not list its glitches, or flags without a threshold, is refused."""
    from crab.generation import TodGenerator
    from crab.generation.truth import glitch_flags
    from crab.models.glitch_layer.population import GlitchPopulation
    from crab.models.glitch_layer.shapes import QUANTILE_P
    from crab.models.template.model import TemplateModel
    from crab.physics.noise import NoiseParams

    q = len(QUANTILE_P)
    model = TemplateModel(sampling_rate_hz=FS, noise_params=NoiseParams(white_asd=0.0, f_knee_hz=0.0),
                          direct=GlitchPopulation("direct", 0.2, list(np.geomspace(0.05, 5.0, q)), list(np.geomspace(0.05, 0.5, q))),
                          wafer=GlitchPopulation("wafer"))
    n = 30000
    tod = np.zeros((len(NAMES), n), np.float32)
    flags = np.zeros((len(NAMES), n), np.uint16)
    cl.add_cosmic_rays(tod, FS, 100.0, NAMES, model, SEED, params=cl.CosmicRayParams(conversion_factor=2.0, flag_threshold=0.4, flag_mask=8), flags=flags)
    want = glitch_flags(TodGenerator(model, SEED), cl.detector_keys(NAMES), round(100.0 * FS), n, 0.2)
    assert want.any() and np.array_equal(flags == 8, want) and set(np.unique(flags)) == {0, 8}
    # noise off: the flags are where the added TOD exceeds the threshold, nothing else
    assert not np.any((flags > 0) & (np.abs(tod) < 0.399)) and not np.any((flags == 0) & (np.abs(tod) > 0.401))
    with pytest.raises(InputError, match="flag_threshold"):
        cl.add_cosmic_rays(tod, FS, 100.0, NAMES, model, SEED, flags=flags)
    from crab.physics.noise import NoiseGenerator

    noise_only = NoiseGenerator(NoiseParams(white_asd=0.01), FS, seed=SEED, stream="template_noise")
    with pytest.raises(InputError, match="lists its glitches"):
        cl.add_cosmic_rays(tod, FS, 100.0, NAMES, noise_only, SEED, params=cl.CosmicRayParams(flag_threshold=0.4), flags=flags)


def test_observation_flags_are_created_and_marked(lbs, tmp_path):
    from crab.models.glitch_layer.population import GlitchPopulation
    from crab.models.glitch_layer.shapes import QUANTILE_P
    from crab.models.template.model import TemplateModel
    from crab.physics.noise import NoiseParams

    q = len(QUANTILE_P)
    model = TemplateModel(sampling_rate_hz=FS, noise_params=NoiseParams(white_asd=0.0, f_knee_hz=0.0),
                          direct=GlitchPopulation("direct", 0.2, list(np.geomspace(0.05, 5.0, q)), list(np.geomspace(0.05, 0.5, q))),
                          wafer=GlitchPopulation("wafer"))
    sim = _simulation(lbs, tmp_path)
    (obs,) = sim.observations
    before = obs.tod.copy()
    cl.apply_cosmic_rays_to_observations(obs, model, cl.CosmicRayParams(flag_threshold=0.3, flag_mask=2), user_seed=SEED)
    added = obs.tod.astype(np.float64) - before
    assert obs.local_flags.dtype == np.uint16 and obs.local_flags.shape == obs.tod.shape and obs.local_flags.any()
    assert not np.any((obs.local_flags == 2) & (np.abs(added) < 0.29)) and not np.any((obs.local_flags == 0) & (np.abs(added) > 0.31))
