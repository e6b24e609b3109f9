"""The contract every generative method implements for the streaming engine.

A method produces fixed **tiles** of TOD: tile ``t`` of detector key ``k``
covers samples ``[t * tile_samples, (t + 1) * tile_samples)`` and depends
only on ``(seed, k, t)``, so the engine (:mod:`crab.generation`) can
compute any span, in any order, on any number of threads or processes.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class TileSource:
    """What :class:`TodGenerator` needs from a method: fixed tiles of TOD.

    Attributes
    ----------
    kind : str
        ``"gan"`` or ``"template"`` (the file's ``kind``).
    sampling_rate_hz : float
    units : str
    tile_samples : int
        Samples per tile.
    rows : int
        Detectors produced per key (the model's output channels).
    """

    kind = "unknown"
    sampling_rate_hz: float
    units: str = "pW"
    tile_samples: int
    rows: int = 1

    def prepare(self, n_keys: int) -> None:
        """Called before a run over ``n_keys`` detector keys (size caches)."""

    def tile(self, key: int, t: int) -> np.ndarray:
        """Tile ``t`` (>= 0) of detector key ``key``: float32 (rows, tile_samples).  Thread-safe."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What defines the bytes (for the run record)."""
        return {}

    def check_span(self, start_sample: int, stop_sample: int) -> None:
        """Raise :class:`InputError` if ``[start_sample, stop_sample)`` cannot be generated."""
