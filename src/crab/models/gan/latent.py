"""Counter-addressed latent normals of the streaming GAN.

Latent step ``j`` of detector key ``k`` is a fixed position of one
counter-based Philox stream (the key of ``rng.generator(seed, "gan_latent",
k)``), turned into normals by Box-Muller in float32.
"""

from __future__ import annotations

import sys

import numpy as np

from crab.core import rng

#: Latent step j is stored at stream position j + LATENT_ORIGIN, so that the
#: margins of the first tile (negative j) are drawn like any other step.
LATENT_ORIGIN = 1 << 40

_TWO_PI_2M24 = np.float32(2.0 * np.pi * 2.0**-24)
_2M24 = np.float32(2.0**-24)


def stream_key(seed: int, stream: str, *key: int) -> np.ndarray:
    """The 128-bit Philox key (two uint64) of the stream ``rng.generator(seed, stream, *key)``.

    With an explicit counter (``numpy.random.Philox(key=..., counter=...)``)
    it gives direct access to any position of that counter-based stream.
    """
    return np.array(rng.generator(seed, stream, *key).bit_generator.state["state"]["key"], dtype=np.uint64)


def _raw_words(key: np.ndarray, first_word: int, n_words: int) -> np.ndarray:
    """uint64 words ``[first_word, first_word + n_words)`` of the Philox stream with ``key``."""
    counter, skip = divmod(int(first_word), 4)  # Philox4x64: four words per counter value
    return np.random.Philox(key=key, counter=counter).random_raw(skip + int(n_words))[skip:]


def box_muller(words: np.ndarray) -> np.ndarray:
    """Standard normal float32 values, two per uint64 word (Box-Muller, 24-bit uniforms).

    Word ``w`` gives ``u1 = 1 - (lo >> 8) 2^-24`` and ``u2 = (hi >> 8) 2^-24``
    (``lo``, ``hi`` its 32-bit halves) and the pair ``r cos(2 pi u2), r sin(2 pi u2)``
    with ``r = sqrt(-2 ln u1)``; returns ``2 * len(words)`` values in that order.
    """
    w = np.ascontiguousarray(words, dtype=np.uint64)
    if sys.byteorder == "little":
        halves = w.view(np.uint32)
    else:  # pragma: no cover - keep the same numbers on big-endian machines
        halves = np.stack([(w & np.uint64(0xFFFFFFFF)).astype(np.uint32), (w >> np.uint64(32)).astype(np.uint32)], 1).reshape(-1)
    halves = halves >> np.uint32(8)
    f = halves.astype(np.float32).reshape(-1, 2)
    u1, theta = f[:, 0], f[:, 1]
    u1 *= -_2M24
    u1 += np.float32(1.0)
    theta *= _TWO_PI_2M24
    r = np.log(u1)
    r *= np.float32(-2.0)
    np.sqrt(r, out=r)
    c = np.cos(theta)
    c *= r
    s = np.sin(theta)
    s *= r
    f[:, 0] = c
    f[:, 1] = s
    return f.reshape(-1)


def latent_sequence(key: np.ndarray, first_step: int, n_steps: int, latent_dim: int) -> np.ndarray:
    """Latent vectors of steps ``[first_step, first_step + n_steps)``, shape (n_steps, latent_dim) float32.

    Step ``j`` (any integer, negative allowed) uses the ``ceil(latent_dim / 2)``
    words at position ``(j + LATENT_ORIGIN) * ceil(latent_dim / 2)`` of the
    Philox stream with ``key`` (:func:`stream_key`), turned into normals by
    :func:`box_muller`.  The same step always gets the same vector, whatever
    range it is drawn in.
    """
    wps = (int(latent_dim) + 1) // 2
    words = _raw_words(key, (int(first_step) + LATENT_ORIGIN) * wps, int(n_steps) * wps)
    z = box_muller(words).reshape(int(n_steps), 2 * wps)
    return z if 2 * wps == latent_dim else np.ascontiguousarray(z[:, :latent_dim])
