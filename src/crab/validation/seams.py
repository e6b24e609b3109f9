"""The seam metrics: does synthetic TOD show where its generation tiles were joined?

:func:`seam_period` says where a synthetic file's joins are (from its
configuration); :func:`seam_statistics` measures the TOD at the joins;
:class:`SeamNulls` gives their null distribution over join phases in the
reference, where there are no joins; :func:`seam_metrics` judges one set.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crab.core.errors import InputError
from crab.io.tod import TodMetadata
from crab.validation import metrics as M
from crab.validation.builder import MetricBuilder
from crab.validation.config import ValidationConfig
from crab.validation.results import MetricResult
from crab.validation.set_analysis import SetAnalysis


def _find_key(d: Any, keys: tuple[str, ...]) -> Any:
    """First (depth-first) numeric value of one of ``keys`` in nested dicts, or None."""
    if isinstance(d, dict):
        for k in keys:
            if k in d and isinstance(d[k], (int, float)) and not isinstance(d[k], bool):
                return d[k]
        for v in d.values():
            r = _find_key(v, keys)
            if r is not None:
                return r
    return None


def _find_dict_with(d: Any, keys: tuple[str, ...]) -> dict | None:
    """First (depth-first) dict holding all ``keys`` with numeric values."""
    if isinstance(d, dict):
        if all(k in d and isinstance(d[k], (int, float)) and not isinstance(d[k], bool) for k in keys):
            return d
        for v in d.values():
            r = _find_dict_with(v, keys)
            if r is not None:
                return r
    return None


def seam_period(meta: TodMetadata, cfg: ValidationConfig) -> tuple[int, int, str]:
    """Where a synthetic file's generation joins are: ``(period, phase, source)``, joins at ``phase + k * period``.

    Looked up in order: ``cfg.seam_period_samples``; in the file's config
    (searched recursively) ``seam_period_samples``; ``window_samples`` and
    ``overlap_samples`` of windows joined by a cross-fade (period = window -
    overlap, phase = the middle of the cross-fade); ``tile_samples``;
    ``tile_latents * upsample_factor``; ``window_samples``; else
    ``cfg.window_samples``.  A ``start_sample`` in the config shifts the phase
    (joins are at absolute sample numbers).
    """
    c = meta.config or {}
    start = _find_key(c, ("start_sample",)) or 0
    if cfg.seam_period_samples:
        return int(cfg.seam_period_samples), 0, "validation config"
    v = _find_key(c, ("seam_period_samples", "join_period_samples"))
    P, phase, src = None, 0, ""
    if v:
        P, src = int(v), "file config"
    elif (d := _find_dict_with(c, ("window_samples", "overlap_samples"))) is not None and d["window_samples"] > d["overlap_samples"]:
        P, phase, src = int(d["window_samples"] - d["overlap_samples"]), int(d["overlap_samples"]) // 2, "file config (cross-faded windows: window - overlap)"
    elif v := _find_key(c, ("tile_samples",)):
        P, src = int(v), "file config"
    elif (d := _find_dict_with(c, ("tile_latents", "upsample_factor"))) is not None:
        P, src = int(d["tile_latents"]) * int(d["upsample_factor"]), "file config (tile_latents x upsample_factor)"
    elif v := _find_key(c, ("window_samples",)):
        P, src = int(v), "file config (window_samples)"
    else:
        return cfg.window_samples, 0, "assumed (window_samples)"
    return P, int((phase - int(start)) % P), src


def seam_statistics(y: np.ndarray, glitch_rows: np.ndarray, glitch_peaks: np.ndarray, period: int, offset: int = 0, halfwidth: int = 2) -> dict[str, float]:
    """Join statistics of a series generated in tiles of ``period`` samples.

    Joins are at samples ``j = offset + k * period`` (k >= 1; the join lies
    between samples ``j - 1`` and ``j``).  With ``y`` the baseline-subtracted
    TOD (n_detectors, n_samples) and the glitch peaks:

    - ``step``: ``sqrt(n_joins) * ln(sigma_join / sigma_all)`` where the sigmas
      are robust (1.4826 MAD) spreads of the first differences across joins
      and of all first differences: a discontinuity or a smoothed join moves it;
    - ``variance``: ``sqrt(n_joins) * ln(s_near / s_all)`` with ``s_near`` the
      robust spread of ``y`` within ``halfwidth`` samples of a join;
    - ``glitch_z``: ``(observed - expected) / sqrt(expected)`` glitch peaks within
      ``halfwidth`` samples of a join, expected from the overall rate.

    All are ~N(0, 1)-scaled, so their spread does not depend on the length.
    """
    y = np.atleast_2d(np.asarray(y, dtype=np.float64))
    n_det, n = y.shape
    P = int(period)
    if P < 2 * halfwidth + 2:
        raise InputError(f"seam period {P} too short for halfwidth {halfwidth}")
    joins = np.arange(int(offset) % P or P, n, P)
    joins = joins[(joins >= halfwidth + 1) & (joins <= n - halfwidth)]
    nj = len(joins) * n_det
    out = {"n_joins": float(nj), "step": float("nan"), "variance": float("nan"), "glitch_z": float("nan")}
    if len(joins) < 2:
        return out

    def rs(v: np.ndarray) -> float:
        return 1.4826 * float(np.median(np.abs(v - np.median(v))))

    d = np.diff(y, axis=1)
    d_join = d[:, joins - 1].reshape(-1)
    s_all_d = rs(d)
    if s_all_d > 0 and rs(d_join) > 0:
        out["step"] = float(np.sqrt(nj) * np.log(rs(d_join) / s_all_d))
    near = (joins[:, None] + np.arange(-halfwidth, halfwidth)[None, :]).reshape(-1)
    s_near = rs(y[:, near])
    s_all = rs(y)
    if s_all > 0 and s_near > 0:
        out["variance"] = float(np.sqrt(nj) * np.log(s_near / s_all))
    mask = np.zeros(n, bool)
    mask[near] = True
    peaks = np.asarray(glitch_peaks, dtype=np.int64)
    n_gl = peaks.size
    if n_gl > 0:
        frac = mask.mean()
        exp = n_gl * frac
        obs = float(np.sum(mask[peaks]))
        out["glitch_z"] = float((obs - exp) / np.sqrt(exp)) if exp > 0 else float("nan")
    else:
        out["glitch_z"] = 0.0
    return out


#: The three seam statistics of :func:`seam_statistics` and their metric names.
SEAM_METRIC_NAMES = {"step": "seam_step", "variance": "seam_variance", "glitch_z": "seam_glitch_rate"}


class SeamNulls:
    """The seam statistics of the reference at joins it does not have, per seam period (computed once per period).

    For a period ``P``: the statistics at up to 64 join phases ``1 .. P - 1``
    (the null) and at phase 0 (the floor).
    """

    def __init__(self, ref: SetAnalysis, halfwidth: int) -> None:
        self.ref = ref
        self.halfwidth = halfwidth
        self._by_period: dict[int, tuple[dict[str, list[float]], dict[str, float], int]] = {}

    def for_period(self, P: int) -> tuple[dict[str, list[float]], dict[str, float], int]:
        """``(null, floor, n_phases)``: |statistic| at every null phase, the statistics at phase 0, the number of phases."""
        if P not in self._by_period:
            ref, h = self.ref, self.halfwidth
            offsets = np.unique(np.linspace(1, P - 1, min(P - 1, 64)).astype(int))
            null = {k: [] for k in SEAM_METRIC_NAMES}
            for o in offsets:
                st = seam_statistics(ref.y, ref.glitches.detector, ref.glitches.peak_index, P, int(o), h)
                for k in SEAM_METRIC_NAMES:
                    null[k].append(abs(st[k]))
            floor = seam_statistics(ref.y, ref.glitches.detector, ref.glitches.peak_index, P, 0, h)
            self._by_period[P] = (null, floor, len(offsets))
        return self._by_period[P]


def seam_metrics(b: MetricBuilder, nulls: SeamNulls, syn: SetAnalysis, P: int, phase: int) -> dict[str, MetricResult]:
    """The seam metrics of ``syn``, joins at ``phase + k * P``; not applicable when ``P`` is too long for the data."""
    ref = nulls.ref
    out = {}
    h = b.cfg.seam_halfwidth
    names = SEAM_METRIC_NAMES
    descs = {
        "step": "|sqrt(n_joins) ln(sigma of first differences across joins / overall)|",
        "variance": f"|sqrt(n_joins) ln(robust spread within {h} samples of joins / overall)|",
        "glitch_z": f"|z| of the number of glitch peaks within {h} samples of joins",
    }
    too_short = P < 2 * h + 2 or syn.y.shape[1] < 4 * P or ref.y.shape[1] < 4 * P
    if too_short:
        for k, n in names.items():
            out[n] = b.make(n, "seams", descs[k], float("nan"), float("nan"), float("nan"), f"not run: seam period {P} samples too long for the data", {"period_samples": P}, applicable=False)
        return out
    null, floor, n_off = nulls.for_period(P)
    val = seam_statistics(syn.y, syn.glitches.detector, syn.glitches.peak_index, P, phase, h)
    for k, n in names.items():
        nsig = b.nsig(n)
        thr, mu, sd = M.null_threshold(np.array(null[k]), nsig)
        out[n] = b.make(n, "seams", descs[k], abs(val[k]), abs(floor[k]), thr, f"{nsig:g}-sigma point of the null over {n_off} join phases in the reference", {"period_samples": P, "phase_samples": phase, "signed_value": val[k], "signed_floor": floor[k], "n_joins": val["n_joins"], "null_mean": mu, "null_std": sd})
    return out
