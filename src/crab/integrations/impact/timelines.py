"""The timelines ``crab impact`` makes besides the glitches: white noise, deglitching flags, the noise level.

White noise (:func:`white_noise`) is drawn in fixed blocks of
:data:`NOISE_BLOCK_SAMPLES` absolute samples from
``rng.generator(seed, "impact_noise", detector_key(name), block)``: the value
at (seed, detector, absolute sample) does not depend on the chunking, like the
glitches.

Deglitching (:func:`glitch_flags`) runs CRAB's own glitch finder
(:func:`crab.analysis.glitches.detect_glitches`: running-median baseline,
robust noise sigma, threshold, each glitch's extent down to one sigma, at most
2 s after its peak) on each detector's TOD of a chunk and flags the samples of
every extent.  It is a threshold finder on the data, not the truth of the
generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from crab.analysis.glitches import GlitchDetectorConfig, detect_glitches
from crab.core import rng
from crab.core.errors import InputError
from crab.core.stats import robust_sigma

#: Samples per block of the white-noise streams.
NOISE_BLOCK_SAMPLES = 1 << 16


def white_noise(seed: int, detector_names: Sequence[str], first_sample: int, n_samples: int, sigma: float) -> np.ndarray:
    """Gaussian white noise of standard deviation ``sigma`` per sample, float64 ``(n_detectors, n_samples)``,
    for absolute samples ``[first_sample, first_sample + n_samples)`` (slice-exact)."""
    B = NOISE_BLOCK_SAMPLES
    a, b = int(first_sample), int(first_sample) + int(n_samples)
    out = np.empty((len(detector_names), int(n_samples)))
    if n_samples <= 0:
        return out
    for i, name in enumerate(detector_names):
        key = rng.detector_key(str(name))
        for blk in range(a // B, (b - 1) // B + 1):
            lo, hi = max(a, blk * B), min(b, (blk + 1) * B)
            draws = rng.generator(seed, "impact_noise", key, blk).standard_normal(B)
            out[i, lo - a : hi - a] = draws[lo - blk * B : hi - blk * B]
    out *= float(sigma)
    return out


def glitch_flags(tod: np.ndarray, sampling_rate_hz: float, threshold_sigma: float) -> np.ndarray:
    """Samples inside a glitch found by :func:`crab.analysis.glitches.detect_glitches`, bool ``tod.shape``.

    Each detector (row) is searched on its own; a glitch flags ``[start_index, stop_index)``,
    its extent.
    """
    x = np.atleast_2d(tod)
    flags = np.zeros(x.shape, bool)
    if x.shape[1] < 3:
        return flags
    cfg = GlitchDetectorConfig(threshold_sigma=float(threshold_sigma))
    for d in range(x.shape[0]):
        table = detect_glitches(x[d : d + 1], sampling_rate_hz, cfg)
        if len(table):
            # mark starts +1 and stops -1, the running sum is > 0 inside any extent
            edges = np.zeros(x.shape[1] + 1, np.int64)
            np.add.at(edges, table.start_index, 1)
            np.add.at(edges, table.stop_index, -1)
            flags[d] = np.cumsum(edges[:-1]) > 0
    return flags


def white_level(tod: np.ndarray) -> float:
    """White-noise level of a TOD (its units per sample): the median over detectors of
    :func:`crab.core.stats.robust_sigma` (MAD of first differences / sqrt 2: insensitive to glitches)."""
    x = np.atleast_2d(tod)
    if x.shape[1] < 2:
        raise InputError("need at least two samples to measure the noise level of the generated TOD")
    return float(np.median([robust_sigma(r) for r in x]))
