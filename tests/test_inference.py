"""The compiled form of the streaming generator gives the module's samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crab.models.gan.inference import (
    CompiledGenerator,
    NotCompilable,
    compile_generator,
)
from crab.models.gan.config import ModelConfig
from crab.models.gan.network import Generator

#: Small streaming generator (as tests/test_generation.py's TINY): runs in milliseconds.
SMALL = {"window_samples": 64, "latent_dim": 24, "noise_dim": 16, "event_channels": 0, "event_subsample": False, "event_kernel": 0, "generator_channels": (8, 8, 8, 8, 8), "transform_out_scale": 1.5}
#: Event channels (three, beside one Gaussian channel) with sub-sample phases and 17-tap pulses.
EVENTS = {"latent_dim": 72, "noise_dim": 64, "event_channels": 3, "event_subsample": True, "event_kernel": 17, "event_threshold": 1.5}

CONFIGS = {
    "plain": {},
    "plain-bounded": {"output_bounds": (-2.0, 3.0)},
    "events-no-pulses": dict(EVENTS, event_kernel=0, additive_glitches=False, event_inputs=True),
    "events-filter": dict(EVENTS, additive_glitches=False, event_inputs=True),
    "events-additive": dict(EVENTS, additive_glitches=True, output_bounds=(-3.0, 8.0)),
    "events-additive-whole-samples": dict(EVENTS, event_subsample=False, additive_glitches=True),
    "events-additive-event-inputs": dict(EVENTS, additive_glitches=True, event_inputs=True, output_bounds=(-3.0, 8.0)),
    "conditioned": {"cond_dim": 1},
    "conditioned-events-additive": dict(EVENTS, cond_dim=1, additive_glitches=True, output_bounds=(-3.0, 8.0)),
    "multi-channel": {"out_channels": 3},
    "multi-channel-5": {"out_channels": 5, "cond_dim": 1},
    # as `crab train --joint-detectors` builds it (training.JOINT_SHARED_LATENT_DIM shared latents)
    "wafer": dict(EVENTS, out_channels=4, shared_latent_dim=8, additive_glitches=True, output_bounds=(-3.0, 8.0)),
    "wafer-conditioned": dict(EVENTS, out_channels=3, shared_latent_dim=8, cond_dim=1, additive_glitches=False, event_inputs=True),
}


def random_generator(seed: int = 0, **cfg) -> Generator:
    """A generator with random weights and non-trivial batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    g = Generator(ModelConfig(**{**SMALL, **cfg}))
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.1)
            elif isinstance(m, torch.nn.Conv1d):
                m.weight.normal_(0.0, 1.5 / np.sqrt(m.weight[0].numel()))
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.1)
        if g.additive is not None:
            g.additive.log_a0.normal_(0.0, 0.05)
            g.additive.log_c1.normal_(0.0, 0.02)
            g.additive.table.normal_(0.0, 0.3)  # a pulse that changes with the height and the phase
            g.additive.band_log_amp.copy_(torch.linspace(-2.0, 2.0, g.additive.n_bands))
    return g.eval()


def module_and_compiled(g: Generator, n_steps: int, seed: int = 1):
    """The module's output (channels, samples) and the compiled form's (channels, valid samples) on the same latents."""
    torch.manual_seed(seed)
    z = torch.randn(g.latent_shape(1, n_steps))[0].T.contiguous()  # (steps, z_dim)
    c = None if not g.cfg.cond_dim else np.linspace(-0.8, 0.9, g.cfg.cond_dim)
    compiled = compile_generator(g)
    with torch.inference_mode():
        cond = None if c is None else torch.from_numpy(c.astype(np.float32))[None]
        ref = g(z.T.contiguous()[None], cond)[0].numpy()
        out = compiled.generate(z, c)
    return ref, out, compiled


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_compiled_equals_module(name):
    g = random_generator(**CONFIGS[name])
    ref, out, compiled = module_and_compiled(g, 40 + 2 * g.margin_latents)
    assert isinstance(compiled, CompiledGenerator)
    assert out.dtype == np.float32 and out.shape[0] == ref.shape[0] == g.cfg.out_channels
    assert compiled.offset + out.shape[1] + compiled.end_loss == ref.shape[1]
    # the valid range is inside the range that GanSource takes from each tile
    f, m = g.cfg.upsample_factor, g.margin_latents
    assert compiled.offset <= f * m and compiled.end_loss <= f * m
    a = ref[:, compiled.offset : compiled.offset + out.shape[1]]
    assert np.all(np.isfinite(out))
    scale = float(np.max(np.abs(a)))
    assert scale > 0.1  # a non-trivial output
    assert float(np.max(np.abs(a - out))) <= 1e-5 * scale  # float32 rounding (GanSource checks 1e-4)


