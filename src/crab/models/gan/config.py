"""The GAN's configuration as plain data: :class:`ModelConfig` (the two networks) and
:class:`TrainConfig` (a training run).

Both are dataclasses of numbers, strings and tuples; ``to_dict`` / ``from_dict`` give their
stored form (``model.pt``, ``checkpoint.pt``, ``config.json``) and :mod:`crab.models.gan.config_file`
reads them from a TOML file.  What was tried and measured to choose the defaults is in
``docs/experiments.md``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field

from crab.core import rng
from crab.core.errors import InputError, ModelCompatibilityError
from crab.models.dataset import DEFAULT_WINDOW_SAMPLES, cond_name

#: Settings removed from ModelConfig, with the value they had by default (a stored model that
#: holds this value is the network this version builds; any other value is refused).
REMOVED_MODEL_FIELDS = {"generator_arch": "streaming", "spectral_norm": False, "causal_pulses": False}

#: ModelConfig fields added after the first model files, with the values that reproduce those files' networks.
LEGACY_FIELDS = {"event_channels": 0, "event_subsample": False, "event_kernel": 0, "additive_glitches": False, "discriminator_peak_view": False, "event_inputs": True}

#: Settings removed from TrainConfig, with their default value (None: no effect whatever its value).
REMOVED_TRAIN_FIELDS = {"lr_decay_epochs": 0, "lr_decay_final": None}

#: TrainConfig fields added since the first checkpoints, with the values those checkpoints' data were prepared with.
LEGACY_TRAIN_FIELDS = {"highpass_clip_sigma": None, "wafer_layer": False, "fit_pulses": False}


def _drop_removed(d: dict, removed: dict, what: str) -> dict:
    """``d`` without the ``removed`` keys; ModelCompatibilityError if one holds a non-default value."""
    out = dict(d)
    for key, default in removed.items():
        if key not in out:
            continue
        value = out.pop(key)
        if default is not None and value != default:
            raise ModelCompatibilityError(
                f"{what} was trained with {key}={value!r}, which this version no longer has; retrain it with `crab train`"
            )
    return out


@dataclass
class ModelConfig:
    """Architecture of the generator and the discriminator (:mod:`crab.models.gan.network`).

    Attributes
    ----------
    window_samples : int
        Length of a training window (samples); a multiple of ``upsample_factor``.
    latent_dim : int
        Latent channels per latent step (one step per ``upsample_factor`` output samples),
        including the ``noise_dim`` noise channels.
    noise_dim : int
        The last ``noise_dim`` latent channels (a multiple of ``upsample_factor``), rearranged
        into ``noise_dim / upsample_factor`` full-resolution noise channels (latent step ``j``,
        channel ``c`` -> sample ``16 j + c``) fed to the last upsampling stage.  0: none.
    generator_channels : tuple of int
        Channels of the coarse input stage and of the four upsampling stages (coarse to fine).
    discriminator_channels : tuple of int
        Channels of the four convolutional layers of the discriminator.
    kernel_size : int
        Convolution kernel length (samples, odd).
    leaky_slope : float
        Negative slope of the LeakyReLU activations.
    out_channels : int
        Channels of a TOD window (1 per detector; more for jointly generated detectors).
    cond_dim : int
        Number of conditioning inputs (0: unconditioned).
    minibatch_std : bool
        Append the minibatch standard deviation as a feature before the discriminator's dense layer.
    output_bounds : tuple of float or None
        ``(lo, hi)`` of the generator's output (transformed amplitude units), through
        :func:`crab.models.gan.network.soft_bound`; set by the trainer from the training data.
        None: unbounded.
    output_bound_width : float
        Width of the smooth knee of ``soft_bound`` (transformed amplitude units).
    discriminator_diff : bool
        Also feed the discriminator the first differences of each window (``x[n] - x[n-1]``).
    discriminator_peak_view : bool
        Also feed the discriminator each window in TOD units (``sinh(k y)`` minus its median)
        divided by its maximum (:func:`crab.models.gan.network.peak_view`).  Needs ``transform_out_scale``.
    shared_latent_dim : int
        Joint-detector generator (``out_channels > 1``) only: channels of a latent sequence shared
        by the detectors of a wafer; each detector is made by one network from the shared latents
        plus its own ``latent_dim`` latents.  0: one network run makes every channel.
    event_channels : int
        How many of the full-resolution noise channels (the last ones) are sparse event channels
        (:func:`crab.models.gan.network.event_noise`).  0: none.
    event_threshold : float
        Threshold of the event channels (standard-normal units): an event where ``|z|`` exceeds it
        (probability ``2 (1 - Phi(t))`` per sample: 1.2 % for 2.5).
    event_subsample : bool
        Place each event at a random time between two samples; needs a Gaussian noise channel.
    event_kernel : int
        Taps (samples, odd) of the learned pulse filter of the event channels
        (:class:`crab.models.gan.network.EventFilter`).  0: none.
    additive_glitches : bool
        Add the glitches of the event channels in TOD units, before the amplitude transform
        (:class:`crab.models.gan.network.AdditiveGlitches`), instead of letting the network draw them.
        Needs event channels and ``event_kernel``.
    event_inputs : bool
        The events are inputs of the network's last stage too (the event channels and their
        learned pulses, :class:`crab.models.gan.network.EventFilter`; configuration
        ``event_inputs``); off (the default): only the additive glitches use them.
    pulse_bands, pulse_phases : int
        The additive glitches' pulse table: pulses for ``pulse_bands`` heights and
        ``pulse_phases`` sub-sample phases, interpolated between them
        (:class:`crab.models.gan.network.AdditiveGlitches`).
    transform_out_scale : float or None
        ``k`` of the amplitude transform (:class:`crab.models.gan.transform.AmplitudeTransform`),
        needed by ``additive_glitches`` and ``discriminator_peak_view``; set by the trainer.
    """

    window_samples: int = 256
    latent_dim: int = 72
    noise_dim: int = 64
    generator_channels: tuple[int, ...] = (32, 32, 16, 8, 8)
    discriminator_channels: tuple[int, ...] = (16, 32, 64, 64)
    kernel_size: int = 5
    leaky_slope: float = 0.2
    out_channels: int = 1
    cond_dim: int = 0
    minibatch_std: bool = True
    output_bounds: tuple[float, float] | None = None
    output_bound_width: float = 0.5
    discriminator_diff: bool = True
    discriminator_peak_view: bool = True
    shared_latent_dim: int = 0
    event_channels: int = 3
    event_threshold: float = 2.5
    event_subsample: bool = True
    event_kernel: int = 33
    additive_glitches: bool = True
    event_inputs: bool = False
    pulse_bands: int = 4
    pulse_phases: int = 8
    transform_out_scale: float | None = None
    n_upsample: int = field(default=4, init=False)

    def __post_init__(self) -> None:
        self.generator_channels = tuple(int(c) for c in self.generator_channels)
        self.discriminator_channels = tuple(int(c) for c in self.discriminator_channels)
        if self.output_bounds is not None:
            lo, hi = (float(b) for b in self.output_bounds)
            self.output_bounds = (lo, hi)
            if not (math.isfinite(lo) and math.isfinite(hi) and hi - lo > 2 * self.output_bound_width):
                raise ValueError(f"output_bounds must be finite with hi - lo > 2 * output_bound_width ({self.output_bound_width}), got {self.output_bounds}")
        if not (self.output_bound_width > 0 and math.isfinite(self.output_bound_width)):
            raise ValueError(f"output_bound_width must be > 0, got {self.output_bound_width}")
        if self.noise_dim < 0 or self.noise_dim % self.upsample_factor or self.noise_dim >= self.latent_dim:
            raise ValueError(
                f"noise_dim must be a multiple of {self.upsample_factor} and smaller than latent_dim ({self.latent_dim}), got {self.noise_dim}"
            )
        n_noise = self.noise_dim // self.upsample_factor  # full-resolution noise channels
        if self.event_channels < 0 or self.event_channels > n_noise:
            raise ValueError(
                f"event_channels ({self.event_channels}) must be >= 0 and at most the noise channels of the streaming generator, "
                f"noise_dim / {self.upsample_factor} = {n_noise}"
            )
        if self.event_subsample and self.event_channels and self.event_channels == n_noise:
            raise ValueError(f"event_subsample needs a Gaussian noise channel besides the event channels (noise_dim / {self.upsample_factor} > event_channels)")
        if self.event_kernel < 0 or (self.event_kernel and self.event_kernel % 2 == 0):
            raise ValueError(f"event_kernel must be 0 or an odd length, got {self.event_kernel}")
        if self.event_channels and not (self.event_inputs or self.has_additive_glitches):
            raise ValueError("event channels need event_inputs, or additive_glitches with event_kernel > 0 (otherwise nothing uses them)")
        if self.pulse_bands < 1 or self.pulse_phases < 2:
            raise ValueError(f"pulse_bands must be >= 1 and pulse_phases >= 2, got {self.pulse_bands}, {self.pulse_phases}")
        if self.has_additive_glitches and self.out_channels > 1 and not self.shared_latent_dim:
            raise ValueError("additive_glitches needs one output channel per network run: out_channels 1, or shared_latent_dim > 0 for a wafer")
        if self.transform_out_scale is not None:
            self.transform_out_scale = float(self.transform_out_scale)
            if not (self.transform_out_scale > 0 and math.isfinite(self.transform_out_scale)):
                raise ValueError(f"transform_out_scale must be finite and > 0, got {self.transform_out_scale}")
        if not (self.event_threshold >= 0 and math.isfinite(self.event_threshold)):
            raise ValueError(f"event_threshold must be finite and >= 0, got {self.event_threshold}")
        if self.shared_latent_dim < 0 or (self.shared_latent_dim and self.out_channels < 2):
            raise ValueError(f"shared_latent_dim ({self.shared_latent_dim}) needs the streaming generator with out_channels >= 2")
        if len(self.generator_channels) != self.n_upsample + 1:
            raise ValueError(f"generator_channels needs {self.n_upsample + 1} entries, got {self.generator_channels}")
        if len(self.discriminator_channels) != 4:
            raise ValueError(f"discriminator_channels needs 4 entries, got {self.discriminator_channels}")
        if self.kernel_size % 2 == 0 or self.kernel_size < 1:
            raise ValueError(f"kernel_size must be odd and positive, got {self.kernel_size}")
        if self.window_samples % self.upsample_factor or self.window_samples < 2 * self.upsample_factor:
            raise ValueError(
                f"window_samples must be a multiple of {self.upsample_factor} and at least "
                f"{2 * self.upsample_factor}, got {self.window_samples}"
            )

    @property
    def has_additive_glitches(self) -> bool:
        """Whether the generator adds glitches in TOD units: ``additive_glitches`` with event
        channels and pulses (otherwise the field is ignored)."""
        return bool(self.additive_glitches and self.event_channels and self.event_kernel)

    @property
    def upsample_factor(self) -> int:
        """Output samples per latent step (2 ** n_upsample)."""
        return 2**self.n_upsample

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("n_upsample")
        d["generator_channels"] = list(self.generator_channels)
        d["discriminator_channels"] = list(self.discriminator_channels)
        d["output_bounds"] = None if self.output_bounds is None else list(self.output_bounds)
        return d

    @classmethod
    def from_dict(cls, d: dict, what: str = "this model") -> "ModelConfig":
        """From :meth:`to_dict`; a field missing from an older file takes the value that meant "off"
        then; a removed setting is dropped if it holds its old default, else
        :class:`~crab.core.errors.ModelCompatibilityError` (``what`` names the model in the message)."""
        d = _drop_removed({**LEGACY_FIELDS, **d}, REMOVED_MODEL_FIELDS, what)
        d.pop("n_upsample", None)
        return cls(**d)


@dataclass
class TrainConfig:
    """Every hyper-parameter of a training run (:func:`crab.models.gan.training.train`).

    Attributes
    ----------
    epochs : int
        Adversarial epochs (after the discriminator pretraining).
    windows_per_epoch : int
        Real windows (random crops of the training part) the discriminator sees per epoch.
    batch_size : int
        Windows per discriminator and per generator step.
    loss : str
        ``"bce"`` (binary cross-entropy) or ``"wgan-gp"`` (:mod:`crab.models.gan.losses`).
    gp_weight : float
        Weight of the gradient penalty (``"wgan-gp"`` only).
    drift_weight : float
        Weight of the drift penalty ``E[D(real)^2]`` of the critic loss (``"wgan-gp"`` only); 0 disables.
    d_pretrain_epochs : int
        Epochs of discriminator-only training, the generator fixed, before the adversarial epochs.
    d_steps_per_g_step : int
        Discriminator steps per generator step.
    d_optimizer, g_optimizer : str
        ``"sgd"`` (with momentum) or ``"adam"``.
    d_lr, g_lr : float
        Learning rates.
    d_momentum, g_momentum : float
        SGD momentum.
    d_betas, g_betas : tuple of float
        Adam betas.
    label_smoothing : float
        One-sided: the discriminator's target for real windows is ``1 - label_smoothing`` (BCE only).
    synthetic_weight : float
        Weight of the synthetic-window term of the discriminator loss.
    feature_weight : float
        Weight of the feature-matching term of the generator loss
        (:func:`crab.models.gan.losses.feature_matching_loss`); 0 disables.
    ema_decay : float
        Decay of the exponential moving average of the generator weights, evaluated and saved as
        the model; 0 disables it.
    window_samples : int
        Window length (samples).
    highpass_hz : float or None
        High-pass cut applied before windowing (Hz); None: one cycle per four windows
        (:func:`crab.models.dataset.default_highpass_hz`).
    highpass_clip_sigma : float or None
        Glitch peaks above this many noise sigma bypass the high-pass
        (:func:`crab.models.dataset.prepare_training_data`); None: plain high-pass.
    val_fraction : float
        Last fraction of every series used for validation (after a gap of one window).
    transform_noise_multiple : float
        Linear range of the amplitude transform (robust noise RMS).
    output_bound_margin : float or None
        Margin (transformed amplitude units) on each side of the range of the transformed training
        data that bounds the generator's output (``ModelConfig.output_bounds``); None: unbounded.
    val_windows : int
        At most this many validation windows (half-overlapping) are evaluated.
    quality_windows : int
        Generated windows for the sample-quality statistic.
    bn_calibration_batches : int
        Latent batches that recompute the generator's batch-norm statistics before evaluation and saving.
    slow_noise_calibration : bool
        Replace the slow-noise model of ``model.pt`` by its complement to the generator's own
        low-frequency power (:func:`crab.models.gan.evaluation.calibrated_noise_params`).
    seed : int
        Seed of every random stream of the run.
    num_threads : int or None
        Torch CPU threads (None: torch's default).
    condition_on : tuple of str
        Conditions both networks receive (e.g. ``("phi_gv",)``, recorded in every training file).
    wafer_layer : bool
        Fit the wafer layer (:mod:`crab.models.glitch_layer.wafer`) on the training files' truth
        tables, train the networks on the TOD without it, and draw it once per wafer at
        generation, seen by every detector of the wafer.  Needs truth tables (Monte Carlo
        files); without them, or with conditions or joint detectors, it is not used.
    fit_pulses : bool
        Fit the direct hits of the generator's additive glitches on the training data and keep
        them: the pulse table (a pulse per height band and sub-sample phase) and the amplitude
        law (the quantiles of the hits' areas, and their rate) (:mod:`crab.models.gan.pulses`;
        hit times from the truth table, else from the glitch finder).  Off: a generic table and a
        Pareto law per event channel, learned adversarially (``learned_pulses`` configuration).
    joint_detectors : bool
        Generate all detectors of a file jointly (one multi-channel window per wafer); every file
        must have the same number of detectors.
    snapshot_every : int
        Also write the generation model of every ``snapshot_every``-th adversarial epoch to
        ``snapshots/epoch_NNNN/``; 0: none.  It does not change the training.
    """

    epochs: int = 90
    windows_per_epoch: int = 4096
    batch_size: int = 64
    loss: str = "wgan-gp"
    gp_weight: float = 10.0
    drift_weight: float = 1e-3
    d_pretrain_epochs: int = 10
    d_steps_per_g_step: int = 2
    d_optimizer: str = "adam"
    g_optimizer: str = "adam"
    d_lr: float = 2e-4
    g_lr: float = 2e-4
    d_momentum: float = 0.9
    g_momentum: float = 0.9
    d_betas: tuple[float, float] = (0.0, 0.9)
    g_betas: tuple[float, float] = (0.0, 0.9)
    label_smoothing: float = 0.1
    synthetic_weight: float = 1.0
    feature_weight: float = 0.5
    ema_decay: float = 0.99
    window_samples: int = DEFAULT_WINDOW_SAMPLES
    highpass_hz: float | None = None
    highpass_clip_sigma: float | None = 5.0
    val_fraction: float = 0.2
    transform_noise_multiple: float = 4.0
    output_bound_margin: float | None = 0.5
    val_windows: int = 512
    quality_windows: int = 512
    bn_calibration_batches: int = 16
    slow_noise_calibration: bool = True
    seed: int = 1
    num_threads: int | None = None
    condition_on: tuple[str, ...] = ()
    wafer_layer: bool = True
    fit_pulses: bool = True
    joint_detectors: bool = False
    snapshot_every: int = 0

    def __post_init__(self) -> None:
        self.condition_on = tuple(cond_name(c) for c in self.condition_on)
        self.d_betas = tuple(float(b) for b in self.d_betas)
        self.g_betas = tuple(float(b) for b in self.g_betas)
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (
                self.windows_per_epoch >= self.batch_size * self.d_steps_per_g_step,
                f"windows_per_epoch ({self.windows_per_epoch}) must be >= batch_size x d_steps_per_g_step ({self.batch_size} x {self.d_steps_per_g_step}) "
                "so that every epoch has a generator step",
            ),
            (self.batch_size >= 2, f"batch_size must be >= 2, got {self.batch_size}"),
            (self.loss in ("bce", "wgan-gp"), f"loss must be 'bce' or 'wgan-gp', got {self.loss!r}"),
            (self.d_pretrain_epochs >= 0, f"d_pretrain_epochs must be >= 0, got {self.d_pretrain_epochs}"),
            (self.d_steps_per_g_step >= 1, f"d_steps_per_g_step must be >= 1, got {self.d_steps_per_g_step}"),
            (self.d_optimizer in ("sgd", "adam"), f"d_optimizer must be 'sgd' or 'adam', got {self.d_optimizer!r}"),
            (self.g_optimizer in ("sgd", "adam"), f"g_optimizer must be 'sgd' or 'adam', got {self.g_optimizer!r}"),
            (self.d_lr > 0 and self.g_lr > 0, "learning rates must be > 0"),
            (0.0 <= self.label_smoothing < 0.5, f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}"),
            (self.feature_weight >= 0, f"feature_weight must be >= 0, got {self.feature_weight}"),
            (self.drift_weight >= 0, f"drift_weight must be >= 0, got {self.drift_weight}"),
            (self.highpass_clip_sigma is None or self.highpass_clip_sigma > 0, f"highpass_clip_sigma must be > 0 or None, got {self.highpass_clip_sigma}"),
            (self.output_bound_margin is None or self.output_bound_margin >= 0, f"output_bound_margin must be >= 0 or None, got {self.output_bound_margin}"),
            (self.synthetic_weight > 0, f"synthetic_weight must be > 0, got {self.synthetic_weight}"),
            (0.0 <= self.ema_decay < 1.0, f"ema_decay must be in [0, 1), got {self.ema_decay}"),
            (self.snapshot_every >= 0, f"snapshot_every must be >= 0 (0: no snapshots), got {self.snapshot_every}"),
            (self.window_samples >= 32, f"window_samples must be >= 32, got {self.window_samples}"),
            (0.0 < self.val_fraction < 1.0, f"val_fraction must be in (0, 1), got {self.val_fraction}"),
            (self.val_windows >= 2 and self.quality_windows >= 2, "val_windows and quality_windows must be >= 2"),
            (self.bn_calibration_batches >= 1, "bn_calibration_batches must be >= 1"),
            (self.num_threads is None or self.num_threads >= 1, f"num_threads must be >= 1, got {self.num_threads}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(msg)
        rng.check_seed(self.seed)

    @property
    def total_epochs(self) -> int:
        """Pretraining plus adversarial epochs."""
        return self.d_pretrain_epochs + self.epochs

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, what: str = "this training") -> "TrainConfig":
        """From :meth:`to_dict` (unknown keys ignored); a removed setting is dropped if it holds its
        old default, else :class:`~crab.core.errors.ModelCompatibilityError`."""
        d = _drop_removed(d, REMOVED_TRAIN_FIELDS, what)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
