"""Dataset: file loading, clear errors, time split without leak, random crops."""

from pathlib import Path

import numpy as np
import pytest
import torch

from crab.models.dataset import DEFAULT_WINDOW_SAMPLES, TodSource, WindowDataset, WindowSampler, fixed_windows, load_tod_source, load_tod_sources, prepare_training_data, split_bounds
from crab.core.errors import CrabError, FileFormatError, InputError


def _npz(tmp_path, name, tod, rate=19.0):
    p = tmp_path / name
    np.savez(p, tod=tod, sampling_rate_hz=rate)
    return p


def test_loads_hdf5_and_npz(synthetic_tod, synthetic_tod_file, tmp_path):
    h5 = synthetic_tod_file(n_detectors=2, n_samples=2000)
    tod, _ = synthetic_tod(n_detectors=3, n_samples=1500)
    srcs = load_tod_sources([h5, _npz(tmp_path, "a.npz", tod), _npz(tmp_path, "b.npz", tod[0])])
    assert [s.tod.shape for s in srcs] == [(2, 2000), (3, 1500), (1, 1500)]
    assert all(s.sampling_rate_hz == 19.0 for s in srcs)
    np.testing.assert_array_equal(srcs[1].tod, tod)


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_non_finite_samples_are_rejected(tmp_path, synthetic_tod, bad):
    tod, _ = synthetic_tod(n_detectors=2, n_samples=2000)
    tod[1, 17] = float(bad)
    with pytest.raises(InputError, match="NaN or infinite") as exc:
        load_tod_source(_npz(tmp_path, "bad.npz", tod))
    assert "\n" not in str(exc.value)


def test_mismatched_sampling_rates(tmp_path, synthetic_tod):
    tod, _ = synthetic_tod(n_detectors=1, n_samples=2000)
    with pytest.raises(InputError, match="different sampling rates"):
        load_tod_sources([_npz(tmp_path, "a.npz", tod, 19.0), _npz(tmp_path, "b.npz", tod, 31.0)])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileFormatError, match="not found"):
        load_tod_source(tmp_path / "nope.h5")
    np.savez(tmp_path / "x.npz", data=np.zeros(10))
    with pytest.raises(FileFormatError, match="'tod'"):
        load_tod_source(tmp_path / "x.npz")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(CrabError):
        load_tod_source(tmp_path / "junk.h5")
    with pytest.raises(InputError, match="no training data"):
        load_tod_sources([])


def test_too_few_samples_for_one_window():
    with pytest.raises(InputError, match="too few samples"):
        split_bounds(600, 256, 0.2)
    (a0, a1), (b0, b1) = split_bounds(10_000, 256, 0.2)
    assert (a0, b1) == (0, 10_000) and a1 - a0 >= 256 and b1 - b0 >= 256


def test_time_split_has_a_gap_and_no_overlap():
    (a0, a1), (b0, b1) = split_bounds(34_200, 256, 0.2)
    assert a1 + 256 == b0  # gap of one window
    assert b1 - b0 == round(0.2 * 34_200)


def test_validation_data_do_not_leak_into_training(synthetic_tod):
    tod, _ = synthetic_tod(n_detectors=2, n_samples=4000, glitch_rate_hz=0.3)
    base = prepare_training_data([TodSource(tod, 19.0, ["a", "b"], Path("x"))], window_samples=64, val_fraction=0.2)
    changed = tod.copy()
    changed[:, -800:] = 1e3 * np.abs(changed[:, -800:])  # validation part only
    other = prepare_training_data([TodSource(changed, 19.0, ["a", "b"], Path("x"))], window_samples=64, val_fraction=0.2)
    for x, y in zip(base.train, other.train):
        np.testing.assert_array_equal(x, y)  # high-pass applied to each part separately
    assert base.noise_params == other.noise_params
    # one series per detector; training and validation lengths as split
    assert len(base.train) == 2 and base.train[0].shape == (1, 4000 - 800 - 64)
    assert base.val[0].shape == (1, 800)