def test_events_occur_in_the_compared_outputs():
    """The event configurations compare outputs that contain events and their pulses."""
    g = random_generator(**CONFIGS["events-additive"])
    n_steps = 40 + 2 * g.margin_latents
    torch.manual_seed(1)
    z = torch.randn(g.latent_shape(1, n_steps))[0]
    f = g.cfg.upsample_factor
    noise = z[-g.noise_dim :].reshape(-1, f, n_steps).transpose(1, 2).reshape(-1, n_steps * f)
    assert int((noise[-3:].abs() > g.cfg.event_threshold).sum()) > 50


def test_linear_output_is_sinh_of_the_output():
    g = random_generator(**CONFIGS["events-additive"])
    compiled = compile_generator(g)
    torch.manual_seed(2)
    z = torch.randn(200, g.input_latent_dim)
    with torch.inference_mode():
        y = compiled.run(z)
        lin = compiled.run(z, linear=True)
    k = g.out_scale
    np.testing.assert_allclose(np.arcsinh(lin) / k, y, rtol=0, atol=1e-6 * float(np.max(np.abs(y))))
    plain = compile_generator(random_generator(**CONFIGS["plain"]))
    with pytest.raises(ValueError, match="linear output"):
        plain.run(torch.randn(200, 24), linear=True)


def test_conditioned_needs_cond():
    compiled = compile_generator(random_generator(**CONFIGS["conditioned"]))
    with pytest.raises(ValueError, match="give cond"):
        compiled.run(torch.randn(200, 24))


def test_wafer_runs_each_detector_on_its_assembled_latents():
    """generate() of an exchangeable wafer is run() on Generator.assemble_latents of each detector, byte for byte."""
    g = random_generator(**CONFIGS["wafer"])
    compiled = compile_generator(g)
    torch.manual_seed(3)
    z = torch.randn(g.latent_shape(1, 150))[0].T.contiguous()
    with torch.inference_mode():
        whole = compiled.generate(z)
        rows = [compiled.run(g.assemble_latents(z.T, r).T.contiguous()) for r in range(g.cfg.out_channels)]
    assert np.array_equal(whole, np.concatenate(rows, axis=0))


def test_compiled_form_is_a_snapshot():
    """Later changes of the module's weights do not reach the compiled form."""
    g = random_generator(**CONFIGS["events-additive"])
    compiled = compile_generator(g)
    torch.manual_seed(4)
    z = torch.randn(150, g.input_latent_dim)
    with torch.inference_mode():
        before = compiled.run(z)
        for p in g.parameters():
            p.mul_(2.0)
        after = compiled.run(z)
    assert np.array_equal(before, after)


def test_training_mode_is_not_compilable():
    g = random_generator().train()
    with pytest.raises(NotCompilable, match="training mode"):
        compile_generator(g)


def test_changed_layer_is_not_compilable():
    g = random_generator()
    g.stages[1][1] = torch.nn.Conv1d(8, 8, 5, padding=4, dilation=2, bias=False)
    with pytest.raises(NotCompilable, match="stage 1"):
        compile_generator(g)
    g = random_generator()
    g.head = torch.nn.Conv1d(8, 1, 5, stride=2, padding=2)
    with pytest.raises(NotCompilable, match="head"):
        compile_generator(g)
    g = random_generator()
    g.stem[2] = torch.nn.Tanh()
    with pytest.raises(NotCompilable, match="stem"):
        compile_generator(g)
