"""The work split: one rectangular tile of the ``(n_detectors, n_samples)`` grid per rank."""

from __future__ import annotations

from dataclasses import dataclass

from crab.core.errors import InputError


@dataclass(frozen=True)
class Tile:
    """The part of the ``(n_detectors, n_samples)`` grid computed by one rank.

    Attributes
    ----------
    rank : int
        MPI rank that computes it.
    det_start, det_stop : int
        Detector rows ``[det_start, det_stop)``.
    sample_start, sample_stop : int
        Samples ``[sample_start, sample_stop)`` (relative to the file's sample 0).
    """

    rank: int
    det_start: int
    det_stop: int
    sample_start: int
    sample_stop: int

    @property
    def n_detectors(self) -> int:
        return self.det_stop - self.det_start

    @property
    def n_samples(self) -> int:
        return self.sample_stop - self.sample_start

    @property
    def empty(self) -> bool:
        return self.n_detectors <= 0 or self.n_samples <= 0


def split_grid(n_ranks: int, n_detectors: int, n_samples: int) -> tuple[int, int]:
    """``(n_blocks_det, n_blocks_time)`` with product ``n_ranks``: as many detector blocks as possible.

    The detector split is the largest divisor of ``n_ranks`` not above
    ``n_detectors``; the rest of the ranks split time.
    """
    if n_ranks < 1 or n_detectors < 1 or n_samples < 0:
        raise InputError(f"cannot split {n_detectors} detectors x {n_samples} samples over {n_ranks} ranks")
    n_det_blocks = max(d for d in range(1, min(n_ranks, n_detectors) + 1) if n_ranks % d == 0)
    return n_det_blocks, n_ranks // n_det_blocks


def _even_bounds(n: int, parts: int, align: int = 1) -> list[int]:
    """``parts + 1`` boundaries splitting ``range(n)`` as evenly as possible, inner ones multiples of ``align``."""
    units = -(-n // align) if align > 1 else n
    b = [min(n, (units * i // parts) * align) for i in range(parts + 1)]
    b[-1] = n
    return b


def plan_tiles(n_ranks: int, n_detectors: int, n_samples: int, *, align_samples: int = 1) -> list[Tile]:
    """One :class:`Tile` per rank covering the grid exactly once (some may be empty).

    Rank ``r`` gets detector block ``r // n_blocks_time`` and time block
    ``r % n_blocks_time`` (litebird_sim's order).  Time-block boundaries are
    multiples of ``align_samples`` (e.g. the HDF5 chunk length).
    """
    nbd, nbt = split_grid(n_ranks, n_detectors, n_samples)
    db = _even_bounds(n_detectors, nbd)
    tb = _even_bounds(n_samples, nbt, max(1, int(align_samples)))
    return [Tile(r, db[r // nbt], db[r // nbt + 1], tb[r % nbt], tb[r % nbt + 1]) for r in range(n_ranks)]
