"""Seeded streams, duration parsing, model store compatibility checks, CLI basics."""

import numpy as np
import pytest

from crab.core import rng
from crab.core.errors import InputError, ModelCompatibilityError
from crab.core.units import format_duration, parse_duration_s


def test_streams_are_keyed_not_ordered():
    a = rng.generator(1, "mc_primaries", 5).standard_normal(4)
    rng.generator(1, "mc_primaries", 4).standard_normal(100)  # drawing elsewhere changes nothing
    assert np.array_equal(a, rng.generator(1, "mc_primaries", 5).standard_normal(4))
    assert not np.array_equal(a, rng.generator(2, "mc_primaries", 5).standard_normal(4))
    assert not np.array_equal(a, rng.generator(1, "mc_deposit", 5).standard_normal(4))
    assert not np.array_equal(a, rng.generator(1, "mc_primaries", 6).standard_normal(4))


def test_stream_and_seed_validation():
    with pytest.raises(KeyError, match="unknown random stream"):
        rng.generator(1, "nope")
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="seed"):
            rng.generator(bad, "training")
    assert rng.detector_key("W00_D001") == rng.detector_key("W00_D001") != rng.detector_key("W00_D002")


@pytest.mark.parametrize("text, seconds", [("1800", 1800), (90, 90), ("90s", 90), ("2h", 7200), ("3d", 259200), ("3y", 3 * 365.25 * 86400), ("1.5min", 90), ("250ms", 0.25)])
def test_parse_duration(text, seconds):
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text, message", [("-5", "positive"), ("abc", "cannot parse"), ("3 parsecs", "unknown duration unit"), ("0", "positive"), ("inf", "cannot parse")])
def test_bad_durations(text, message):
    with pytest.raises(InputError, match=message):
        parse_duration_s(text)


def test_format_duration():
    assert format_duration(5400) == "1.5 h"
    assert format_duration(3 * 365.25 * 86400) == "3 y"


def test_model_store_round_trip_and_checks(tmp_path):
    import torch

    from crab.models.gan.config import ModelConfig

    from crab.models.gan.network import Generator
    from crab.models.gan.store import load_model, save_model
    from crab.models.gan.transform import AmplitudeTransform

    torch.manual_seed(0)
    g = Generator(ModelConfig(window_samples=64))
    save_model(tmp_path, g, AmplitudeTransform(0.0, 2.0, 0.5), 19.0)
    m = load_model(tmp_path, sampling_rate_hz=19.0, window_samples=64)
    for k, v in g.state_dict().items():
        assert torch.equal(v, m.generator.state_dict()[k])
    assert not m.generator.training
    # the default generator adds its glitches in TOD units: it is stored with the transform's out_scale
    assert g.additive is not None and g.cfg.transform_out_scale is None and m.model_config.transform_out_scale == 0.5
    with pytest.raises(ValueError, match="out_scale is 0.5"):
        save_model(tmp_path / "other", Generator(ModelConfig(window_samples=64, transform_out_scale=0.7)), AmplitudeTransform(0.0, 2.0, 0.5), 19.0)
    with pytest.raises(ModelCompatibilityError, match="trained for 19 Hz, but 31 Hz"):
        load_model(tmp_path, sampling_rate_hz=31.0)
    with pytest.raises(ModelCompatibilityError, match="windows of 64 samples"):
        load_model(tmp_path, window_samples=128)
    with pytest.raises(ModelCompatibilityError, match="not found"):
        load_model(tmp_path / "missing")
    d = torch.load(tmp_path / "model.pt", weights_only=True)
    d["format_version"] = 999
    torch.save(d, tmp_path / "model.pt")
    with pytest.raises(ModelCompatibilityError, match="format version 999"):
        load_model(tmp_path)


def test_cli_help_and_version(capsys):
    from crab.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert "crab, version" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["no-such-command"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1
