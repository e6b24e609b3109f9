"""Losses of GAN training (``TrainConfig.loss``) and the discriminator's accuracy statistics.

``"bce"``: the discriminator minimises ``BCE(D(real), 1 - label_smoothing) +
synthetic_weight * BCE(D(fake), 0)`` (one-sided label smoothing), the
generator the non-saturating ``BCE(D(fake), 1)``.  ``"wgan-gp"``: the critic
minimises ``synthetic_weight * E[D(fake)] - E[D(real)] + gp_weight * GP``
(Gulrajani et al. 2017) plus the drift penalty, the generator ``-E[D(fake)]``;
label smoothing does not apply.  :func:`feature_matching_loss` is an optional
extra term of the generator loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crab.models.gan.config import TrainConfig
from crab.models.gan.network import Discriminator


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def gradient_penalty(D: Discriminator, real: torch.Tensor, fake: torch.Tensor, gen: torch.Generator, cond: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP: ``E[(|grad D(x_mix)| - 1)^2]`` on random mixes of real and fake (same conditions)."""
    eps = torch.rand(real.shape[0], 1, 1, generator=gen)
    mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
    score = D(mix) if cond is None else D(mix, cond)
    (grad,) = torch.autograd.grad(score.sum(), mix, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()


#: Order statistics of a window (fractions of its length) matched by :func:`feature_matching_loss`.
FEATURE_QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)


def window_order_statistics(x: torch.Tensor) -> torch.Tensor:
    """Order statistics (:data:`FEATURE_QUANTILES`) and RMS of each window, differentiable (torch).

    Parameters
    ----------
    x : torch.Tensor, shape (..., n_samples)
        Windows in the transformed amplitude space.

    Returns
    -------
    torch.Tensor, shape (n_windows, len(FEATURE_QUANTILES) + 1)
        One row per window (batch x channels flattened): the quantiles, then the RMS about the mean.
    """
    x = x.reshape(-1, x.shape[-1])
    s = torch.sort(x, dim=-1).values
    idx = [min(int(round(q * (x.shape[-1] - 1))), x.shape[-1] - 1) for q in FEATURE_QUANTILES]
    rms = (x - x.mean(dim=-1, keepdim=True)).pow(2).mean(dim=-1).add(1e-12).sqrt()
    return torch.cat([s[:, idx], rms[:, None]], 1)


def feature_matching_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Feature-matching term of the generator loss (``TrainConfig.feature_weight``).

    The squared 1-D Wasserstein distance between the batch distributions of each
    window statistic (:func:`window_order_statistics`: window maximum, upper
    quantiles, median, lower quantiles, minimum and RMS, transformed units),
    summed over statistics.  Differentiable in ``fake``."""
    ff = torch.sort(window_order_statistics(fake), dim=0).values
    fr = torch.sort(window_order_statistics(real), dim=0).values
    if ff.shape[0] != fr.shape[0]:
        raise ValueError("fake and real batches must have the same size")
    return (ff - fr).pow(2).mean(dim=0).sum()


def d_losses(cfg: TrainConfig, lr: torch.Tensor, lf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(discriminator loss without GP, generator loss) from logits on real and fake windows."""
    if cfg.loss == "bce":
        d = _bce(lr, 1.0 - cfg.label_smoothing) + cfg.synthetic_weight * _bce(lf, 0.0)
    else:
        d = cfg.synthetic_weight * lf.mean() - lr.mean()
    return d, g_loss_fn(cfg, lf)


def g_loss_fn(cfg: TrainConfig, lf: torch.Tensor) -> torch.Tensor:
    """Generator loss from the discriminator's logits on fake windows (non-saturating BCE, or -critic)."""
    return _bce(lf, 1.0) if cfg.loss == "bce" else -lf.mean()


def d_stats(cfg: TrainConfig, lr: torch.Tensor, lf: torch.Tensor) -> dict[str, float]:
    """Accuracy and mean score on real and fake.  BCE: threshold 0 logit, score = probability;
    WGAN: threshold halfway between the mean critic values, score = raw critic."""
    if cfg.loss == "bce":
        thr, sr, sf = 0.0, torch.sigmoid(lr).mean(), torch.sigmoid(lf).mean()
    else:
        sr, sf = lr.mean(), lf.mean()
        thr = float(0.5 * (sr + sf))
    return {"d_acc_real": float((lr > thr).float().mean()), "d_acc_fake": float((lf <= thr).float().mean()), "d_score_real": float(sr), "d_score_fake": float(sf)}
