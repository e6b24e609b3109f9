"""`crab train`: runs, resumes, and fails with one-line errors and no partial model directory."""

import json

import numpy as np
import pytest

from crab.cli import main
from crab.models.gan.store import load_model

FAST_MODEL = {"event_channels": 0, "latent_dim": 20}
FAST_TRAIN = {"window_samples": 64, "batch_size": 16, "windows_per_epoch": 32, "d_pretrain_epochs": 0}
FAST = ["--threads", "1", "--quiet"]


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v) if isinstance(v, str) else str(v)


def write_config(path, model=None, train=None, fast=True):
    """A TOML configuration file for ``crab train --config`` (the fast test settings unless ``fast`` is False)."""
    model = {**(FAST_MODEL if fast else {}), **(model or {})}
    train = {**(FAST_TRAIN if fast else {}), **(train or {})}
    lines = ["[model]", *(f"{k} = {_toml_value(v)}" for k, v in model.items()), "[train]", *(f"{k} = {_toml_value(v)}" for k, v in train.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(map(str, args)))
    return exc.value.code, capsys.readouterr()


def _ok(capsys, *args):
    code, res = _run(capsys, *args)
    assert code in (0, None), res.err
    return res


@pytest.fixture
def npz(tmp_path, synthetic_tod):
    def make(name="mc.npz", n=19 * 100, rate=19.0, nan=False):
        tod, _ = synthetic_tod(n_detectors=2, n_samples=n, glitch_rate_hz=0.3)
        if nan:
            tod[0, 3] = np.nan
        p = tmp_path / name
        np.savez(p, tod=tod, sampling_rate_hz=rate)
        return p

    return make


def test_train_and_resume(tmp_path, npz, capsys):
    out = tmp_path / "model"
    fast = write_config(tmp_path / "fast.toml")
    res = _ok(capsys, "train", "--data", npz(), "--out", out, "--epochs", 1, "--seed", 3, "--config", fast, *FAST)
    assert "model.pt" in res.out and "history.png" in res.out
    m = load_model(out, sampling_rate_hz=19.0, window_samples=64)
    assert m.model_config.latent_dim == 20
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["seed"] == 3 and cfg["config"]["window_samples"] == 64
    # resume to more epochs: the stored configuration is reused; snapshots may start on resuming
    _ok(capsys, "train", "--data", npz(), "--out", out, "--epochs", 2, "--resume", "--quiet", "--snapshot-every", 1)
    assert len(json.loads((out / "history.json").read_text())["rows"]) == 2
    assert [p.name for p in (out / "snapshots").iterdir()] == ["epoch_0002"]
    assert load_model(out / "snapshots" / "epoch_0002").extra["epoch"] == 2
    # another configuration than the checkpoint's: clear error
    code, res = _run(capsys, "train", "--data", npz(), "--out", out, "--epochs", 3, "--resume", "--config", write_config(tmp_path / "w128.toml", train={"window_samples": 128}))
    assert code == 2 and res.err.count("\n") == 1 and "--config cannot change when resuming" in res.err
    # a non-empty directory is not overwritten silently
    code, res = _run(capsys, "train", "--data", npz(), "--out", out, "--epochs", 1, "--config", fast, *FAST)
    assert code == 2 and "--overwrite" in res.err


def test_event_channel_options(tmp_path, npz, capsys):
    """event_channels adds sparse event inputs beside the Gaussian noise channel; the model generates."""
    out = tmp_path / "model"
    events = {"event_channels": 2, "event_threshold": 2.0, "event_subsample": True, "event_kernel": 9}
    conf = write_config(tmp_path / "ev.toml", model=events, train={"feature_weight": 0})
    conf.write_text(conf.read_text().replace("latent_dim = 20\n", ""))  # noise_dim and latent_dim follow event_channels
    _ok(capsys, "train", "--data", npz(), "--out", out, "--epochs", 1, "--config", conf, *FAST)
    m = load_model(out)
    mc = m.model_config
    assert (mc.event_channels, mc.noise_dim, mc.event_threshold, mc.event_subsample, mc.event_kernel) == (2, 48, 2.0, True, 9)
    assert m.generator.event_filter is None  # the default: the events only place the additive glitches
    assert mc.additive_glitches and tuple(m.generator.additive.table.shape) == (mc.pulse_bands, mc.pulse_phases, 9)  # the default: glitches added in TOD units
    assert mc.transform_out_scale == pytest.approx(m.transform.out_scale)
    assert json.loads((out / "config.json").read_text())["config"]["feature_weight"] == 0
    assert mc.latent_dim == mc.noise_dim + 8
    _ok(capsys, "generate", "--model", out, "--duration", "60", "--detectors", 2, "--out", tmp_path / "g.h5", "--no-progress")
    code, res = _run(capsys, "train", "--data", npz(), "--out", tmp_path / "m2", "--epochs", 1, "--config", write_config(tmp_path / "e3.toml", model={"event_channels": 3, "noise_dim": 64}), *FAST)
    assert code == 2 and res.err.count("\n") == 1 and "noise_dim" in res.err  # latent_dim 20 leaves no room for 4 noise channels
    no_latent = {"event_channels": 1, "event_kernel": 8}
    conf = write_config(tmp_path / "k8.toml", model=no_latent)
    conf.write_text(conf.read_text().replace("latent_dim = 20\n", ""))
    code, res = _run(capsys, "train", "--data", npz(), "--out", tmp_path / "m3", "--epochs", 1, "--config", conf, *FAST)
    assert code == 2 and res.err.count("\n") == 1 and "event_kernel" in res.err
    conf = write_config(tmp_path / "m4.toml", model={"event_kernel": 9, "additive_glitches": False, "event_inputs": True, "discriminator_peak_view": True}, fast=False)
    conf.write_text(conf.read_text().replace("[train]\n", "[train]\n" + "".join(f"{k} = {v}\n" for k, v in FAST_TRAIN.items())))
    _ok(capsys, "train", "--data", npz(), "--out", tmp_path / "m4", "--epochs", 1, "--config", conf, *FAST)
    m4 = load_model(tmp_path / "m4")
    assert not m4.model_config.additive_glitches and m4.generator.additive is None
    assert m4.model_config.discriminator_peak_view and m4.model_config.transform_out_scale == pytest.approx(m4.transform.out_scale)  # the peak view needs k too
    code, res = _run(capsys, "train", "--data", npz(), "--out", tmp_path / "m4", "--epochs", 2, "--resume", "--config", write_config(tmp_path / "add.toml", model={"additive_glitches": True}))
    assert code == 2 and "--config" in res.err


def test_generator_channels_from_the_config_file(tmp_path, npz, capsys):
    """generator_channels sets the generator's widths."""
    out = tmp_path / "model"
    _ok(capsys, "train", "--data", npz(), "--out", out, "--epochs", 2, "--config", write_config(tmp_path / "c.toml", model={"generator_channels": [16, 16, 8, 8, 4]}), *FAST)
    m = load_model(out)
    assert m.model_config.generator_channels == (16, 16, 8, 8, 4)
    assert m.generator.head.in_channels == 4
    code, res = _run(capsys, "train", "--data", npz(), "--out", tmp_path / "m3", "--epochs", 1, "--config", write_config(tmp_path / "c2.toml", model={"generator_channels": [16, 16]}), *FAST)
    assert code == 2 and res.err.count("\n") == 1 and "generator_channels needs 5 entries" in res.err
    assert not (tmp_path / "m3").exists()


def test_help_lists_at_most_15_options(capsys):
    from crab.cli.train_cmd import train

    options = [p for p in train.params if p.name != "help"]
    assert len(options) <= 15, [p.name for p in options]
    res = _ok(capsys, "train", "--help")
    assert res.out.count("\n  --") <= 16  # the options and --help


def test_config_file_sets_fields_and_the_command_line_overrides_it(tmp_path, npz, capsys):
    from crab.models.gan.checkpoint import load_checkpoint

    out = tmp_path / "model"
    conf = write_config(tmp_path / "c.toml", train={"epochs": 5, "seed": 9, "feature_weight": 0.25, "d_betas": [0.1, 0.8]})
    _ok(capsys, "train", "--data", npz(), "--out", out, "--epochs", 1, "--config", conf, *FAST)
    tc = load_checkpoint(out)["train_config"]
    assert (tc["epochs"], tc["seed"], tc["feature_weight"], tuple(tc["d_betas"])) == (1, 9, 0.25, (0.1, 0.8))
    record = json.loads((out / "config.json").read_text())
    assert record["config"]["feature_weight"] == 0.25 and record["model_config"]["latent_dim"] == 20  # the resolved configuration beside the outputs


def test_shipped_paper_config(tmp_path, npz, capsys):
    """--config paper: the paper's recipe (what --recipe paper set)."""
    from crab.models.gan.checkpoint import load_checkpoint
    from crab.models.gan.config_file import read_config_file

    train_paper = read_config_file("paper")["train"]
    assert (train_paper["loss"], train_paper["d_optimizer"], train_paper["g_optimizer"], train_paper["ema_decay"]) == ("bce", "sgd", "adam", 0.0)
    conf = write_config(tmp_path / "p.toml", train=train_paper)
    _ok(capsys, "train", "--data", npz(), "--out", tmp_path / "m", "--epochs", 1, "--config", conf, *FAST)
    tc = load_checkpoint(tmp_path / "m")["train_config"]
    assert (tc["loss"], tc["d_optimizer"], tc["d_lr"], tc["ema_decay"], tc["d_steps_per_g_step"]) == ("bce", "sgd", 0.02, 0.0, 1)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[model]\nevent_chanels = 2\n", "unknown key 'event_chanels' in [model]; valid keys: latent_dim, noise_dim"),
        ("[train]\nlr_decay_epochs = 40\n", "unknown key 'lr_decay_epochs' in [train]; valid keys: epochs,"),
        ("[optim]\nx = 1\n", "unknown table [optim]"),
        ("[train\n", "not a valid TOML file"),
        ("[train]\nloss = 'hinge'\n", "loss must be 'bce' or 'wgan-gp'"),
    ],
)
def test_bad_config_file_one_line_error(tmp_path, npz, capsys, text, message):
    conf = tmp_path / "bad.toml"
    conf.write_text(text)
    code, res = _run(capsys, "train", "--data", npz(), "--out", tmp_path / "m", "--epochs", 1, "--config", conf, *FAST)
    assert code == 2 and res.err.startswith("error: ") and res.err.count("\n") == 1 and message in res.err
    assert not (tmp_path / "m").exists()