def test_random_crops_lie_inside_one_training_series():
    series = [np.arange(100, dtype=np.float32)[None] + 1000 * k for k in range(3)]
    s = WindowSampler(series, 32)
    w = s.sample(500, torch.Generator().manual_seed(0)).numpy()
    assert w.shape == (500, 1, 32)
    d = np.diff(w[:, 0], axis=1)
    assert np.all(d == 1)  # contiguous: never straddles two series
    starts = w[:, 0, 0] % 1000
    assert starts.min() >= 0 and starts.max() <= 100 - 32
    assert len(np.unique(starts)) > 40  # shifts: augmentation
    w2 = s.sample(500, torch.Generator().manual_seed(0)).numpy()
    np.testing.assert_array_equal(w, w2)  # seeded


def test_fixed_windows_and_torch_dataset():
    w = fixed_windows([np.zeros((1, 100), np.float32)], 32, 16)
    assert w.shape == (5, 1, 32)
    ds = WindowDataset(w)
    assert len(ds) == 5 and ds[0].shape == (1, 32) and ds[0].dtype == torch.float32
    assert fixed_windows([np.zeros((1, 1000))], 32, 16, max_windows=10).shape[0] == 10


def test_default_window_and_joint_channels(synthetic_tod):
    assert DEFAULT_WINDOW_SAMPLES % 16 == 0 and DEFAULT_WINDOW_SAMPLES >= 128
    tod, _ = synthetic_tod(n_detectors=3, n_samples=3000)
    d = prepare_training_data([TodSource(tod, 19.0, ["a", "b", "c"], Path("x"))], window_samples=64, channels=3)
    assert len(d.train) == 1 and d.train[0].shape[0] == 3 and d.val_windows().shape[1:] == (3, 64)
    with pytest.raises(InputError, match="joint"):
        prepare_training_data([TodSource(tod, 19.0, ["a", "b", "c"], Path("x"))], window_samples=64, channels=2)


def test_glitch_preserving_highpass_keeps_big_glitches_without_undershoot():
    fs, n = 19.0, 19 * 600
    rng = np.random.default_rng(2)
    t = np.arange(n) / fs
    sigma = 1.0
    noise = rng.normal(0, sigma, (1, n)) + 20.0 * np.sin(2 * np.pi * t / 200.0)  # white noise + a slow drift
    glitch = np.zeros(n)
    for t0 in (100.0, 250.0, 400.0):  # big glitches (1000 sigma, 0.3 s decay)
        k = int(t0 * fs)
        glitch[k:] += 1000.0 * np.exp(-(t[k:] - t[k]) / 0.3)
    src = [TodSource(noise + glitch, fs, ["a"], Path("x"))]
    kw = dict(window_samples=256, val_fraction=0.2, transform_noise_multiple=4.0, highpass_hz=19.0 / 256)
    plain = prepare_training_data(src, **kw)
    kept = prepare_training_data(src, **kw, highpass_clip_sigma=5.0)
    quiet = prepare_training_data([TodSource(noise, fs, ["a"], Path("x"))], **kw)
    x_plain = plain.transform.inverse(plain.train[0][0].astype(np.float64))
    x_kept = kept.transform.inverse(kept.train[0][0].astype(np.float64))
    x_quiet = quiet.transform.inverse(quiet.train[0][0].astype(np.float64))
    base = np.median(x_kept)
    # the plain high-pass leaves a deep negative lobe around every big glitch; the glitch-preserving one does not
    assert np.min(x_plain - np.median(x_plain)) < -20 * sigma
    assert np.min(x_kept - base) > -6 * sigma
    # glitch peaks are kept whole, the drift is removed as by the plain high-pass
    k = int(250.0 * fs)
    assert x_kept[k] - base == pytest.approx(1000.0, rel=0.01)
    far = slice(int(150 * fs), int(200 * fs))  # far from every glitch: same as high-passing the glitch-free TOD
    np.testing.assert_allclose(x_kept[far] - np.mean(x_kept[far]), x_quiet[far] - np.mean(x_quiet[far]), atol=0.2 * sigma)
    assert np.std(x_kept[far]) < 1.3 * sigma
    assert kept.noise_params == plain.noise_params  # the noise model is fitted on the raw TOD either way
