"""Networks (paper, section 3.1) and the streaming-generator contract generation relies on."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from crab.models.gan.config import ModelConfig

from crab.models.gan.network import Discriminator, Generator, event_noise, peak_view

SMALL = dict(window_samples=64, latent_dim=20, noise_dim=16, event_channels=0, event_subsample=False, event_kernel=0, generator_channels=(8, 8, 8, 8, 8), discriminator_channels=(8, 8, 8, 8), discriminator_peak_view=False)


def test_discriminator_layout():
    d = Discriminator(ModelConfig(**SMALL))
    convs = [m for m in d.modules() if isinstance(m, nn.Conv1d)]
    norms = [m for m in d.modules() if isinstance(m, nn.GroupNorm)]
    assert len(convs) == 4 and len(norms) == 4 and all(n.num_groups == 1 for n in norms)  # layer normalisation
    assert any(isinstance(m, nn.LeakyReLU) for m in d.modules())
    assert isinstance(d.head, nn.Linear)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in d.modules())
    assert d(torch.randn(5, 1, 64)).shape == (5,)


def test_generator_mirrors_with_batchnorm_and_configurable_latent():
    for latent in (19, 28):
        g = Generator(ModelConfig(**{**SMALL, "latent_dim": latent}))
        assert sum(isinstance(m, nn.BatchNorm1d) for m in g.modules()) == 5
        assert sum(isinstance(m, nn.Upsample) for m in g.modules()) == 4
        assert any(isinstance(m, nn.LeakyReLU) for m in g.modules())
        z = torch.randn(g.latent_shape(2, 7))
        assert z.shape == (2, latent, 7) and g(z).shape == (2, 1, 7 * 16)
    with pytest.raises(ValueError, match="noise_dim"):
        ModelConfig(**{**SMALL, "latent_dim": 8})


def test_noise_channels_feed_full_resolution_noise():
    torch.manual_seed(0)
    g = Generator(ModelConfig(**SMALL)).eval()
    z = torch.randn(1, 20, 12)
    z2 = z.clone()
    z2[0, 4 + 5, 6] += 3.0  # noise channel 5 of latent step 6 -> output sample 16 * 6 + 5
    with torch.no_grad():
        d = (g(z2) - g(z)).abs()[0, 0]
    changed = torch.nonzero(d > 1e-6).flatten()
    assert changed.min() >= 16 * 6 + 5 - 4 and changed.max() <= 16 * 6 + 5 + 4  # local: two k=5 convolutions
    assert ModelConfig(**{**SMALL, "noise_dim": 0}).noise_dim == 0


def test_event_channels_are_a_sparse_point_process():
    """The last noise channels become events: zero except where |z| > threshold, at that exact sample."""
    torch.manual_seed(0)
    noise = torch.randn(3, 2, 5000)
    sp = event_noise(noise, 1, 2.0)
    assert torch.equal(sp[:, 0], noise[:, 0])  # the Gaussian channel is untouched
    ev = sp[:, 1]
    assert torch.equal(ev == 0, noise[:, 1].abs() <= 2.0)
    assert abs((ev != 0).float().mean().item() - 0.0455) < 0.005  # P(|z| > 2)
    # sub-sample placement: each event is split between its sample and the next, the total is kept
    sub = event_noise(noise, 1, 2.0, subsample=True)[:, 1]
    p_last = 0.5 * (1 + torch.erf(noise[:, 0, -1] / 2**0.5))
    assert torch.allclose(sub.sum(1) + ev[:, -1] * p_last, ev.sum(1), atol=1e-3)  # only the last sample's moved part is lost
    i = torch.nonzero(ev[0, :-2] * (ev[0, 1:-1] == 0) * torch.cat([torch.ones(1), (ev[0, :-3] == 0).float()])).flatten()[0]  # an isolated event
    p = 0.5 * (1 + torch.erf(noise[0, 0, i] / 2**0.5))
    assert torch.isclose(sub[0, i], ev[0, i] * (1 - p)) and torch.isclose(sub[0, i + 1], ev[0, i] * p)
    assert 0.4 < float((sub[:, 1:] != 0).sum() - (ev[:, 1:] != 0).sum()) / float((ev != 0).sum()) < 1.0  # next samples gain events

    cfg = ModelConfig(**{**SMALL, "noise_dim": 32, "latent_dim": 36, "event_channels": 1, "event_threshold": 2.0, "event_inputs": True})
    g = Generator(cfg).eval()
    z = torch.randn(1, 36, 12)
    z[0, 4 + 16 + 5, 6] = 0.5  # event channel (noise channel 1), latent step 6 -> sample 16 * 6 + 5
    z2 = z.clone()
    z2[0, 4 + 16 + 5, 6] = 1.5  # still below the threshold: no change
    with torch.no_grad():
        assert torch.equal(g(z2), g(z))
        z2[0, 4 + 16 + 5, 6] = 3.0  # an event: changes the output, locally
        changed = torch.nonzero((g(z2) - g(z)).abs()[0, 0] > 1e-6).flatten()
    assert len(changed) and changed.min() >= 16 * 6 + 5 - 4 and changed.max() <= 16 * 6 + 5 + 4
    with pytest.raises(ValueError, match="event_channels"):
        ModelConfig(**{**SMALL, "event_channels": 2})  # only one noise channel
    with pytest.raises(ValueError, match="event_channels"):
        ModelConfig(**{**SMALL, "event_channels": -1})
    with pytest.raises(ValueError, match="Gaussian noise channel"):
        ModelConfig(**{**SMALL, "event_channels": 1, "event_subsample": True})


def test_event_filter_gives_each_event_a_learned_pulse():
    """event_kernel: the filtered events are extra last-stage inputs; an event reaches kernel // 2 samples further."""
    base = {**SMALL, "noise_dim": 32, "latent_dim": 36, "event_channels": 1, "event_threshold": 2.0, "additive_glitches": False, "event_inputs": True}
    cfg = ModelConfig(**{**base, "event_kernel": 21})
    g = Generator(cfg).eval()
    assert g.stages[-1][1].in_channels == 8 + 2 + 2  # previous stage, 2 noise channels, 2 pulses
    assert g.margin_latents > Generator(ModelConfig(**base)).margin_latents
    # the filter starts causal: an isolated event gives decaying pulses from its sample on
    noise = torch.zeros(1, 2, 60)
    noise[0, 1, 20] = 3.0
    pulses = g.event_filter(noise)[0, 2:]
    assert torch.all(pulses[:, :20] == 0) and torch.all(pulses[:, 20:31] > 0) and torch.all(pulses[:, 31:] == 0)
    assert pulses[0, 22] < pulses[1, 22] and torch.all(torch.diff(pulses[:, 20:31], dim=1) < 0)
    # an event changes the output up to kernel // 2 samples further than without the filter
    z = torch.randn(1, 36, 12)
    z[0, 4 + 16 + 5, 6] = 0.0
    z2 = z.clone()
    z2[0, 4 + 16 + 5, 6] = 3.0  # event at sample 16 * 6 + 5 = 101
    with torch.no_grad():
        changed = torch.nonzero((g(z2) - g(z)).abs()[0, 0] > 1e-7).flatten()
    assert changed.min() >= 101 - 4 - 10 and changed.max() <= 101 + 4 + 10 and changed.max() > 101 + 4
    for bad in ({"event_kernel": 20}, {"event_kernel": -1}):
        with pytest.raises(ValueError, match="event_kernel"):
            ModelConfig(**{**base, **bad})
    assert Generator(ModelConfig(**{**base, "event_kernel": 21, "event_channels": 0})).event_filter is None  # ignored without events


