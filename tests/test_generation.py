"""Streaming generation: fast inference, no seams, layout-independent bytes, bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch

from crab.core.errors import InputError, ModelCompatibilityError
from crab.models.gan.source import GanSource
from crab.generation import TodGenerator, generate_to_file, load_generation_model, stream_checksum
from crab.io.tod import file_checksum, tod_checksum
from crab.models.gan.latent import latent_sequence, stream_key
from crab.models.gan.config import ModelConfig
from crab.models.gan.network import Generator
from crab.models.gan.store import load_model, save_model
from crab.physics.noise import NoiseParams
from crab.models.gan.transform import AmplitudeTransform

TINY = dict(window_samples=64, latent_dim=24, noise_dim=16, event_channels=0, event_subsample=False, event_kernel=0, generator_channels=(8, 8, 8, 8, 8), transform_out_scale=1.5)


def make_model_dir(path, seed: int = 1, sampling_rate_hz: float = 19.0, **cfg) -> str:
    """A randomly initialised generator with non-trivial batch-norm statistics, saved like `crab train` does."""
    torch.manual_seed(seed)
    g = Generator(ModelConfig(**{**TINY, **cfg}))
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.1)
            elif isinstance(m, (torch.nn.Conv1d, torch.nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0.0, 1.5 / np.sqrt(fan_in))
    g.eval()
    path.mkdir(parents=True, exist_ok=True)
    save_model(
        path,
        g,
        AmplitudeTransform(offset=0.01, scale=0.1, out_scale=1.5),
        sampling_rate_hz,
        noise_params=NoiseParams(white_asd=0.02, f_knee_hz=0.02),
        highpass_hz=sampling_rate_hz / 64,
        cond_names=["phi_gv"] if cfg.get("cond_dim") else None,
        cond_range=[(0.3, 1.4)] if cfg.get("cond_dim") else None,
    )
    return str(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model(model_dir)


# --------------------------------------------------------------------------- randomness
def test_latent_sequence_is_position_addressed():
    key = stream_key(3, "gan_latent", 5)
    full = latent_sequence(key, -7, 300, 24)
    for first, n in [(-7, 1), (0, 13), (100, 150), (-2, 3)]:
        assert np.array_equal(latent_sequence(key, first, n, 24), full[first + 7 : first + 7 + n])
    odd = latent_sequence(key, 0, 50, 3)  # odd latent size: the unused normal is dropped
    assert odd.shape == (50, 3) and odd.dtype == np.float32
    big = latent_sequence(key, 0, 20000, 24).ravel()
    assert abs(big.mean()) < 0.01 and abs(big.std() - 1.0) < 0.01
    assert abs(np.corrcoef(big[:-1], big[1:])[0, 1]) < 0.01


# --------------------------------------------------------------------------- fast inference
@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"noise_dim": 0, "latent_dim": 8, "kernel_size": 3},
        {"noise_dim": 32, "latent_dim": 40, "kernel_size": 7},
        {"cond_dim": 1},
        {"output_bounds": (-0.8, 1.2)},
        {"noise_dim": 32, "latent_dim": 40, "event_channels": 1, "event_threshold": 1.5, "event_inputs": True},
        {"noise_dim": 48, "latent_dim": 56, "event_channels": 2, "event_threshold": 1.0, "event_subsample": True, "event_inputs": True},
        {"noise_dim": 48, "latent_dim": 56, "event_channels": 2, "event_threshold": 1.0, "event_kernel": 33, "additive_glitches": False, "event_inputs": True},
        {"noise_dim": 48, "latent_dim": 56, "event_channels": 2, "event_threshold": 1.0, "event_kernel": 33},
        {"noise_dim": 48, "latent_dim": 56, "event_channels": 2, "event_subsample": True, "event_kernel": 33, "output_bounds": (-3.0, 3.0)},
    ],
    ids=["default", "no-noise-k3", "2noise-k7", "cond", "bounded", "events", "subsample-events", "event-kernel", "additive-glitches", "default-events"],
)
def test_fast_inference_matches_the_module(tmp_path, cfg):
    m = load_model(make_model_dir(tmp_path, **cfg))
    cond = [0.6] if cfg.get("cond_dim") else None
    fast = GanSource(m, 4, cond=cond, tile_latents=64, backend="fast")
    slow = GanSource(m, 4, cond=cond, tile_latents=64, backend="module")
    assert fast.backend == "fast" and slow.backend == "module"
    for t in (0, 3):
        a, b = fast.tile(2, t), slow.tile(2, t)
        assert a.dtype == np.float32 and a.shape == (1, 64 * 16)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
    if cfg.get("output_bounds") and not cfg.get("event_channels"):  # (additive glitches go beyond the bound)
        # the bound is active on this random generator and is applied by the fast rewrite too
        lo, hi = cfg["output_bounds"]
        tf = m.transform
        a = fast.tile(2, 0)
        y = (np.arcsinh((a.astype(np.float64) - tf.offset - fast.noise.generate(2, 0, a.shape[1])) / tf.scale) / tf.out_scale) if fast.noise else None
        assert y is not None and y.min() > lo - 1e-4 and y.max() < hi + 1e-4
        assert y.max() > hi - 0.25 and y.min() < lo + 0.25


def test_tiles_join_into_one_continuous_convolution(model):
    """No seams by construction: the tiles equal the network run over one long latent sequence."""
    src = GanSource(model, 9, tile_latents=16)  # 256-sample tiles: many joins
    n_tiles, M, f = 12, model.generator.margin_latents, 16
    gen = TodGenerator(src, 9, n_workers=2)
    tiled = gen.generate([0], 0, n_tiles * src.tile_samples)[0]
    z = latent_sequence(stream_key(9, "gan_latent", 0), -M, n_tiles * 16 + 2 * M, model.model_config.latent_dim)
    with torch.inference_mode():
        y = model.generator(torch.from_numpy(z.T.copy())[None])[0, 0, M * f : M * f + n_tiles * 256].numpy()
    long = model.transform.inverse(y.astype(np.float32))
    long = long + src.noise.generate(0, 0, long.size)
    np.testing.assert_allclose(tiled, long, rtol=1e-5, atol=1e-5 * np.abs(long).max())


# --------------------------------------------------------------------------- reproducibility
def test_same_bytes_for_any_chunking_order_start_and_workers(model):
    gen = TodGenerator(model, 7, tile_latents=16, n_workers=2)
    T = gen.tile_samples
    n = 150 * T + 37
    ref = gen.generate(2, 0, n)
    for chunk_tiles in (1, 7, 64):
        parts = [c for _, c in gen.iter_chunks(2, 0, n, chunk_samples=chunk_tiles * T)]
        assert np.array_equal(np.concatenate(parts, axis=1), ref), chunk_tiles
    # odd chunk sizes, one worker, and a slice generated directly (--start)
    one = TodGenerator(model, 7, tile_latents=16, n_workers=1)
    assert np.array_equal(np.concatenate([c for _, c in one.iter_chunks(2, 0, n, chunk_samples=1001)], axis=1), ref)
    s0 = 41 * T + 123
    assert np.array_equal(gen.generate(2, s0, 5000), ref[:, s0 : s0 + 5000])
    # tiles in reverse order, each alone
    src = gen.source
    fwd = [src.tile(1, t) for t in range(6)]
    assert all(np.array_equal(src.tile(1, t), fwd[t]) for t in reversed(range(6)))
    assert tod_checksum(ref) == stream_checksum(gen, n / 19.0, 2, chunk_samples=3 * T + 5).checksum


def test_seeds_and_detectors_give_independent_tod(model):
    a = TodGenerator(model, 1).generate(3, 0, 40000)
    b = TodGenerator(model, 2).generate(3, 0, 40000)
    assert not np.array_equal(a, b)
    d = np.diff(a, axis=1)  # high-passed: the shared mean level does not count as correlation
    c = np.corrcoef(d)
    assert np.all(np.abs(c[np.triu_indices(3, 1)]) < 5 / np.sqrt(d.shape[1]))
    # a detector's TOD does not depend on which others are generated with it
    alone = TodGenerator(model, 1).generate([2], 0, 40000)
    assert np.array_equal(alone[0], a[2])


def test_join_statistics_equal_in_window_statistics(model):
    """First differences, local variance and glitch rate at tile joins match those inside tiles."""
    gen = TodGenerator(model, 11, tile_latents=16)  # 256-sample tiles
    T = gen.tile_samples
    n_tiles = 1500
    x = gen.generate(1, 0, n_tiles * T)[0].astype(np.float64).reshape(n_tiles, T)
    join = x[1:, 0] - x[:-1, -1]  # difference across each join
    inside = x[:-1, T // 2] - x[:-1, T // 2 - 1]  # difference in the middle of each tile
    for stat in (np.abs, np.square):
        a, b = stat(join), stat(inside)
        err = np.sqrt(a.var() / a.size + b.var() / b.size)
        assert abs(a.mean() - b.mean()) < 4 * err, stat
    # local variance over 16 samples straddling the join vs centred in the tile
    w = 8
    lv_join = np.concatenate([x[:-1, -w:], x[1:, :w]], axis=1).var(axis=1)
    lv_in = x[:-1, T // 2 - w : T // 2 + w].var(axis=1)
    err = np.sqrt(lv_join.var() / lv_join.size + lv_in.var() / lv_in.size)
    assert abs(lv_join.mean() - lv_in.mean()) < 4 * err
    # "glitch" rate: jumps above 4 robust sigma of the differences, near joins vs mid-tile
    d = np.diff(x.reshape(-1))
    thr = 4 * 1.4826 * np.median(np.abs(d - np.median(d)))
    big = (d > thr).reshape(-1)
    pos = np.arange(d.size) % T
    near_join = big[(pos >= T - w) | (pos < w - 1)].sum()
    mid = big[np.abs(pos - T // 2) < w].sum()
    n_near, n_mid = np.sum((pos >= T - w) | (pos < w - 1)), np.sum(np.abs(pos - T // 2) < w)
    r1, r2 = near_join / n_near, mid / n_mid
    assert mid > 20
    assert abs(r1 - r2) < 4 * np.sqrt(r1 / n_near + r2 / n_mid)


def test_paper_generator_models_are_refused_at_load(model_dir, tmp_path):
    """The paper architecture was removed: a stored one gets a one-line error saying how to retrain."""
    d = torch.load(f"{model_dir}/model.pt", weights_only=True)
    old = tmp_path / "paper"
    old.mkdir()
    torch.save({**d, "model_config": {**d["model_config"], "generator_arch": "paper"}}, old / "model.pt")
    with pytest.raises(ModelCompatibilityError, match="generator_arch=.paper.*retrain it with `crab train`") as err:
        load_generation_model(old)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- files and errors
def test_generate_to_file_layout_and_slices(model, tmp_path):
    out = tmp_path / "gen.h5"
    st = generate_to_file(TodGenerator(model, 5), out, 3000 / 19.0, 2, chunk_samples=1000, progress=False)
    assert st.path == out and out.exists() and st.n_samples == 3000
    with h5py.File(out) as f:
        assert "events" not in f and f["tod"].shape == (2, 3000) and f["tod"].dtype == np.float32
        assert f["tod"].chunks is not None
        assert f.attrs["kind"] == "gan" and int(f.attrs["seed"]) == 5
        cfg = json.loads(f.attrs["config"])
        assert cfg["seed"] == 5 and cfg["config"]["method"] == "gan" and cfg["config"]["model"].endswith("model.pt")
        assert cfg["config"]["generation"]["backend"] == "fast"
        assert f["tod"].attrs["checksum_sha256"] == st.checksum
    assert file_checksum(out) == st.checksum
    part = tmp_path / "part.h5"
    generate_to_file(TodGenerator(model, 5), part, 1000 / 19.0, 2, start_s=1500 / 19.0, progress=False)
    with h5py.File(out) as f, h5py.File(part) as g:
        assert np.array_equal(g["tod"][()], f["tod"][:, 1500:2500])
        assert g.attrs["start_time_s"] == pytest.approx(1500 / 19.0)
    with pytest.raises(InputError):
        generate_to_file(TodGenerator(model, 5), out, 10.0, 1, progress=False)  # exists, no overwrite


def test_bad_models_give_clear_errors_and_no_output(model_dir, tmp_path):
    out = tmp_path / "never.h5"
    with pytest.raises(ModelCompatibilityError, match="not found"):
        load_generation_model(tmp_path / "missing")
    with pytest.raises(ModelCompatibilityError, match="31 Hz"):
        load_generation_model(model_dir, sampling_rate_hz=31.0)
    d = torch.load(f"{model_dir}/model.pt", weights_only=True)
    old = tmp_path / "old"
    old.mkdir()
    torch.save({**d, "format_version": 99}, old / "model.pt")
    with pytest.raises(ModelCompatibilityError, match="version"):
        load_generation_model(old)
    weird = tmp_path / "weird"
    weird.mkdir()
    torch.save({**d, "model_config": {**d["model_config"], "latent_dim": -3}}, weird / "model.pt")
    with pytest.raises(ModelCompatibilityError):
        load_generation_model(weird)
    assert not out.exists()


def test_conditioning_values_are_checked(tmp_path):
    m = load_model(make_model_dir(tmp_path, cond_dim=1))
    with pytest.raises(InputError, match="conditioned"):
        TodGenerator(m, 0)
    with pytest.raises(InputError, match="outside the range the model was trained on"):
        TodGenerator(m, 0, cond=[3.0])
    TodGenerator(m, 0, cond=[3.0], allow_extrapolation=True)
    a = TodGenerator(m, 0, cond=[0.5]).generate(1, 0, 5000)
    b = TodGenerator(m, 0, cond=[1.2]).generate(1, 0, 5000)
    assert not np.array_equal(a, b)


_RSS_SCRIPT = textwrap.dedent(
    """
    import sys
    from crab.generation import TodGenerator, load_generation_model, peak_rss_mb, stream_checksum
    m = load_generation_model(sys.argv[1])
    stream_checksum(TodGenerator(m, 0, n_workers=2), float(sys.argv[2]), 1, progress=False)
    print(peak_rss_mb())
    """
)


def test_memory_does_not_grow_with_duration(model_dir):
    rss = {}
    for days in (1, 10):
        r = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, model_dir, str(days * 86400)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        rss[days] = float(r.stdout.split()[-1])  # MiB (VmHWM)
    assert rss[10] < rss[1] * 1.15 + 20, rss


# --------------------------------------------------------------------------- the contract, the registry and the sinks
def test_registry_names_recognises_and_refuses(model_dir, tmp_path):
    from crab.models.registry import METHODS, method_names, method_of

    assert method_names() == list(METHODS) and {"gan", "template"} <= set(method_names())
    assert method_of(model_dir) == "gan" and method_of(tmp_path / "x.json") is None
    (tmp_path / "t.json").write_text("{}")
    assert method_of(tmp_path / "t.json") == "template"
    with pytest.raises(InputError, match="method must be one of"):
        load_generation_model(model_dir, method="diffusion")
    m = load_generation_model(model_dir)
    assert m.kind == "gan" and m.sampling_rate_hz == 19.0 and m.units and m.path is not None


def test_generator_takes_models_and_sources_only(model):
    with pytest.raises(InputError, match="cannot generate with a dict"):
        TodGenerator({}, 1)
    with pytest.raises(InputError, match="takes no generation option"):
        TodGenerator(model, 1, block_samples=4)
    with pytest.raises(InputError, match="tile_source"):
        TodGenerator(GanSource(model, 1, tile_latents=16), 1, tile_latents=16)


def test_sinks_get_the_same_chunks_and_the_file_gets_the_generator_seed(model, tmp_path):
    import io

    from crab.generation import ChecksumSink, RawStreamSink, run

    gen = TodGenerator(model, 13, tile_latents=16, n_workers=1)
    ref = gen.generate(2, 100, 3000)
    buf = io.BytesIO()
    raw = run(gen, 2, 100, 3000, RawStreamSink(buf), chunk_samples=700, progress=False)
    parts = np.frombuffer(buf.getvalue(), "<f4")
    chunks, k = [], 0
    for c0 in range(100, 3100, 700):
        m = min(700, 3100 - c0)
        chunks.append(parts[k : k + 2 * m].reshape(2, m))
        k += 2 * m
    assert np.array_equal(np.concatenate(chunks, axis=1), ref)
    assert run(gen, 2, 100, 3000, ChecksumSink(), progress=False).checksum == raw.checksum == tod_checksum(ref)
    st = generate_to_file(gen, tmp_path / "g.h5", 3000 / 19.0, 2, start_s=100 / 19.0, progress=False)
    assert st.checksum == raw.checksum
    with h5py.File(st.path) as f:
        assert int(f.attrs["seed"]) == 13 and json.loads(f.attrs["config"])["seed"] == 13

