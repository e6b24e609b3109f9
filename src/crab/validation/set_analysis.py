"""Everything the metrics need from one TOD, computed once: :func:`analyse` -> :class:`SetAnalysis`.

The TOD is cut into time blocks (a whole number of windows,
:func:`crab.validation.config.block_samples`); the glitches, the noise
summaries per block and the features per window all carry their block, so
that the halves and random re-splits of the reference are cheap selections.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.signal

from crab.analysis.glitches import (
    GlitchTable,
    baseline_subtract,
    detect_glitches,
    find_coincidences,
    wafer_of,
)
from crab.analysis.window_features import classifier_features, window_summary_features
from crab.core.errors import InputError
from crab.validation.config import ValidationConfig, block_samples
from crab.validation.nearest_window import memorisation_representation
from crab.validation.spectra import autocorrelation, band_log_power, octave_bands


@dataclass
class SetAnalysis:
    """Everything the metrics need from one TOD, computed once (blocks of ``block_samples``).

    Per-glitch arrays carry the time block of the glitch, per-window arrays the
    block of the window, per-block arrays one row per block, so that any subset
    of blocks (the halves, the random re-splits) is a cheap selection.
    """

    name: str
    sampling_rate_hz: float
    n_detectors: int
    block_samples: int
    n_blocks: int
    window_samples: int
    sigma: np.ndarray
    glitches: GlitchTable
    glitch_block: np.ndarray
    interval_s: np.ndarray  # per glitch: time since the previous glitch of its detector (nan for the first)
    block_counts: np.ndarray  # glitches per block (all detectors)
    coinc_block: np.ndarray  # block of each coincidence cluster (multiplicity >= 2)
    coinc_possible: bool
    corr: np.ndarray  # (n_blocks, 1): mean correlation of detector pairs of a wafer (nan without pairs)
    rms: np.ndarray  # (n_blocks, n_det)
    band_logpow: np.ndarray  # (n_blocks, n_bands)
    band_edges: np.ndarray
    acf: np.ndarray  # (n_blocks, n_lags)
    psd_freq: np.ndarray
    psd_mean: np.ndarray  # mean PSD over blocks and detectors (plots)
    win_feats: np.ndarray  # (n_win, 5) window_summary_features (WINDOW_SUMMARY_NAMES)
    win_block: np.ndarray
    win_clf_feats: np.ndarray  # (n_win, k) classifier_features
    nn_series: list[np.ndarray]  # per detector, transformed for the memorisation search
    nn_windows: np.ndarray  # (n_win, W) transformed windows on the grid
    y: np.ndarray  # baseline-subtracted TOD (n_det, n)
    example: np.ndarray  # (n_det, n_example) raw TOD for plots
    duration_s: float

    @property
    def block_duration_s(self) -> float:
        return self.block_samples / self.sampling_rate_hz

    def exposure_det_h(self, mask: np.ndarray) -> float:
        return float(np.sum(mask)) * self.block_duration_s * self.n_detectors / 3600.0

    def hours(self, mask: np.ndarray) -> float:
        return float(np.sum(mask)) * self.block_duration_s / 3600.0

def analyse(tod: np.ndarray, sampling_rate_hz: float, detector_names: list[str], cfg: ValidationConfig, scale_sigma: float | None = None, name: str = "") -> SetAnalysis:
    """Compute the per-glitch, per-block and per-window quantities of one TOD.

    ``scale_sigma`` (TOD units) scales the classifier and memorisation inputs;
    pass the reference's so that all sets share one scale (default: this TOD's
    median noise sigma).  The TOD is truncated to a whole number of blocks.
    """
    fs = float(sampling_rate_hz)
    x = np.atleast_2d(np.asarray(tod, dtype=np.float64))
    n_det, n_tot = x.shape
    B = block_samples(cfg, fs)
    W = cfg.window_samples
    n_blocks = n_tot // B
    if n_blocks < 2:
        raise InputError(f"{name or 'TOD'} is too short: {n_tot / fs:.0f} s, need at least two blocks of {B / fs:.0f} s (block_s)")
    n = n_blocks * B
    x = x[:, :n]
    prepared = baseline_subtract(x, fs, cfg.detector)
    base, y, sigma = prepared
    gl = detect_glitches(x, fs, cfg.detector, prepared=prepared)
    scale = float(np.median(sigma)) if scale_sigma is None else float(scale_sigma)
    gblock = (gl.peak_index // B).astype(np.int64)
    # intervals within each detector (table sorted by detector then time)
    interval = np.full(len(gl), np.nan)
    if len(gl) > 1:
        same = np.concatenate([[False], gl.detector[1:] == gl.detector[:-1]])
        interval[same] = np.diff(gl.peak_time_s)[same[1:]]
    counts = np.bincount(gblock, minlength=n_blocks)[:n_blocks].astype(np.float64)
    wafers = wafer_of(detector_names)
    coinc_possible = bool(np.any(np.bincount(wafers) >= 2))
    co = find_coincidences(gl, cfg.detector.coincidence_window_s, wafers)
    cblock = np.minimum((co.coincident_times() * fs // B).astype(np.int64), n_blocks - 1)
    # noise per block
    k = cfg.detector.threshold_sigma
    yb = y.reshape(n_det, n_blocks, B)
    rms = (1.4826 * np.median(np.abs(yb - np.median(yb, axis=2, keepdims=True)), axis=2)).T
    corr = wafer_pair_correlation(yb, wafers)
    y_clip = np.clip(y, -k * sigma[:, None], k * sigma[:, None])
    x_clip = (base + y_clip).reshape(n_det, n_blocks, B)
    freq, pxx = scipy.signal.periodogram(x_clip, fs=fs, window="hann", detrend="constant", axis=-1)
    edges = octave_bands(2.0 * fs / B, fs / 2.0)
    band = band_log_power(freq, pxx, edges).mean(axis=0)  # (n_blocks, n_bands)
    acf = autocorrelation(y_clip.reshape(n_det, n_blocks, B), np.array(cfg.acf_lags)).mean(axis=0)
    # windows
    n_wb = B // W
    xw = x.reshape(n_det, n_blocks * n_wb, W)
    wins = xw.reshape(-1, W)
    win_block = np.tile(np.repeat(np.arange(n_blocks), n_wb), n_det)
    ng = np.zeros((n_det, n_blocks * n_wb))
    np.add.at(ng, (gl.detector, gl.peak_index // W), 1.0)
    feats = window_summary_features(wins, fs, ng.reshape(-1))
    clf_feats = classifier_features(wins, scale, ng.reshape(-1))
    z = memorisation_representation(x, scale)
    nn_windows = z.reshape(n_det, n_blocks * n_wb, W).reshape(-1, W)
    n_ex = min(n, int(round(60 * fs)))
    return SetAnalysis(
        name=name,
        sampling_rate_hz=fs,
        n_detectors=n_det,
        block_samples=B,
        n_blocks=n_blocks,
        window_samples=W,
        sigma=sigma,
        glitches=gl,
        glitch_block=gblock,
        interval_s=interval,
        block_counts=counts,
        coinc_block=cblock,
        coinc_possible=coinc_possible,
        corr=corr,
        rms=rms,
        band_logpow=band,
        band_edges=edges,
        acf=acf,
        psd_freq=freq,
        psd_mean=pxx.mean(axis=(0, 1)),
        win_feats=feats,
        win_block=win_block,
        win_clf_feats=clf_feats,
        nn_series=[r for r in z],
        nn_windows=nn_windows,
        y=y,
        example=x[:, :n_ex].astype(np.float32),
        duration_s=n / fs,
    )


def wafer_pair_correlation(yb: np.ndarray, wafers: np.ndarray) -> np.ndarray:
    """Mean Pearson correlation, per block, of the TOD of detector pairs on one wafer.

    Parameters
    ----------
    yb : ndarray, shape (n_det, n_blocks, block_samples)
        Baseline-subtracted TOD cut in blocks (glitches kept: common-mode
        wafer glitches are what correlates the detectors).
    wafers : ndarray of int, shape (n_det,)

    Returns
    -------
    ndarray, shape (n_blocks, 1)
        NaN where the wafer layout has no pair.
    """
    n_det, n_blocks, _ = yb.shape
    pairs = [(i, j) for i in range(n_det) for j in range(i + 1, n_det) if wafers[i] == wafers[j]]
    if not pairs:
        return np.full((n_blocks, 1), np.nan)
    z = yb - yb.mean(axis=2, keepdims=True)
    z = z / np.maximum(np.sqrt((z**2).mean(axis=2, keepdims=True)), 1e-300)
    r = np.mean([(z[i] * z[j]).mean(axis=1) for i, j in pairs], axis=0)
    return r[:, None]


def glitches_in_blocks(an: SetAnalysis, mask: np.ndarray) -> np.ndarray:
    """Boolean selection of the glitches of ``an`` whose time block is selected by ``mask`` (one entry per block)."""
    return mask[an.glitch_block]