def test_additive_glitches_are_pareto_pulses_added_in_tod_units():
    """additive_glitches: every event adds amplitude x pulse before the transform; amplitudes are Pareto(a, 1 / c)."""
    base = {**SMALL, "noise_dim": 48, "latent_dim": 52, "event_channels": 2, "event_subsample": True, "event_kernel": 21, "transform_out_scale": 0.8}
    g = Generator(ModelConfig(**base)).eval()
    add = g.additive
    assert add is not None and tuple(add.table.shape) == (4, 8, 21)  # height bands x phases x taps
    a, c = add.scale_index()
    torch.testing.assert_close(a, torch.full((2,), 0.5))
    torch.testing.assert_close(c, torch.ones(2))
    # the amplitudes of the events are Pareto: log(A / a) / c is Exp(1)
    z = torch.randn(400_000, 2, 1, generator=torch.Generator().manual_seed(3))
    hit = z.abs() > add.threshold
    with torch.no_grad():
        e = (add.log_amplitudes(z) - math.log(0.5))[hit]
    assert 0.97 < float(e.mean()) < 1.03 and 0.95 < float(e.std()) < 1.05
    # an isolated event at phase 0 adds A x its causal 1-sample decay to the output in TOD units (sinh(k y))
    z = torch.randn(1, 52, 12, generator=torch.Generator().manual_seed(4))
    gauss, ev = 4 + 0 * 16, 4 + 1 * 16  # latent rows of the first Gaussian and the first event channel (sample 16 j + i)
    z[:, ev : ev + 32, :] = 0.0
    z[0, gauss + 5, 6] = -10.0  # phase Phi(-10) ~ 0 at sample 16 * 6 + 5 = 101
    z[0, ev + 5, 6] = 3.0  # the event
    k = 0.8
    with torch.no_grad():
        y = g(z)[0, 0]
        g.additive = None
        y_net = g(z)[0, 0]
        g.additive = add
        amp = float(torch.exp(add.log_amplitudes(torch.tensor([3.0]), torch.tensor([0]))))
    d = torch.sinh(k * y) - torch.sinh(k * y_net)
    expected = torch.zeros_like(d)
    expected[101:112] = amp * torch.exp(-torch.arange(11.0))
    torch.testing.assert_close(d, expected, rtol=1e-4, atol=1e-4 * amp)
    # without event channels or pulses there are no additive glitches; legacy files have none
    assert Generator(ModelConfig(**{**base, "event_channels": 0})).additive is None
    assert Generator(ModelConfig(**{**base, "event_kernel": 0, "event_inputs": True})).additive is None
    with pytest.raises(ValueError, match="transform_out_scale"):
        Generator(ModelConfig(**{**base, "transform_out_scale": None}))(torch.randn(1, 52, 12))
    with pytest.raises(ValueError, match="transform_out_scale"):
        ModelConfig(**{**base, "transform_out_scale": -1.0})
    with pytest.raises(ValueError, match="one output channel per network run"):  # one pulse train would go to every detector
        ModelConfig(**{**base, "out_channels": 4})
    wafer = Generator(ModelConfig(**{**base, "out_channels": 2, "shared_latent_dim": 8}))  # exchangeable: each detector its own glitches
    assert wafer.additive is not None and wafer(torch.randn(1, 8 + 2 * 52, 12)).shape == (1, 2, 192)


