"""Counter-based random streams keyed on what they describe.

Every random draw in CRAB comes from a generator built here from an
explicit integer seed plus a *key*: a tuple of small non-negative integers
naming the stream (what quantity, which detector, which block of time).
The generator is numpy's Philox (a counter-based bit generator) seeded
through :class:`numpy.random.SeedSequence` with the key as ``spawn_key``.
Because the stream depends only on ``(seed, key)``, results do not depend
on the order in which blocks are computed, on chunk sizes, or on how work
is split across processes (the scheme TOAST uses, see the style guide).

Stream identifiers are registered in :data:`STREAMS` so that two modules
never share a stream by accident.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np

from crab.core.errors import InputError

#: Registered stream identifiers (first element of every key).
STREAMS: dict[str, int] = {
    "mc_primaries": 1,  # (stream, block): cosmic-ray primaries of one time block
    "mc_deposit": 2,  # (stream, block): straggling / hit geometry of one block
    "mc_noise": 3,  # (stream, detector, noise block): MC detector noise
    "mc_burnin": 4,  # (stream, 0): wafer hits of the MC burn-in before t = 0
    "gan_latent": 10,  # (stream, detector, latent block): GAN latent sequence
    "gan_noise": 11,  # (stream, detector, noise block): additive noise of generation
    "gan_wafer": 12,  # (stream, wafer, block): hits of the wafer layer
    "template_events": 20,  # (stream, detector, block): template glitches
    "template_noise": 21,  # (stream, detector, noise block): template noise
    "training": 30,  # (stream,): weight init, shuffling, training latents
    "validation": 40,  # (stream,): classifier splits, bootstraps
    "impact_noise": 50,  # (stream, detector, block): white noise of `crab impact`'s comparison maps
}


def stream_id(name: str) -> int:
    """Return the registered integer id of stream ``name``.

    Raises
    ------
    KeyError
        If the stream name is not registered in :data:`STREAMS`.
    """
    try:
        return STREAMS[name]
    except KeyError:
        raise KeyError(f"unknown random stream {name!r}; registered: {sorted(STREAMS)}") from None


def detector_key(name: str) -> int:
    """Stable 63-bit integer key for a detector *name* (independent of its index).

    Used where randomness must follow the detector rather than its position
    in an array (e.g. litebird_sim observations split across processes).
    """
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


#: The largest seed: seeds are unsigned 64-bit integers (stored as such in every output).
MAX_SEED = 2**64 - 1


def check_seed(seed: int) -> int:
    """Validate a user seed: an integer from 0 to :data:`MAX_SEED` (raises :class:`InputError`, a ValueError)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed must be an integer from 0 to {MAX_SEED} (unsigned 64-bit), got {seed!r}")
    return int(seed)


def generator(seed: int, stream: str, *key: int) -> np.random.Generator:
    """A numpy Generator for ``(seed, stream, *key)``.

    Parameters
    ----------
    seed : int
        User seed (non-negative).
    stream : str
        Registered stream name (see :data:`STREAMS`).
    *key : int
        Further non-negative integers (detector index, block index, ...).

    Returns
    -------
    numpy.random.Generator
        Backed by :class:`numpy.random.Philox`; identical for identical
        arguments on every platform.
    """
    spawn_key = (stream_id(stream), *(int(k) for k in key))
    if any(k < 0 for k in spawn_key):
        raise ValueError(f"random stream keys must be non-negative, got {spawn_key}")
    ss = np.random.SeedSequence(entropy=check_seed(seed), spawn_key=spawn_key)
    return np.random.Generator(np.random.Philox(ss))


def generators(seed: int, stream: str, keys: Iterable[tuple[int, ...]]) -> list[np.random.Generator]:
    """Several generators at once, one per key tuple."""
    return [generator(seed, stream, *k) for k in keys]