def test_unknown_shipped_config(tmp_path, npz, capsys):
    code, res = _run(capsys, "train", "--data", npz(), "--out", tmp_path / "m", "--config", "papper", *FAST)
    assert code == 2 and res.err.count("\n") == 1 and "no such shipped configuration" in res.err and "paper" in res.err


@pytest.mark.parametrize(
    "case, message",
    [("missing", "not found"), ("nan", "NaN"), ("short", "too few samples"), ("rates", "different sampling rates"), ("window", "multiple of 16")],
)
def test_bad_inputs_one_line_error_and_no_model_dir(tmp_path, npz, capsys, case, message):
    out = tmp_path / "model"
    data = {  # built lazily: each case writes its own file
        "missing": lambda: ["--data", tmp_path / "nope.h5"],
        "nan": lambda: ["--data", npz("nan.npz", nan=True)],
        "short": lambda: ["--data", npz("short.npz", n=200)],
        "rates": lambda: ["--data", npz("a.npz"), "--data", npz("b.npz", rate=31.0)],
        "window": lambda: ["--data", npz()],
    }[case]()
    conf = write_config(tmp_path / "c.toml", train={"window_samples": 60 if case == "window" else 64})
    code, res = _run(capsys, "train", *data, "--out", out, "--epochs", 1, "--config", conf, *FAST)
    assert code == 2
    assert res.err.startswith("error: ") and res.err.count("\n") == 1 and message in res.err
    assert not out.exists()


def test_resume_without_checkpoint(tmp_path, npz, capsys):
    code, res = _run(capsys, "train", "--data", npz(), "--out", tmp_path / "m", "--resume")
    assert code == 2 and "no checkpoint" in res.err