def test_streaming_generator_is_translation_equivariant_with_finite_margin():
    torch.manual_seed(0)
    g = Generator(ModelConfig(**SMALL)).eval()
    m, f = g.margin_latents, 16
    z = torch.randn(1, 20, 30)
    with torch.no_grad():
        y = g(z)
        y_shift = g(z[..., 3:])  # drop three latent steps on the left
        z2 = z.clone()
        z2[..., : 10 - m] = torch.randn(1, 20, 10 - m)  # change latents further than the margin
        y2 = g(z2)
    lo, hi = (3 + m) * f, (30 - m) * f
    torch.testing.assert_close(y[..., lo:hi], y_shift[..., lo - 3 * f : hi - 3 * f])
    torch.testing.assert_close(y[..., 10 * f : hi], y2[..., 10 * f : hi])


def test_model_config_round_trip():
    cfg = ModelConfig(**SMALL, minibatch_std=False)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    default = ModelConfig()
    assert ModelConfig.from_dict(default.to_dict()) == default
    assert (default.event_channels, default.event_subsample, default.event_kernel, default.noise_dim, default.latent_dim) == (3, True, 33, 64, 72)
    # a model file written before the event fields existed keeps its network (no events, no peak view)
    assert default.additive_glitches and default.discriminator_peak_view
    new = ModelConfig(**{**SMALL, "discriminator_peak_view": True})
    old = {k: v for k, v in new.to_dict().items() if k not in ("event_channels", "event_subsample", "event_kernel", "additive_glitches", "transform_out_scale", "discriminator_peak_view", "event_inputs")}
    assert ModelConfig.from_dict(old) == ModelConfig(**SMALL, additive_glitches=False, event_inputs=True)


