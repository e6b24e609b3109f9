"""The floor and null machinery: the reference split in halves and in random re-splits.

The **floor** of a metric is its value between the two halves of the
reference (half A: the first ``n_blocks // 2`` time blocks, half B the rest).
The **null** distribution of a statistic is its value between the halves of
``n_null`` random re-splits of the reference blocks; its ``n_sigma`` point
(:func:`crab.validation.metrics.null_threshold`) is the pass threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from crab.core import rng
from crab.validation.config import ValidationConfig
from crab.validation.set_analysis import SetAnalysis

#: A statistic between the blocks ``ma`` of one set and the blocks ``mb`` of another: ``(value, quantities)``.
Stat = Callable[[SetAnalysis, np.ndarray, SetAnalysis, np.ndarray], tuple[float, dict[str, Any]]]


def _random_half(g: np.random.Generator, n_blocks: int) -> np.ndarray:
    m = np.zeros(n_blocks, bool)
    m[g.permutation(n_blocks)[: n_blocks // 2]] = True
    return m


def floor_halves(n_blocks: int) -> np.ndarray:
    """The reference blocks of half A of the MC-vs-MC floor (the first ``n_blocks // 2``); half B is the rest."""
    return np.arange(n_blocks) < n_blocks // 2


def null_masks(cfg: ValidationConfig, n_blocks: int) -> list[np.ndarray]:
    """The ``cfg.n_null`` random half-splits of ``n_blocks`` reference blocks (seeded by ``cfg.seed``)."""
    g = rng.generator(cfg.seed, "validation", 1)
    return [_random_half(g, n_blocks) for _ in range(cfg.n_null)]


def null_distribution(stat: Stat, ref: SetAnalysis, masks: list[np.ndarray]) -> np.ndarray:
    """``stat`` between the two halves of every random re-split ``masks`` of the reference."""
    return np.array([stat(ref, m, ref, ~m)[0] for m in masks])


@dataclass(frozen=True)
class ReferenceSplits:
    """The block selections of the reference: the floor's halves and the random re-splits.

    Attributes
    ----------
    half_a, half_b : ndarray of bool, shape (n_blocks,)
        The floor's halves (:func:`floor_halves` and its complement).
    everything : ndarray of bool, shape (n_blocks,)
        All blocks (the full reference against a synthetic set).
    null_masks : list of ndarray of bool
        The random re-splits (:func:`null_masks`).
    """

    half_a: np.ndarray
    half_b: np.ndarray
    everything: np.ndarray
    null_masks: list[np.ndarray]

    @classmethod
    def of(cls, cfg: ValidationConfig, n_blocks: int) -> ReferenceSplits:
        half_a = floor_halves(n_blocks)
        return cls(half_a=half_a, half_b=~half_a, everything=np.ones(n_blocks, bool), null_masks=null_masks(cfg, n_blocks))
