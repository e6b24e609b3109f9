"""The amplitude transform: exact enough round trip, global constants fitted on training data only."""

import numpy as np
import pytest
import torch

from crab.models.dataset import TodSource, prepare_training_data
from crab.core.errors import InputError
from crab.physics.noise import highpass
from crab.models.gan.transform import AmplitudeTransform


def _tod(synthetic_tod, **kw):
    tod, _ = synthetic_tod(n_detectors=2, n_samples=19 * 200, glitch_rate_hz=0.3, **kw)
    return tod


def test_round_trip_relative_error_below_1e5(synthetic_tod):
    tod = _tod(synthetic_tod)
    tf = AmplitudeTransform.fit(tod)
    # amplitudes from deep negative to 1e5 noise sigma (heavy-ion glitches), in all three numeric paths
    sigma = tf.scale / 2
    x = np.concatenate([tod.reshape(-1).astype(np.float64), np.geomspace(1e-3, 1e5, 500) * sigma, -np.geomspace(1e-3, 100, 100) * sigma])
    tol = lambda a, b: np.max(np.abs(a - b) / np.maximum(np.abs(b), tf.scale))  # noqa: E731
    assert tol(tf.inverse(tf.forward(x)), x) < 1e-5
    x32 = x.astype(np.float32)
    assert tol(tf.inverse(tf.forward(x32)).astype(np.float64), x32.astype(np.float64)) < 1e-5
    xt = torch.tensor(x32)
    assert tol(tf.inverse(tf.forward(xt)).double().numpy(), x32.astype(np.float64)) < 1e-5
    # and it is not the identity: glitches are compressed
    assert tf.forward(np.array([1e4 * sigma]))[0] < 20


def test_transform_is_global_not_per_window(synthetic_tod):
    tod = _tod(synthetic_tod)
    tf = AmplitudeTransform.fit(tod)
    y = tf.forward(tod.astype(np.float64))
    # a window transformed alone equals the slice of the transformed series: no per-window normalisation
    for start in (0, 1000, 2900):
        w = tod[:, start : start + 256].astype(np.float64)
        np.testing.assert_array_equal(tf.forward(w), y[:, start : start + 256])
    # a window with a big glitch keeps its absolute height relative to a quiet one
    quiet = np.zeros(64)
    loud = quiet.copy()
    loud[10] = 100 * tf.scale
    assert tf.forward(loud)[10] > 5 * np.abs(tf.forward(quiet)).max() + 1


def test_transform_fitted_on_training_part_only(synthetic_tod):
    tod = _tod(synthetic_tod)
    src = TodSource(tod=tod, sampling_rate_hz=19.0, detectors=["a", "b"], path=None)
    a = prepare_training_data([src], window_samples=64, val_fraction=0.25)
    # change the validation part wildly: the transform (and the training series) do not move
    tod2 = tod.copy()
    tod2[:, -int(0.25 * tod.shape[1]) :] *= 50
    b = prepare_training_data([TodSource(tod=tod2, sampling_rate_hz=19.0, detectors=["a", "b"], path=None)], window_samples=64, val_fraction=0.25)
    assert a.transform == b.transform
    for x, y in zip(a.train, b.train):
        np.testing.assert_array_equal(x, y)
    # and it is the fit on the high-passed training part
    n_train = a.train[0].shape[-1]
    raw = tod[:, :n_train].astype(np.float64)
    hp = highpass(raw, 19.0, a.highpass_hz) + raw.mean()  # the mean level is kept
    assert AmplitudeTransform.fit(hp.reshape(-1)) == a.transform


def test_transform_serialises_and_validates():
    tf = AmplitudeTransform(offset=0.1, scale=0.2, out_scale=1.5)
    assert AmplitudeTransform.from_dict(tf.to_dict()) == tf
    with pytest.raises(InputError):
        AmplitudeTransform(scale=0.0)
    with pytest.raises(InputError):
        AmplitudeTransform.fit(np.array([1.0, np.nan, 2.0]))
