"""Training: a few steps change the weights and write a loadable model; exact resume;
every hyper-parameter of TrainConfig has an effect."""

from pathlib import Path

import numpy as np
import pytest
import torch

from crab.models.dataset import TodSource
from crab.core.errors import InputError, ModelCompatibilityError
from crab.models.gan.history import COLUMNS, History
from crab.models.gan.config import ModelConfig
from crab.models.gan.network import Generator
from crab.models.gan.store import load_model
from crab.models.gan.quality import quality_floor, sample_quality
from crab.models.gan.checkpoint import load_checkpoint
from crab.models.gan.config import TrainConfig
from crab.models.gan.evaluation import calibrate_batchnorm
from crab.models.gan.losses import d_losses, gradient_penalty
from crab.models.gan.training import train

SMALL_MODEL = ModelConfig(latent_dim=20, noise_dim=16, event_channels=0, event_subsample=False, event_kernel=0, generator_channels=(8, 8, 8, 8, 8), discriminator_channels=(8, 8, 8, 8))
# the paper's recipe (BCE, SGD for D, Adam for G) on a tiny problem; tests change one option at a time
TINY = dict(epochs=1, d_pretrain_epochs=0, windows_per_epoch=64, batch_size=16, window_samples=64, val_windows=32, quality_windows=32, bn_calibration_batches=2, num_threads=1,
            ema_decay=0.0, loss="bce", d_optimizer="sgd", d_lr=0.02, d_betas=(0.5, 0.999), g_betas=(0.5, 0.999), d_steps_per_g_step=1)


@pytest.fixture(scope="module")
def source():
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_synthetic_tod

    tod, _ = make_synthetic_tod(n_detectors=2, n_samples=19 * 120, glitch_rate_hz=0.3, seed=3)
    return TodSource(tod=tod, sampling_rate_hz=19.0, detectors=["a", "b"], path=Path("synthetic"))


def _train(source, out, **kw):
    cfg = TrainConfig(**{**TINY, **kw})
    return train([source], out, cfg, SMALL_MODEL, progress=False)


def _init_generator_state():
    from crab.models.gan.evaluation import seed_from

    torch.manual_seed(seed_from(1, 1))
    return Generator(SMALL_MODEL.__class__(**{**SMALL_MODEL.to_dict(), "window_samples": 64})).state_dict()


def _changed(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_few_steps_change_weights_and_write_history_and_model(source, tmp_path):
    r = _train(source, tmp_path / "m", epochs=2, d_pretrain_epochs=1)
    out = tmp_path / "m"
    for name in ("checkpoint.pt", "best.pt", "model.pt", "config.json", "history.csv", "history.json", "history.png"):
        assert (out / name).stat().st_size > 0, name
    ck = load_checkpoint(out)
    assert ck["epoch"] == 3
    assert _changed(ck["generator"], _init_generator_state())
    h = History.from_dict(ck["history"])
    assert [r["phase"] for r in h.rows] == ["pretrain", "gan", "gan"]
    for row in h.rows:
        for c in COLUMNS:
            if c not in ("train_gp",):
                assert row[c] is not None, c
    assert open(out / "history.csv").readline().strip().split(",") == list(COLUMNS)
    m = load_model(out, sampling_rate_hz=19.0, window_samples=64)
    assert not m.generator.training and m.highpass_hz == pytest.approx(19.0 / (4 * 64)) and m.noise_params is not None
    assert m.extra["epoch"] == r.best_epoch and r.best_epoch in (2, 3)
    with torch.no_grad():
        y = m.generator(torch.randn(m.generator.latent_shape(2, 20)))
    assert torch.isfinite(y).all()
    with pytest.raises(ModelCompatibilityError, match="31 Hz"):
        load_model(out, sampling_rate_hz=31.0)
    with pytest.raises(ModelCompatibilityError, match="128"):
        load_model(out, window_samples=128)


def _kill_after(monkeypatch, n_epochs):
    orig = History.save

    def save(self, out_dir, plot=True):
        orig(self, out_dir, plot=plot)
        if len(self) == n_epochs:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(History, "save", save)


def test_resume_equals_uninterrupted(source, tmp_path, monkeypatch):
    kw = dict(epochs=3, d_pretrain_epochs=1, ema_decay=0.9, loss="wgan-gp", d_optimizer="adam", d_steps_per_g_step=2, windows_per_epoch=48)
    _train(source, tmp_path / "full", **kw)
    with monkeypatch.context() as mp:
        _kill_after(mp, 2)
        with pytest.raises(KeyboardInterrupt):
            _train(source, tmp_path / "part", **kw)
    assert load_checkpoint(tmp_path / "part")["epoch"] == 2
    r = train([source], tmp_path / "part", None, None, resume=True, progress=False)  # config from the checkpoint
    assert r.epochs_done == 4
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "part")
    assert a["epoch"] == b["epoch"] == 4
    for key in ("generator", "discriminator", "ema"):
        for k in a[key]:
            torch.testing.assert_close(a[key][k], b[key][k], rtol=1e-6, atol=1e-7)
    assert a["best_epoch"] == b["best_epoch"]
    qa = [r["quality"] for r in a["history"]["rows"]]
    qb = [r["quality"] for r in b["history"]["rows"]]
    np.testing.assert_allclose(qa, qb, rtol=1e-6)
    ma, mb = load_model(tmp_path / "full"), load_model(tmp_path / "part")
    for k, v in ma.generator.state_dict().items():
        torch.testing.assert_close(v, mb.generator.state_dict()[k], rtol=1e-6, atol=1e-7)


