"""`crab train`: runs, resumes, and fails with one-line errors and no partial model directory."""

import json

import numpy as np
import pytest

from crab.cli import main
from crab.models.gan.store import load_model

FAST = ["--window-samples", "64", "--batch-size", "16", "--windows-per-epoch", "32", "--d-pretrain-epochs", "0", "--threads", "1", "--quiet", "--event-channels", "0", "--latent-dim", "20"]


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
    res = _ok(capsys, "train", "--data", npz(), "--out", out, "--epochs", 1, "--seed", 3, *FAST)
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
    # another window length than the checkpoint's: clear error
    code, res = _run(capsys, "train", "--data", npz(), "--out", out, "--epochs", 3, "--resume", "--window-samples", 128)
    assert code == 2 and res.err.count("\n") == 1 and "64 samples" in res.err
    # a non-empty directory is not overwritten silently
    code, res = _run(capsys, "train", "--data", npz(), "--out", out, "--epochs", 1, *FAST)
    assert code == 2 and "--overwrite" in res.err


def test_event_channel_options(tmp_path, npz, capsys):
    """--event-channels adds sparse event inputs beside the Gaussian noise channel; the model generates."""
    out = tmp_path / "model"
    fast = FAST[:-4]  # without --event-channels 0 --latent-dim 20
    _ok(capsys, "train", "--data", npz(), "--out", out, "--epochs", 1, *fast, "--event-channels", 2, "--event-threshold", 2.0, "--event-subsample", "--event-kernel", 9, "--feature-weight", 0)
    m = load_model(out)
    mc = m.model_config
    assert (mc.event_channels, mc.noise_dim, mc.event_threshold, mc.event_subsample, mc.event_kernel) == (2, 48, 2.0, True, 9)
    assert m.generator.event_filter.conv.weight.shape == (4, 2, 9)
    assert mc.additive_glitches and m.generator.additive.conv.weight.shape == (1, 2 * 3, 9)  # the default: glitches added in TOD units
    assert mc.transform_out_scale == pytest.approx(m.transform.out_scale)
    assert json.loads((out / "config.json").read_text())["config"]["feature_weight"] == 0
    assert mc.latent_dim == mc.noise_dim + 8
    _ok(capsys, "generate", "--model", out, "--duration", "60", "--detectors", 2, "--out", tmp_path / "g.h5", "--no-progress")
    code, res = _run(capsys, "train", "--data", npz(), "--out", tmp_path / "m2", "--epochs", 1, *FAST, "--event-channels", 3)
    assert code == 2 and res.err.count("\n") == 1 and "noise_dim" in res.err  # --latent-dim 20 leaves no room for 4 noise channels
    code, res = _run(capsys, "train", "--data", npz(), "--out", tmp_path / "m3", "--epochs", 1, *fast, "--event-channels", 1, "--event-kernel", 8)
    assert code == 2 and res.err.count("\n") == 1 and "event_kernel" in res.err
    _ok(capsys, "train", "--data", npz(), "--out", tmp_path / "m4", "--epochs", 1, *fast, "--event-kernel", 9, "--no-additive-glitches", "--discriminator-peak-view")
    m4 = load_model(tmp_path / "m4")
    assert not m4.model_config.additive_glitches and m4.generator.additive is None
    assert m4.model_config.discriminator_peak_view and m4.model_config.transform_out_scale == pytest.approx(m4.transform.out_scale)  # the peak view needs k too
    code, res = _run(capsys, "train", "--data", npz(), "--out", tmp_path / "m4", "--epochs", 2, *fast, "--resume", "--additive-glitches")
    assert code == 2 and "--additive-glitches" in res.err


def test_architecture_and_learning_rate_decay_options(tmp_path, npz, capsys):
    """--spectral-norm normalises the discriminator's layers, --generator-channels sets the generator's widths,
    --causal-pulses holds the additive pulses' taps before the event at 0;
    --lr-decay-epochs/--lr-decay-final reach the training config."""
    from crab.models.gan.training import load_checkpoint

    out = tmp_path / "model"
    _ok(capsys, "train", "--data", npz(), "--out", out, "--epochs", 2, *FAST[:-4], "--spectral-norm", "--lr-decay-epochs", 1, "--lr-decay-final", 0.5, "--generator-channels", "16,16,8,8,4",
        "--event-channels", 1, "--event-kernel", 9, "--causal-pulses")
    m = load_model(out)
    assert m.model_config.spectral_norm and m.model_config.generator_channels == (16, 16, 8, 8, 4) and m.model_config.causal_pulses
    assert m.generator.head.in_channels == 4
    ck = load_checkpoint(out)
    assert any("parametrizations" in k for k in ck["discriminator"])
    assert (ck["train_config"]["lr_decay_epochs"], ck["train_config"]["lr_decay_final"]) == (1, 0.5)
    assert ck["opt_g"]["param_groups"][0]["lr"] == pytest.approx(0.5 * ck["train_config"]["g_lr"])
    code, res = _run(capsys, "train", "--data", npz(), "--out", out, "--epochs", 3, "--resume", "--no-spectral-norm")
    assert code == 2 and "--spectral-norm" in res.err
    code, res = _run(capsys, "train", "--data", npz(), "--out", tmp_path / "m2", "--epochs", 2, *FAST, "--lr-decay-epochs", 3)
    assert code == 2 and res.err.count("\n") == 1 and "lr_decay_epochs" in res.err
    assert not (tmp_path / "m2").exists()
    code, res = _run(capsys, "train", "--data", npz(), "--out", tmp_path / "m3", "--epochs", 1, *FAST, "--generator-channels", "16,16")
    assert code == 2 and res.err.count("\n") == 1 and "generator_channels needs 5 entries" in res.err
    code, res = _run(capsys, "train", "--data", npz(), "--out", tmp_path / "m3", "--epochs", 1, *FAST, "--generator-channels", "16,a")
    assert code == 2 and "comma-separated integers" in res.err


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
    extra = ["--window-samples", "60"] if case == "window" else ["--window-samples", "64"]
    code, res = _run(capsys, "train", *data, "--out", out, "--epochs", 1, *FAST[:-2], *extra)
    assert code == 2
    assert res.err.startswith("error: ") and res.err.count("\n") == 1 and message in res.err
    assert not out.exists()


def test_resume_without_checkpoint(tmp_path, npz, capsys):
    code, res = _run(capsys, "train", "--data", npz(), "--out", tmp_path / "m", "--resume")
    assert code == 2 and "no checkpoint" in res.err
