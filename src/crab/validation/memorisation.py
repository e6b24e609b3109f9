"""The memorisation test: are synthetic windows closer to the training data than to held-out Monte Carlo?

For every window, ``ln(d_train / d_heldout)``: its distance to the nearest
training window over that to the nearest window of a held-out stretch
(reference half B), in :func:`crab.validation.nearest_window.memorisation_representation`.
The fraction of synthetic windows below the ``memorisation_quantile`` of the
same ratio for reference half-A windows (never trained on) must stay within
``n_sigma`` binomial errors of that quantile.
"""

from __future__ import annotations

import numpy as np

from crab.core import rng
from crab.validation.builder import MetricBuilder
from crab.validation.config import ValidationConfig
from crab.validation.nearest_window import (
    memorisation_representation,
    sliding_nn_distance,
    truncate_pool,
)
from crab.validation.results import MetricResult
from crab.validation.set_analysis import SetAnalysis


def training_series(tod: np.ndarray, cfg: ValidationConfig, scale_sigma: float) -> list[np.ndarray]:
    """Training TOD in :func:`memorisation_representation`, at most ``memorisation_max_train_samples`` in all."""
    return truncate_pool(list(memorisation_representation(tod, scale_sigma)), cfg.memorisation_max_train_samples)


class MemorisationSetup:
    """The two search pools (training data, held-out reference half B) and the floor queries (half A).

    Every query window ``w`` gets ``ln(d_train(w) / d_heldout(w))``: its
    distance to the nearest training window (any offset) over the distance to
    the nearest window of the held-out pool, both in
    :func:`memorisation_representation`.  Reference half-A windows (never
    trained on, not in the pools) give the floor distribution of the ratio;
    synthetic windows are queried against the same two pools, so pool sizes
    and the pools' own fluctuations cancel.  A copy of a training window has
    ``d_train = 0``.  ``key`` names the random stream of the floor's subsample
    of queries.
    """

    def __init__(self, cfg: ValidationConfig, ref: SetAnalysis, train_series: list[np.ndarray], half_a: np.ndarray, key: tuple[int, ...] = (3, 0)) -> None:
        self.cfg = cfg
        W = cfg.window_samples
        start_b = int(np.sum(half_a)) * ref.block_samples
        self.pool_heldout = [s[start_b:] for s in ref.nn_series]
        self.pool_train = [s for s in train_series if s.size >= W]
        self.n_pool_train = int(sum(s.size for s in self.pool_train))
        self.n_pool_heldout = int(sum(s.size for s in self.pool_heldout))
        self.ok = self.n_pool_train >= 4 * W and self.n_pool_heldout >= 4 * W
        self.copied_reference_fraction = 0.0
        self.floor = self.floor_threshold = self.level = float("nan")
        self.lr_floor = np.zeros(0)
        self.n_floor = 0
        if not self.ok:
            return
        qa = np.flatnonzero(half_a[ref.win_block])
        g = rng.generator(cfg.seed, "validation", *key)
        qa = g.permutation(qa)[: cfg.memorisation_max_windows]
        d_tr, d_ho = self.distances(ref.nn_windows[qa])
        self.lr_floor = log_distance_ratio(d_tr, d_ho)
        self.n_floor = len(qa)
        q = cfg.memorisation_quantile
        self.level = float(np.quantile(self.lr_floor, q))
        # floor value: one random half of the floor queries against the quantile of the other half
        half = len(qa) // 2
        self.floor = float(np.mean(self.lr_floor[half:] < np.quantile(self.lr_floor[:half], q)))
        self.floor_threshold = q + cfg.n_sigma * float(np.sqrt(q * (1 - q) * (1 / half + 1 / (len(qa) - half))))
        self.copied_reference_fraction = float(np.mean(d_tr < 1e-3 * max(float(np.median(d_ho)), 1e-12)))

    def distances(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distances of each of ``windows`` to the nearest training window and to the nearest held-out window."""
        return sliding_nn_distance(windows, self.pool_train), sliding_nn_distance(windows, self.pool_heldout)


def log_distance_ratio(d_tr: np.ndarray, d_ho: np.ndarray) -> np.ndarray:
    """``ln(d_train / d_heldout)`` per window (distances floored at 1e-300)."""
    return np.log(np.maximum(d_tr, 1e-300) / np.maximum(d_ho, 1e-300))


def memorisation_metric(b: MetricBuilder, mem: MemorisationSetup | None, syn: SetAnalysis, key: tuple[int, ...], plot_data: dict | None = None) -> MetricResult:
    """The memorisation metric of the set ``syn``, its windows subsampled with the random stream ``key``.

    Its log ratios go to ``plot_data["memorisation"]`` when ``plot_data`` is
    given.  Not applicable without training data (``mem`` None) or with too
    little of it.
    """
    cfg = b.cfg
    name = "memorisation"
    q = cfg.memorisation_quantile
    desc = f"fraction of windows with ln(d_train / d_heldout) below the floor's {q:g} quantile (nearest-window distance ratio)"
    nsig = b.nsig(name)
    if mem is None or not mem.ok:
        why = "no training data given" if mem is None else "training or reference data too short"
        return b.make(name, "memorisation", desc, float("nan"), float("nan"), float("nan"), f"not run: {why}", {}, applicable=False)
    g = rng.generator(cfg.seed, "validation", *key)
    qs = np.sort(g.permutation(len(syn.nn_windows))[: cfg.memorisation_max_windows])
    d_tr, d_ho = mem.distances(syn.nn_windows[qs])
    lr = log_distance_ratio(d_tr, d_ho)
    if plot_data is not None:
        plot_data["memorisation"]["floor"] = mem.lr_floor
        plot_data["memorisation"][syn.name] = lr
    frac = float(np.mean(lr < mem.level))
    thr = q + nsig * float(np.sqrt(q * (1 - q) * (1 / len(qs) + 1 / mem.n_floor)))
    tiny = 1e-3 * max(float(np.median(d_ho)), 1e-12)  # float32 FFT round-off ~1e-4 of it
    return b.make(
        name,
        "memorisation",
        desc,
        frac,
        mem.floor,
        thr,
        f"{q:g} + {nsig:g} binomial sd; floor: half of the reference-A queries against the other half's quantile",
        {
            "log_ratio_level": mem.level,
            "median_log_ratio": float(np.median(lr)),
            "median_log_ratio_floor": float(np.median(mem.lr_floor)),
            "median_distance_to_training": float(np.median(d_tr)),
            "median_distance_to_heldout": float(np.median(d_ho)),
            "exact_copy_fraction": float(np.mean(d_tr < tiny)),
            "n_windows": int(len(qs)),
            "n_windows_floor": int(mem.n_floor),
            "pool_samples_training": mem.n_pool_train,
            "pool_samples_heldout": mem.n_pool_heldout,
        },
        floor_threshold=mem.floor_threshold,
    )