def test_resume_checks(source, tmp_path):
    with pytest.raises(ModelCompatibilityError, match="no checkpoint"):
        train([source], tmp_path / "none", TrainConfig(**TINY), SMALL_MODEL, resume=True, progress=False)
    _train(source, tmp_path / "m")
    with pytest.raises(ModelCompatibilityError, match="windows of 64 samples"):
        train([source], tmp_path / "m", TrainConfig(**{**TINY, "window_samples": 128}), SMALL_MODEL, resume=True, progress=False)
    with pytest.raises(ModelCompatibilityError, match="label_smoothing"):
        train([source], tmp_path / "m", TrainConfig(**{**TINY, "label_smoothing": 0.3}), SMALL_MODEL, resume=True, progress=False)
    other = TodSource(source.tod, 31.0, source.detectors, source.path)
    with pytest.raises(ModelCompatibilityError, match="31 Hz"):
        train([other], tmp_path / "m", TrainConfig(**TINY), SMALL_MODEL, resume=True, progress=False)
    with pytest.raises(InputError, match="not empty"):
        _train(source, tmp_path / "m")
    r = train([source], tmp_path / "m", TrainConfig(**{**TINY, "epochs": 2}), SMALL_MODEL, resume=True, progress=False)  # more epochs is allowed
    assert r.epochs_done == 2 and len(r.history) == 2