def test_removed_model_settings_load_at_their_old_default_else_a_one_line_error():
    """A model of the previous code stores generator_arch, spectral_norm and causal_pulses at their old
    defaults: it loads as the same network; any other value is refused with how to retrain."""
    from crab.core.errors import ModelCompatibilityError

    stored = {**ModelConfig(**SMALL).to_dict(), "generator_arch": "streaming", "spectral_norm": False, "causal_pulses": False}
    assert ModelConfig.from_dict(stored) == ModelConfig(**SMALL)
    for key, value in (("generator_arch", "paper"), ("spectral_norm", True), ("causal_pulses", True)):
        with pytest.raises(ModelCompatibilityError, match=rf"^old_model was trained with {key}=.*, which this version no longer has; retrain it with `crab train`$"):
            ModelConfig.from_dict({**stored, key: value}, "old_model")


def test_soft_bound_is_a_smooth_clamp():
    from crab.models.gan.network import soft_bound

    lo, hi, w = -3.0, 6.0, 0.5
    y = torch.linspace(-50, 50, 200001, dtype=torch.float64)
    out = soft_bound(y, lo, hi, w)
    mid = (y >= lo + w) & (y <= hi - w)
    assert torch.equal(out[mid], y[mid])  # identity in the middle
    assert out.min() >= lo and out.max() <= hi  # never beyond the bounds
    assert out.min() < lo + 0.01 and out.max() > hi - 0.01  # but saturates at them
    near = (y > lo - 5) & (y < hi + 5)
    assert torch.all(torch.diff(out[near]) > 0)  # strictly increasing near the range: nothing merged
    slope = torch.diff(out) / torch.diff(y)
    assert torch.max(torch.abs(torch.diff(slope))) < 1e-3  # continuous derivative at the knees
    yn = y.numpy().astype(np.float32)
    np.testing.assert_allclose(soft_bound(yn, lo, hi, w), out.numpy(), rtol=1e-6, atol=1e-6)
    assert soft_bound(yn, lo, hi, w).dtype == np.float32


def test_generator_output_bound():
    lo, hi = -1.5, 2.0
    cfg = ModelConfig(**{**SMALL, "output_bounds": (lo, hi)})
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    g = Generator(cfg)
    free = Generator(ModelConfig(**SMALL))
    free.load_state_dict(g.state_dict())  # the bound adds no parameters: old models load unchanged
    with torch.no_grad():
        g.head.bias.fill_(50.0)
        free.head.bias.fill_(50.0)
        z = torch.randn(g.latent_shape(3, 8))
        assert free(z).max() > 40  # unbounded output
        y = g(z)
        assert y.max() <= hi and y.max() > hi - 1e-3
        g.head.bias.fill_(-50.0)
        assert g(z).min() >= lo
    with pytest.raises(ValueError):
        ModelConfig(**{**SMALL, "output_bounds": (0.0, 0.5)})  # narrower than the two knees


