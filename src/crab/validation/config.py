"""The validation's parameters (:class:`ValidationConfig`) and which metrics are the issue's targets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from crab.analysis.glitches import GlitchDetectorConfig
from crab.core.errors import InputError

#: The metrics named in the issue's fidelity targets: judged at ``n_sigma_target``, the others at ``n_sigma``.
TARGET_METRICS = ("glitch_rate", "amplitude_distribution", "amplitude_slope", "classifier_auc")


@dataclass(frozen=True)
class ValidationConfig:
    """Every parameter of the validation.

    Attributes
    ----------
    window_samples : int
        Length of the windows of the per-window features, the classifier and
        the memorisation test (samples); also the default seam period.
    block_s : float
        Approximate length of the time blocks used for errors and for the
        random re-splits of the reference (s); rounded to whole windows.
    n_sigma : float
        Threshold of the diagnostic metrics, in standard deviations of the floor.
    n_sigma_target : float
        Threshold of the target metrics (:data:`TARGET_METRICS`).
    auc_target : float
        Classifier AUC accepted whatever the floor (the issue's fidelity target).
    n_null : int
        Random re-splits of the reference for the null distributions.
    max_bins : int
        Most bins of the separation-power histograms (equiprobable in the reference).
    slope_cut_sigma : float
        The power-law slope is fitted to amplitudes above this many
        (median, reference) noise sigmas.
    acf_lags : tuple of int
        Lags (samples) of the autocorrelation metric.
    classifier_steps, classifier_hidden, classifier_weight_decay
        Full-batch Adam steps, hidden units per layer and weight decay of the
        classifier (small and regularised: a few hundred windows per class).
    classifier_max_windows : int
        Most windows per class in the classifier test.
    classifier_repeats : int
        Random train/test splits of the classifier test (floor and every
        synthetic set); their test AUCs are averaged.  One split's AUC moves
        by about its null sigma (0.03 for 30 min of 4 detectors) with the
        luck of the split alone.
    memorisation_quantile : float
        Quantile of the floor's distance ratios below which a window counts
        as suspiciously close to the training data.
    memorisation_max_train_samples : int
        Most training samples (all detectors) searched for near copies.
    memorisation_max_windows : int
        Most windows per set whose nearest training window is searched.
    seam_period_samples : int or None
        Join period of the synthetic TOD; None: read it from the file's config
        (see :func:`crab.validation.seams.seam_period`), else ``window_samples``.
    seam_halfwidth : int
        Samples on each side of a join counted as "near the join".
    detector : GlitchDetectorConfig
        The glitch detector.
    seed : int
        Seed of the random re-splits, classifier splits and subsampling
        (stream ``"validation"``).
    """

    window_samples: int = 256
    block_s: float = 60.0
    n_sigma: float = 3.0
    n_sigma_target: float = 2.0
    auc_target: float = 0.60
    n_null: int = 200
    max_bins: int = 20
    slope_cut_sigma: float = 10.0
    acf_lags: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
    classifier_steps: int = 150
    classifier_hidden: int = 16
    classifier_weight_decay: float = 1e-2
    classifier_max_windows: int = 1000
    classifier_repeats: int = 8
    memorisation_quantile: float = 0.05
    memorisation_max_train_samples: int = 1_200_000
    memorisation_max_windows: int = 400
    seam_period_samples: int | None = None
    seam_halfwidth: int = 2
    detector: GlitchDetectorConfig = field(default_factory=GlitchDetectorConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.window_samples < 16:
            raise InputError(f"window_samples must be >= 16, got {self.window_samples}")
        if not self.block_s > 0 or not self.n_sigma > 0 or not self.n_sigma_target > 0:
            raise InputError("block_s, n_sigma and n_sigma_target must be > 0")
        if not 0 < self.memorisation_quantile < 0.5:
            raise InputError(f"memorisation_quantile must be in (0, 0.5), got {self.memorisation_quantile}")
        if self.n_null < 10:
            raise InputError(f"n_null must be >= 10, got {self.n_null}")
        if isinstance(self.detector, dict):
            object.__setattr__(self, "detector", GlitchDetectorConfig(**self.detector))
        object.__setattr__(self, "acf_lags", tuple(int(v) for v in self.acf_lags))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ValidationConfig:
        return cls(**dict(d))

    def classifier_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`crab.validation.classifier.classifier_two_sample_test` for this configuration."""
        return dict(steps=self.classifier_steps, hidden=self.classifier_hidden, weight_decay=self.classifier_weight_decay,
                    max_per_class=self.classifier_max_windows, seed=self.seed, repeats=self.classifier_repeats)


def block_samples(cfg: ValidationConfig, fs: float) -> int:
    """Samples per time block: a whole number of windows, about ``cfg.block_s`` long at ``fs`` (Hz)."""
    W = cfg.window_samples
    return W * max(1, int(round(cfg.block_s * fs / W)))