def test_bad_inputs_leave_no_model_dir(source, tmp_path):
    short = TodSource(source.tod[:, :100], 19.0, source.detectors, source.path)
    with pytest.raises(InputError, match="too few samples"):
        _train(short, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    bad = source.tod.copy()
    bad[0, 5] = np.nan
    np.savez(tmp_path / "bad.npz", tod=bad, sampling_rate_hz=19.0)
    with pytest.raises(InputError, match="NaN"):
        train([tmp_path / "bad.npz"], tmp_path / "m", TrainConfig(**TINY), SMALL_MODEL, progress=False)
    assert not (tmp_path / "m").exists()


def test_failure_during_first_epoch_removes_model_dir(source, tmp_path, monkeypatch):
    import crab.models.gan.training as t

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(t, "sample_quality", boom)
    with pytest.raises(RuntimeError):
        _train(source, tmp_path / "m")
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------------- each option has an effect
def _weights(source, tmp_path, name, **kw):
    _train(source, tmp_path / name, **kw)
    return load_checkpoint(tmp_path / name)


BASE = dict(epochs=1, d_pretrain_epochs=0)


def test_loss_option(source, tmp_path):
    bce = _weights(source, tmp_path, "bce", **BASE)
    wgan = _weights(source, tmp_path, "wgan", **BASE, loss="wgan-gp")
    assert _changed(bce["discriminator"], wgan["discriminator"])
    assert wgan["history"]["rows"][0]["train_gp"] is not None and bce["history"]["rows"][0]["train_gp"] is None
    # the losses themselves
    cfg = TrainConfig(loss="wgan-gp", synthetic_weight=1.0)
    lr, lf = torch.tensor([2.0, 4.0]), torch.tensor([-1.0, 1.0])
    d, g = d_losses(cfg, lr, lf)
    assert float(d) == pytest.approx(0.0 - 3.0) and float(g) == pytest.approx(0.0)


def test_gradient_penalty_is_zero_for_unit_slope():
    class Lin(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, 0]  # |grad| = 1 everywhere

    real, fake = torch.randn(4, 1, 8), torch.randn(4, 1, 8)
    assert float(gradient_penalty(Lin(), real, fake, torch.Generator().manual_seed(0))) == pytest.approx(0.0)

    class Steep(torch.nn.Module):
        def forward(self, x):
            return 3 * x.flatten(1)[:, 0]

    assert float(gradient_penalty(Steep(), real, fake, torch.Generator().manual_seed(0))) == pytest.approx(4.0)


def test_optimizer_options(source, tmp_path):
    base = _weights(source, tmp_path, "base", **BASE)  # SGD for D, Adam for G
    swapped = _weights(source, tmp_path, "swap", **BASE, d_optimizer="adam", g_optimizer="sgd")
    assert "momentum_buffer" in next(iter(base["opt_d"]["state"].values()))
    assert "exp_avg" in next(iter(swapped["opt_d"]["state"].values()))
    assert "exp_avg" in next(iter(base["opt_g"]["state"].values()))
    assert "momentum_buffer" in next(iter(swapped["opt_g"]["state"].values()))
    assert _changed(base["discriminator"], swapped["discriminator"])
    assert _changed(base["generator"], swapped["generator"])


def test_label_smoothing_option(source, tmp_path):
    lr, lf = torch.tensor([30.0]), torch.tensor([-30.0])  # a perfectly confident discriminator
    assert float(d_losses(TrainConfig(loss="bce", label_smoothing=0.0), lr, lf)[0]) < 1e-6
    assert float(d_losses(TrainConfig(loss="bce", label_smoothing=0.2), lr, lf)[0]) == pytest.approx(0.2 * 30, rel=1e-3)  # penalised for over-confidence
    a = _weights(source, tmp_path, "s0", **BASE, label_smoothing=0.0)
    b = _weights(source, tmp_path, "s3", **BASE, label_smoothing=0.3)
    assert _changed(a["discriminator"], b["discriminator"])


def test_synthetic_weight_option(source, tmp_path):
    lr, lf = torch.tensor([0.0]), torch.tensor([0.0])
    d1 = float(d_losses(TrainConfig(loss="bce", synthetic_weight=1.0, label_smoothing=0.0), lr, lf)[0])
    d2 = float(d_losses(TrainConfig(loss="bce", synthetic_weight=0.5, label_smoothing=0.0), lr, lf)[0])
    assert d1 == pytest.approx(2 * np.log(2)) and d2 == pytest.approx(1.5 * np.log(2))
    a = _weights(source, tmp_path, "w1", **BASE, synthetic_weight=1.0)
    b = _weights(source, tmp_path, "w2", **BASE, synthetic_weight=0.3)
    assert _changed(a["discriminator"], b["discriminator"])


def test_pretraining_trains_only_the_discriminator(source, tmp_path, monkeypatch):
    with monkeypatch.context() as mp:
        _kill_after(mp, 1)  # stop right after the pretraining epoch
        with pytest.raises(KeyboardInterrupt):
            _train(source, tmp_path / "p", epochs=1, d_pretrain_epochs=1)
    ck = load_checkpoint(tmp_path / "p")
    assert ck["epoch"] == 1 and ck["history"]["rows"][0]["phase"] == "pretrain"
    init = _init_generator_state()
    assert all(torch.equal(ck["generator"][k], v) for k, v in init.items() if "running" not in k and "num_batches" not in k)  # generator fixed
    assert not ck["opt_g"]["state"]  # no generator step taken
    assert ck["opt_d"]["state"]  # the discriminator was trained
    # and pretraining changes where the adversarial phase ends up
    with_pre = _weights(source, tmp_path, "pre", epochs=1, d_pretrain_epochs=1)
    without = _weights(source, tmp_path, "nopre", epochs=1, d_pretrain_epochs=0)
    assert _changed(with_pre["generator"], without["generator"])


def test_extra_discriminator_steps(source, tmp_path):
    one = _weights(source, tmp_path, "d1", **BASE, d_steps_per_g_step=1)
    two = _weights(source, tmp_path, "d2", **BASE, d_steps_per_g_step=2)
    steps = lambda ck: int(next(iter(ck["opt_g"]["state"].values()))["step"])  # noqa: E731  Adam step count of G
    assert steps(one) == 4 and steps(two) == 2  # 64 windows / batch 16 = 4 D steps per epoch
    assert _changed(one["generator"], two["generator"])


def test_ema_option(source, tmp_path):
    a = _weights(source, tmp_path, "e0", **BASE, ema_decay=0.0)
    b = _weights(source, tmp_path, "e1", **BASE, ema_decay=0.5)
    assert a["ema"] is None and b["ema"] is not None
    assert _changed(b["ema"], b["generator"])


def test_paper_recipe():
    from crab.models.gan.config_file import read_config_file

    p = TrainConfig(**read_config_file("paper")["train"])
    assert (p.loss, p.d_optimizer, p.g_optimizer, p.ema_decay) == ("bce", "sgd", "adam", 0.0) and 10 <= p.d_pretrain_epochs <= 20
    assert TrainConfig(**{**read_config_file("paper")["train"], "epochs": 5}).epochs == 5


def test_removed_settings_load_at_their_old_default_else_a_one_line_error():
    """A checkpoint of the previous code holds lr_decay_epochs=0 (and lr_decay_final): it loads; a decay is refused."""
    old = {**TrainConfig().to_dict(), "lr_decay_epochs": 0, "lr_decay_final": 0.1}
    assert TrainConfig.from_dict(old) == TrainConfig()
    with pytest.raises(ModelCompatibilityError, match=r"lr_decay_epochs=40, which this version no longer has; retrain it with `crab train`") as e:
        TrainConfig.from_dict({**old, "lr_decay_epochs": 40}, "run/checkpoint.pt")
    assert "\n" not in str(e.value) and str(e.value).startswith("run/checkpoint.pt was trained with")


def test_config_validation():
    for bad in (dict(loss="hinge"), dict(d_optimizer="rmsprop"), dict(label_smoothing=0.7), dict(epochs=0), dict(synthetic_weight=0.0)):
        with pytest.raises(InputError):
            TrainConfig(**bad)
    assert TrainConfig.from_dict(TrainConfig(d_betas=(0.1, 0.9)).to_dict()) == TrainConfig(d_betas=(0.1, 0.9))


def test_batchnorm_calibration_matches_training_mode():
    torch.manual_seed(0)
    g = Generator(ModelConfig(**{**SMALL_MODEL.to_dict(), "window_samples": 64}))
    ge = calibrate_batchnorm(g, 20, 32, seed=1)
    assert not ge.training and g.training
    z = torch.randn(g.latent_shape(256, 12))
    with torch.no_grad():
        y_train, y_eval = g(z), ge(z)
    assert abs(float(y_train.std() / y_eval.std()) - 1) < 0.1


def test_quality_statistic_ranks_generators(synthetic_tod):
    a, _ = synthetic_tod(n_detectors=4, n_samples=19 * 300, glitch_rate_hz=0.3, seed=1)
    b, _ = synthetic_tod(n_detectors=4, n_samples=19 * 300, glitch_rate_hz=0.3, seed=2)
    c, _ = synthetic_tod(n_detectors=4, n_samples=19 * 300, glitch_rate_hz=0.0, seed=2)  # no glitches
    w = lambda x: x[:, : (x.shape[1] // 64) * 64].reshape(-1, 1, 64)  # noqa: E731
    sigma = 0.05
    same = quality_floor(w(a), w(b), sigma)
    worse, parts = sample_quality(w(a), w(c), sigma)
    assert same < 0.5 * worse and parts["n_glitch"] > 0.2


def test_drift_penalty_option(source, tmp_path):
    a = _weights(source, tmp_path, "dr0", **BASE, loss="wgan-gp", drift_weight=0.0)
    b = _weights(source, tmp_path, "dr1", **BASE, loss="wgan-gp", drift_weight=1.0)
    assert _changed(a["discriminator"], b["discriminator"])
    with pytest.raises(InputError):
        TrainConfig(drift_weight=-1.0)


def test_output_bound_is_the_training_range_plus_margin(source, tmp_path):
    from crab.models.dataset import prepare_training_data

    r = _train(source, tmp_path / "b", output_bound_margin=0.3)
    from crab.models.gan.transform import AmplitudeTransform

    data = prepare_training_data([source], window_samples=64, transform=AmplitudeTransform.from_dict(load_checkpoint(tmp_path / "b")["transform"]),
                                 highpass_clip_sigma=TrainConfig().highpass_clip_sigma)
    lo = min(float(s.min()) for s in data.train)
    hi = max(float(s.max()) for s in data.train)
    m = load_model(tmp_path / "b")
    assert m.model_config.output_bounds == pytest.approx((lo - 0.3, hi + 0.3))
    assert load_checkpoint(tmp_path / "b")["model_config"]["output_bounds"] == pytest.approx([lo - 0.3, hi + 0.3])
    with torch.no_grad():
        m.generator.head.bias.fill_(1e3)  # a wild generator stays inside the bound
        y = m.generator(torch.randn(m.generator.latent_shape(2, 12)))
    assert float(y.max()) <= hi + 0.3 + 1e-5
    assert r.epochs_done == 1
    _train(source, tmp_path / "nb", output_bound_margin=None)
    assert load_model(tmp_path / "nb").model_config.output_bounds is None


def test_feature_matching_option(source, tmp_path):
    from crab.models.gan.losses import feature_matching_loss

    real = torch.randn(16, 1, 64)
    assert float(feature_matching_loss(real[torch.randperm(16)], real)) == pytest.approx(0.0, abs=1e-12)  # order of windows irrelevant
    fake = (1.5 * real).requires_grad_(True)
    loss = feature_matching_loss(fake, real)
    assert float(loss.detach()) > 0.1
    loss.backward()
    assert fake.grad.abs().sum() > 0
    peaky = real.clone()
    peaky[:, 0, 10] += 5.0  # higher glitches: the window max differs
    assert float(feature_matching_loss(peaky, real)) > 1.0
    a = _weights(source, tmp_path, "fm0", **BASE, loss="wgan-gp", feature_weight=0.0)
    b = _weights(source, tmp_path, "fm1", **BASE, loss="wgan-gp", feature_weight=1.0)
    assert _changed(a["generator"], b["generator"])
    with pytest.raises(InputError):
        TrainConfig(feature_weight=-0.1)


def test_slow_noise_calibration_option(source, tmp_path):
    from crab.models.dataset import prepare_training_data
    from crab.models.gan.evaluation import calibrated_noise_params

    _train(source, tmp_path / "cal", loss="wgan-gp")
    _train(source, tmp_path / "raw", loss="wgan-gp", slow_noise_calibration=False)
    cal, raw = load_model(tmp_path / "cal"), load_model(tmp_path / "raw")
    data = prepare_training_data([source], window_samples=64)
    assert raw.noise_params == data.noise_params  # as fitted on the training data
    f = np.array(cal.noise_params.table_freq_hz)
    r = np.array(cal.noise_params.table_psd) / np.array(raw.noise_params.table_psd)
    assert np.all(r <= 1.0 + 1e-12) and np.all(r > 0)
    assert np.all(r[f > 4 * cal.highpass_hz] == 1.0)  # far above the cut the slow noise is ~0 anyway: untouched
    # a generator whose output is a large slow wave: no slow noise is added below the cut
    G = cal.generator
    with torch.no_grad():
        G.head.weight.zero_()
        G.head.bias.zero_()
        G.stem[0].weight.zero_()
    amp = 20.0 * float(np.sqrt(max(raw.noise_params.table_psd)))  # TOD units, far above the noise

    class Wave(torch.nn.Module):
        def __init__(self, g):
            super().__init__()
            self.g, self.cfg, self.margin_latents = g, g.cfg, g.margin_latents

        def latent_shape(self, batch, steps):
            return self.g.latent_shape(batch, steps)

        def forward(self, z, cond=None):
            n = z.shape[-1] * self.cfg.upsample_factor
            t = torch.arange(n, dtype=torch.float32) / 19.0
            x = amp * torch.randn(z.shape[0], 1, n // 64).repeat_interleave(64, -1)[..., :n]  # ~0.1-0.3 Hz steps
            return data.transform.forward(x + data.transform.offset + 0 * t)

    p = calibrated_noise_params(Wave(G), data, seed=1)
    fw = np.array(p.table_freq_hz)
    rw = np.array(p.table_psd) / np.array(data.noise_params.table_psd)
    assert np.all(rw[fw < cal.highpass_hz] < 0.01)


def test_glitch_preserving_highpass_option_and_old_checkpoints(source, tmp_path):
    from crab.models.gan.training import checkpoint_train_config

    assert TrainConfig().highpass_clip_sigma == 5.0
    with pytest.raises(InputError):
        TrainConfig(highpass_clip_sigma=0.0)
    a = _weights(source, tmp_path, "clip", **BASE, loss="wgan-gp")
    b = _weights(source, tmp_path, "plain", **BASE, loss="wgan-gp", highpass_clip_sigma=None)
    assert _changed(a["generator"], b["generator"])  # other training data
    # a checkpoint written before the option existed was trained on plain high-passed data: resumed so
    p = tmp_path / "plain" / "checkpoint.pt"
    ck = torch.load(p, weights_only=True)
    del ck["train_config"]["highpass_clip_sigma"]
    torch.save(ck, p)
    assert checkpoint_train_config(tmp_path / "plain").highpass_clip_sigma is None
    r = train([source], tmp_path / "plain", None, None, resume=True, progress=False)
    assert r.epochs_done == 1


def test_snapshots_are_loadable_models_and_do_not_change_training(source, tmp_path):
    """snapshot_every: the generation model of every N-th adversarial epoch in snapshots/epoch_NNNN, same training."""
    from crab.models.gan.store import load_model

    plain = _weights(source, tmp_path, "plain", epochs=4, d_pretrain_epochs=1)
    snap = _weights(source, tmp_path, "snap", epochs=4, d_pretrain_epochs=1, snapshot_every=2)
    assert not _changed(plain["generator"], snap["generator"]) and not _changed(plain["discriminator"], snap["discriminator"])
    assert not (tmp_path / "plain" / "snapshots").exists()
    # adversarial epochs 2 and 4 are history epochs 3 and 5 (after one pretraining epoch)
    snaps = sorted(p.name for p in (tmp_path / "snap" / "snapshots").iterdir())
    assert snaps == ["epoch_0003", "epoch_0005"]
    m = load_model(tmp_path / "snap" / "snapshots" / "epoch_0005")
    assert m.extra["epoch"] == 5
    with pytest.raises(InputError, match="snapshot_every"):
        TrainConfig(snapshot_every=-1)