def test_peak_view_is_the_glitch_shape_at_any_height():
    k = 0.7
    n = torch.arange(64, dtype=torch.float64)
    pulse = torch.where(n >= 30, torch.exp(-(n - 30) / 3.0), torch.zeros(64)) + 0.4 * (n == 29)
    views = []
    for height in (20.0, 500.0):
        y = torch.asinh(height * pulse) / k  # transformed units of a glitch `height` transform scales high
        views.append(peak_view(y[None], k, 2.5)[0])
        assert views[-1].max() == pytest.approx(1.0)
        assert views[-1][29] == pytest.approx(0.4, abs=1e-3)  # the rise the asinh compresses
    torch.testing.assert_close(views[0], views[1])
    y = torch.asinh(torch.full((64,), 0.3) * torch.sin(n)) / k  # quiet window: below the floor, kept small
    assert peak_view(y[None], k, 2.5).abs().max() < 0.3 / 2.5 * 2.1


def test_discriminator_peak_view_channel():
    cfg = ModelConfig(**{**SMALL, "discriminator_peak_view": True, "transform_out_scale": 0.7})
    d = Discriminator(cfg)
    assert d.features[0].in_channels == 3  # raw, differences, peak view
    x = torch.randn(4, 1, 64, requires_grad=True)
    (g,) = torch.autograd.grad(d(x).sum(), x, create_graph=True)  # the gradient penalty differentiates twice
    g.square().sum().backward()
    with torch.no_grad():  # the peak view alone: a window and the same window twice as high (in TOD units) look the same
        d.features[0].weight[:, :2].zero_()
        y = torch.asinh(torch.exp(-torch.arange(64.0) / 4.0) * 30.0)[None, None] / 0.7
        y2 = torch.asinh(torch.sinh(0.7 * y) * 2.0) / 0.7
        torch.testing.assert_close(d(y), d(y2), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="transform_out_scale"):
        Discriminator(ModelConfig(**{**SMALL, "discriminator_peak_view": True}))


def test_discriminator_diff_channel():
    cfg = ModelConfig(**{**SMALL, "discriminator_diff": True})
    d = Discriminator(cfg)
    assert d.features[0].in_channels == 2
    x = torch.randn(3, 1, 64)
    assert d(x).shape == (3,)
    # the added channel is the first difference: a constant offset changes only the raw channel's input
    with torch.no_grad():
        d.features[0].weight[:, 0].zero_()
        torch.testing.assert_close(d(x), d(x + 5.0))


def test_without_event_inputs_the_network_does_not_see_the_events():
    """event_inputs off: the event channels only place the additive glitches: changing an event latent
    changes the output by that glitch alone (the network's part is the same), and the last stage has
    no event inputs."""
    base = {**SMALL, "noise_dim": 48, "latent_dim": 52, "event_channels": 2, "event_subsample": True, "event_kernel": 21, "transform_out_scale": 0.8}
    on, off = Generator(ModelConfig(**base, event_inputs=True)).eval(), Generator(ModelConfig(**base)).eval()  # off: the default
    assert on.event_filter is not None and off.event_filter is None
    assert on.stage_noise_channels == 3 + 2 * 2 and off.stage_noise_channels == 1
    z = torch.randn(1, 52, 12, generator=torch.Generator().manual_seed(5))
    z2 = z.clone()
    z2[0, 4 + 16 + 5, 6] = 4.0  # an event of the first event channel at sample 101
    for g, network_sees in ((off, False), (on, True)):
        add = g.additive
        with torch.no_grad():
            g.additive = None  # the network's part alone
            d = (g(z2) - g(z)).abs().max()
            g.additive = add
        assert (float(d) > 1e-6) == network_sees
