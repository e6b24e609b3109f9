"""The generator as generation will run it, for evaluation and saving during training.

Latents of training windows, the central crop that generation keeps, the
batch-norm calibration of the eval-mode generator and the slow-noise model
calibrated against the generator's own low-frequency power.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from crab.core import rng
from crab.models.dataset import TrainingData
from crab.models.gan.network import Generator
from crab.physics.noise import NoiseParams, measured_psd, slow_noise_complement


def seed_from(seed: int, *key: int) -> int:
    """A torch seed from the run's ``seed`` and the stream ``key`` (``crab.core.rng.generator(seed, "training", *key)``)."""
    return int(rng.generator(seed, "training", *key).integers(0, 2**62))


def window_latents(G: Generator, n: int, gen: torch.Generator) -> torch.Tensor:
    """Standard-normal latents for ``n`` windows of ``G``: the window plus ``margin_latents`` steps on both sides."""
    steps = G.coarse_len + 2 * G.margin_latents
    return torch.randn(G.latent_shape(n, steps), generator=gen)


def generate_windows(G: Generator, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
    """Generator output cropped to the central window, as generation does (no edge effects learned).

    ``cond`` (batch, cond_dim): normalised conditions (:func:`crab.models.gan.network.normalize_cond`)."""
    x = G(z, cond)
    m = G.margin_latents * G.cfg.upsample_factor
    return x[..., m : m + G.cfg.window_samples]


#: Rows x latent steps of generator output whose PSD calibrates the slow noise (4 x 65536 samples).
CALIBRATION_ROWS, CALIBRATION_STEPS = 4, 4096


def calibrated_noise_params(G: Generator, data: TrainingData, seed: int) -> NoiseParams:
    """The slow-noise model for generation with ``G`` (eval mode): ``data.noise_params`` with its
    table reduced below the high-pass cut by the power ``G``'s own output already has there
    (:func:`crab.physics.noise.slow_noise_complement`; PSD measured as :func:`crab.physics.noise.fit_noise_params`
    does, on ``CALIBRATION_ROWS`` windows (wafers) of ``CALIBRATION_STEPS`` latent steps from a
    fixed stream, averaged over +-cut / 4 around each frequency).  A conditioned generator is
    measured at the middle of its trained range.

    Unchanged without a high-pass or a PSD table.
    """
    p = data.noise_params
    if not (data.highpass_hz and p.table_freq_hz):
        return p
    gen = torch.Generator().manual_seed(seed_from(seed, 5))
    m = G.margin_latents
    z = torch.randn(G.latent_shape(CALIBRATION_ROWS, CALIBRATION_STEPS + 2 * m), generator=gen)
    c = torch.zeros(CALIBRATION_ROWS, G.cfg.cond_dim) if G.cfg.cond_dim else None
    f = G.cfg.upsample_factor
    with torch.no_grad():
        y = G(z, c)[..., m * f : (m + CALIBRATION_STEPS) * f]
    x = data.transform.inverse(y.reshape(-1, y.shape[-1]).numpy().astype(np.float64))
    freq, psd = measured_psd(x, data.sampling_rate_hz, nperseg=min(4096, x.shape[-1]))
    return slow_noise_complement(p, freq, psd, data.highpass_hz, smooth_hz=data.highpass_hz / 4)


def calibrate_batchnorm(G: Generator, n_batches: int, batch_size: int, seed: int, cond_pool: torch.Tensor | None = None) -> Generator:
    """A copy of ``G`` in eval mode whose BN running statistics are the exact
    average over ``n_batches`` fixed latent batches (cumulative moving average),
    so that eval mode (used at generation) reproduces the training-mode output.
    A conditioned generator gets conditions drawn from ``cond_pool`` (n, cond_dim)."""
    g = copy.deepcopy(G)
    bns = [m for m in g.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    gen = torch.Generator().manual_seed(seed_from(seed, 2))
    g.train()
    with torch.no_grad():
        for _ in range(n_batches):
            z = window_latents(g, batch_size, gen)
            c = None if cond_pool is None else cond_pool[torch.randint(0, len(cond_pool), (batch_size,), generator=gen)]
            g(z, c)
    for m in bns:
        m.momentum = 0.1
    return g.eval()
