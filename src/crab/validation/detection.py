"""How often the glitch finder finds the glitches a truth table lists, as a function of their height.

For every set that carries a truth table (the Monte Carlo's, or the table of
generated glitches, :mod:`crab.generation.truth`) the direct hits are the
truth: hit ``i`` on detector ``d`` at sample ``s_i``.  Its **height** is
measured the same way in every set, in the TOD itself: the largest
baseline-subtracted value in samples ``[s_i - 1, s_i + 4]``, in units of the
detector's robust noise sigma (:func:`crab.analysis.glitches.baseline_subtract`),
the same measurement for every set (a recorded height would be the noise-free
one, which near the threshold is not what a finder sees).  Where the table
records heights (generated glitches), a hit whose recorded ``amplitude`` is
below half its measured height is left out: what was measured there is
another glitch (the network's own, or the wafer's) next to a small hit.
It is **found** when the glitch finder (:func:`crab.analysis.glitches.detect_glitches`,
the validation's own settings) has a peak on that detector within the same
samples.  The efficiency in each height bin is found / listed, with its
binomial error.  A generator whose glitches are found as often as the Monte
Carlo's, height for height, has pulses the finder sees alike; a flagging or
deglitching code scored on generated TOD then scores as on real TOD.

Wafer hits are left out: their height at a detector depends on its
coupling, and most are far below the noise (the pile-up).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crab.analysis.glitches import baseline_subtract, detect_glitches
from crab.physics.events import EVENT_KIND_DIRECT

#: Edges of the height bins (noise sigma).
HEIGHT_EDGES_SIGMA = (0.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 50.0, np.inf)
#: Samples before and after a hit sample where its peak is looked for.
PEAK_WINDOW = (1, 4)


def detection_efficiency(tod, events, sampling_rate_hz: float, start_time_s: float, glitch_config) -> dict[str, Any] | None:
    """Efficiency of the glitch finder against the direct hits of a truth table, by height.

    Parameters
    ----------
    tod : ndarray, shape (n_detectors, n_samples)
    events : crab.physics.events.EventTable or None
        The truth; None (or no direct hit) gives None.
    sampling_rate_hz : float
    start_time_s : float
        Time of the first sample (s), on the clock of ``events.time_s``.
    glitch_config : crab.analysis.glitches.GlitchDetectorConfig
        The finder's settings (the validation's).

    Returns
    -------
    dict or None
        ``edges_sigma`` (bin edges), ``listed`` and ``found`` per bin, ``efficiency`` and ``error``
        per bin (NaN where nothing is listed), ``n_hits``, ``left_out_not_own`` (hits whose measured height is another glitch's).
    """
    if events is None:
        return None
    x = np.atleast_2d(np.asarray(tod))
    n_det, n = x.shape
    fs = float(sampling_rate_hz)
    direct = events.select((events.kind == EVENT_KIND_DIRECT) & (events.detector >= 0) & (events.detector < n_det))
    s = np.floor((direct.time_s - float(start_time_s)) * fs + 1e-9).astype(np.int64)
    lo, hi = PEAK_WINDOW
    keep = (s - lo >= 0) & (s + hi < n)
    if not np.any(keep):
        return None
    s, det = s[keep], direct.detector[keep].astype(np.int64)
    prepared = baseline_subtract(x, fs, glitch_config)
    _, y, sigma = prepared
    found_table = detect_glitches(x, fs, glitch_config, prepared=prepared)
    offsets = np.arange(-lo, hi + 1)
    recorded = direct.amplitude[keep]
    measured = np.max(y[det[:, None], s[:, None] + offsets[None, :]], axis=1)
    own = ~(recorded < 0.5 * measured)  # NaN (not recorded) keeps the hit
    s, det, measured = s[own], det[own], measured[own]
    height = measured / np.maximum(sigma[det], 1e-300)
    peaks = np.zeros((n_det, n + 1), dtype=np.int64)  # cumulative count of found peaks per detector
    np.add.at(peaks, (found_table.detector.astype(np.int64), found_table.peak_index.astype(np.int64) + 1), 1)
    peaks = np.cumsum(peaks, axis=1)
    found = peaks[det, s + hi + 1] - peaks[det, s - lo] > 0
    edges = np.asarray(HEIGHT_EDGES_SIGMA, dtype=np.float64)
    b = np.clip(np.searchsorted(edges, height, side="right") - 1, 0, len(edges) - 2)
    listed = np.bincount(b, minlength=len(edges) - 1)
    hits = np.bincount(b, weights=found, minlength=len(edges) - 1)
    return {
        "edges_sigma": [float(e) for e in edges],
        **_rates(listed, hits),
        "n_hits": int(len(s)),
        "left_out_not_own": int(np.sum(~own)),
    }


def mean_efficiency(curves: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Several references' curves pooled (found and listed summed per bin)."""
    curves = [c for c in curves if c is not None]
    if not curves:
        return None
    listed = np.sum([c["listed"] for c in curves], axis=0)
    found = np.sum([c["found"] for c in curves], axis=0)
    return {**curves[0], **_rates(listed, found), "n_hits": int(sum(c["n_hits"] for c in curves)),
            "left_out_not_own": int(sum(c["left_out_not_own"] for c in curves))}


def _rates(listed: np.ndarray, found: np.ndarray) -> dict[str, list]:
    """``listed``, ``found``, ``efficiency`` = found / listed and its binomial ``error`` per bin (NaN where nothing is listed)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        eff = np.where(listed > 0, found / np.maximum(listed, 1), np.nan)
        err = np.where(listed > 0, np.sqrt(np.clip(eff * (1 - eff), 0, None) / np.maximum(listed, 1)), np.nan)
    return {"listed": [int(v) for v in listed], "found": [int(v) for v in found], "efficiency": [float(v) for v in eff], "error": [float(v) for v in err]}


def bin_labels(edges_sigma) -> list[str]:
    """``"2-3"``, ..., ``">= 50"`` labels of the height bins."""
    e = list(edges_sigma)
    return [f"{e[i]:g}-{e[i + 1]:g}" if np.isfinite(e[i + 1]) else f">= {e[i]:g}" for i in range(len(e) - 1)]
