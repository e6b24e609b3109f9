"""The generator and discriminator networks (paper, section 3.1).

All layers are one-dimensional: a TOD window is a one-dimensional image.

Discriminator
    four strided 1-D convolutions, each followed by layer normalisation
    (``GroupNorm`` with one group: normalises every sample over all its
    channels and positions, i.e. layer normalisation that does not depend on
    the window length) and a LeakyReLU, then a dense layer giving one logit.
Generator
    its mirror: four upsampling stages (x2 each), every one a nearest-neighbour
    upsample followed by a 1-D convolution, batch normalisation and a
    LeakyReLU, then a convolution to the output channel(s).

Two generator architectures are available (``ModelConfig.generator_arch``):

``"streaming"`` (default)
    The latent is a *sequence* of latent vectors, one per ``upsample_factor``
    output samples, and every layer is a convolution.  The generator is
    therefore translation-equivariant with a finite receptive field: any
    stretch of TOD is produced from the latents around it, so arbitrarily
    long TOD is generated tile by tile with no seams, and any tile can be
    generated alone (see :mod:`crab.generation.engine`).
``"paper"``
    The paper's layout: one latent vector per window, a dense layer to the
    coarsest resolution, then the same upsampling stages.  Windows are
    independent, so long TOD needs overlapping windows joined by a cross-fade.

Conditioning inputs (e.g. the solar modulation potential ``phi``) enter both
networks as extra constant channels when ``cond_dim > 0`` (the input of every
generator convolution; the discriminator's input and dense head), scaled by
:func:`normalize_cond` to [-1, 1] over the trained range.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn


def normalize_cond(values, cond_range) -> np.ndarray:
    """Raw condition values (..., n_cond) -> the networks' input scale: -1 .. 1 over ``cond_range``.

    Parameters
    ----------
    values : array_like, shape (..., n_cond)
        Physical values (e.g. ``phi_gv`` in GV).
    cond_range : sequence of (float, float)
        Trained range of each condition (``TrainedModel.cond_range``).
    """
    v = np.asarray(values, dtype=np.float64)
    r = np.asarray(cond_range, dtype=np.float64).reshape(-1, 2)
    if v.shape[-1:] != (len(r),):
        raise ValueError(f"expected {len(r)} condition value(s) per row, got shape {v.shape}")
    lo, hi = r[:, 0], r[:, 1]
    return 2.0 * (v - lo) / np.where(hi > lo, hi - lo, 1.0) - 1.0


@dataclass
class ModelConfig:
    """Architecture of the two networks.

    Attributes
    ----------
    window_samples : int
        Length of a training window (samples); a multiple of ``upsample_factor``.
    latent_dim : int
        Channels of the latent (per latent step for the streaming generator,
        length of the latent vector for the paper generator).  For the
        streaming generator this includes the ``noise_dim`` noise channels.
    noise_dim : int
        Streaming generator only: the last ``noise_dim`` latent channels
        (a multiple of ``upsample_factor``) are rearranged into
        ``noise_dim / upsample_factor`` full-resolution noise channels
        (latent step ``j``, channel ``c`` -> sample ``16 j + c``) fed to the
        last upsampling stage, like StyleGAN's noise inputs.  Without them a
        generator that only upsamples a coarse latent cannot produce the
        sample-to-sample white noise of the TOD.  0 disables.
    event_channels : int
        Streaming generator only (ignored by the paper's): how many of the full-resolution noise
        channels (the last ones) are *event* channels, a sparse point process
        instead of Gaussian noise: a value ``|z| <= event_threshold`` is set
        to 0 (:func:`event_noise`).  Cosmic-ray hits are a Poisson process
        of discrete events; a network fed only continuous latents can only
        interpolate between "no glitch" and "glitch", and puts too many
        glitches just above the noise.  An event channel says *that* and
        *where* (to the sample) something happens; the Gaussian channels and
        the coarse latents shape it.  0 disables (``noise_dim`` then needs
        only the Gaussian channel, e.g. ``noise_dim=16, latent_dim=24``).
    event_threshold : float
        Threshold of the event channels (in units of the standard normal
        latent): probability ``2 * (1 - Phi(t))`` of an event per sample
        (1.2 % for 2.5, i.e. 0.24 events per second at 19 Hz).
    event_subsample : bool
        Place each event at a random time between two samples (split between
        them, see :func:`event_noise`); needs a Gaussian noise channel.
    event_kernel : int
        Length (samples, odd) of a learned linear filter of the event
        channels (:class:`EventFilter`): its ``2 * event_channels`` outputs
        are fed to the last upsampling stage beside the noise channels, so
        that every event carries a learned pulse (rise and decay) longer than
        the reach of the generator's convolutions (a wafer hit decays over
        tens of samples; the last stage and the head see +-4).  It widens
        the receptive field by ``event_kernel // 2`` samples.  0 disables;
        ignored without event channels.
    additive_glitches : bool
        Compose the glitches of the event channels in TOD units
        (:class:`AdditiveGlitches`): every event adds a learned pulse of
        amplitude ``A`` (Pareto distributed, learned scale and index) and
        sub-sample shape to the network's output *before* the amplitude
        transform, ``x = x0 + s (sinh(k y) + sum A pulse)``, instead of the
        network drawing it in transformed units.  A glitch then keeps its
        shape at every height: through the ``asinh`` a pulse drawn in
        transformed units gets steeper the higher it is (the largest
        glitches rose in one sample, against 0.2 of the peak a sample
        before in the Monte Carlo).  The events still feed the network too
        (noise and shape corrections around a hit).  The pulses are
        ``event_kernel`` samples long; ignored without event channels or
        with ``event_kernel`` 0.
    causal_pulses : bool
        Additive glitches only: the pulses start at the event's sample (the
        taps that would put signal before it are held at 0), as a cosmic-ray
        hit cannot be seen before it happens.  Free 33-tap pulses learned
        precursors of a few percent of the peak, several samples before the
        event: a few noise sigma in front of a 100-sigma glitch.  It did not
        lower the classifier AUC (training seeds 1 / 2, docs/design.md), so
        it is off by default.
    transform_out_scale : float or None
        ``k`` of the amplitude transform (:class:`crab.models.gan.transform.AmplitudeTransform`
        ``out_scale``), needed by ``additive_glitches`` and
        ``discriminator_peak_view``; set by the trainer from the training
        data, like ``output_bounds``.

    The defaults (three event channels with sub-sample placement and 33-tap
    pulses, beside one Gaussian channel, whose glitches are added in TOD
    units, and a discriminator that also sees the peak view) are the
    variant with the lowest classifier AUC of the validation over four
    training seeds; it met the amplitude-distribution target in three of
    them (docs/design.md, "Event channels" and "Discriminator peak view").
    generator_arch : str
        ``"streaming"`` or ``"paper"`` (see module docstring).
    generator_channels : tuple of int
        Channels of the coarse input stage and of the four upsampling stages
        (five numbers, coarse to fine).
    discriminator_channels : tuple of int
        Channels of the four convolutional layers of the discriminator.
    kernel_size : int
        Convolution kernel length (odd).
    leaky_slope : float
        Negative slope of the LeakyReLU activations.
    out_channels : int
        Channels of a TOD window (1 per detector, more for jointly generated detectors).
    cond_dim : int
        Number of conditioning inputs (0 for an unconditioned model).
    spectral_norm : bool
        Spectral normalisation of the discriminator's layers.
    minibatch_std : bool
        Append the minibatch standard deviation as a feature before the
        discriminator's dense layer (counters mode collapse).
    output_bounds : tuple of float or None
        ``(lo, hi)`` in the transformed amplitude space: the generator's output
        goes through :func:`soft_bound`, the identity in the middle that
        saturates smoothly at ``lo`` and ``hi`` (set by the trainer from the
        range of the training data plus a margin).  The inverse transform is a
        ``sinh``, so an unbounded output far outside the training range became
        an exponentially large outlier in TOD units.  None: no bound.
    output_bound_width : float
        Width of the smooth knee of :func:`soft_bound` (transformed units).
    discriminator_diff : bool
        Feed the discriminator the first differences of each window as extra
        input channels (``x[n] - x[n-1]``, 0 at the first sample): a direct
        view of the sample-to-sample (high-frequency) noise and of glitch
        rise times.
    discriminator_peak_view : bool
        Feed the discriminator, as extra input channels, each window back in
        TOD units (``sinh(k y)``, relative to its median) divided by its
        maximum, the maximum floored at :attr:`Discriminator.PEAK_VIEW_FLOOR`
        transform scales: the shape of the window's largest glitch,
        independent of its height (a quiet window gives its noise, small).
        The discriminator otherwise sees the ``asinh``-compressed window, in
        which the samples beside a 100-sigma peak differ by about one noise
        sigma whether they are 0.4 or 0.15 of the peak, so the generator got
        almost no signal about the glitches' rise and width.  Needs
        ``transform_out_scale``.
    shared_latent_dim : int
        Joint (wafer) streaming generator with ``out_channels > 1`` only: the
        channels of a *shared* latent sequence.  Each detector of the wafer is
        then produced by the same network from the shared latents plus its
        own ``latent_dim`` latents (a wafer-event stream plus per-detector
        ones): common-mode glitches come from the shared part, direct hits
        from each detector's own part, and the detectors are exchangeable.
        0: the channels come out of one network run on ``latent_dim`` latents.
    """

    window_samples: int = 256
    latent_dim: int = 72
    noise_dim: int = 64
    generator_arch: str = "streaming"
    generator_channels: tuple[int, ...] = (32, 32, 16, 8, 8)
    discriminator_channels: tuple[int, ...] = (16, 32, 64, 64)
    kernel_size: int = 5
    leaky_slope: float = 0.2
    out_channels: int = 1
    cond_dim: int = 0
    spectral_norm: bool = False
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
    causal_pulses: bool = False
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
        if self.generator_arch not in ("streaming", "paper"):
            raise ValueError(f"generator_arch must be 'streaming' or 'paper', got {self.generator_arch!r}")
        if self.generator_arch == "streaming" and (self.noise_dim < 0 or self.noise_dim % self.upsample_factor or self.noise_dim >= self.latent_dim):
            raise ValueError(
                f"noise_dim must be a multiple of {self.upsample_factor} and smaller than latent_dim ({self.latent_dim}), got {self.noise_dim}"
            )
        n_noise = self.noise_dim // self.upsample_factor  # full-resolution noise channels of the streaming generator
        if self.event_channels < 0 or (self.generator_arch == "streaming" and self.event_channels > n_noise):
            raise ValueError(
                f"event_channels ({self.event_channels}) must be >= 0 and at most the noise channels of the streaming generator, "
                f"noise_dim / {self.upsample_factor} = {n_noise}"
            )
        if self.event_subsample and self.event_channels and self.generator_arch == "streaming" and self.event_channels == n_noise:
            raise ValueError(f"event_subsample needs a Gaussian noise channel besides the event channels (noise_dim / {self.upsample_factor} > event_channels)")
        if self.event_kernel < 0 or (self.event_kernel and self.event_kernel % 2 == 0):
            raise ValueError(f"event_kernel must be 0 or an odd length, got {self.event_kernel}")
        if self.has_additive_glitches and self.out_channels > 1 and not self.shared_latent_dim:
            raise ValueError("additive_glitches needs one output channel per network run: out_channels 1, or shared_latent_dim > 0 for a wafer")
        if self.transform_out_scale is not None:
            self.transform_out_scale = float(self.transform_out_scale)
            if not (self.transform_out_scale > 0 and math.isfinite(self.transform_out_scale)):
                raise ValueError(f"transform_out_scale must be finite and > 0, got {self.transform_out_scale}")
        if not (self.event_threshold >= 0 and math.isfinite(self.event_threshold)):
            raise ValueError(f"event_threshold must be finite and >= 0, got {self.event_threshold}")
        if self.shared_latent_dim < 0 or (self.shared_latent_dim and (self.generator_arch != "streaming" or self.out_channels < 2)):
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
        channels and pulses on the streaming generator (otherwise the field is ignored)."""
        return bool(self.additive_glitches and self.event_channels and self.event_kernel and self.generator_arch == "streaming")

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
    def from_dict(cls, d: dict) -> "ModelConfig":
        """From :meth:`to_dict`; a field missing from an older file takes the value that meant "off" then."""
        d = {**LEGACY_FIELDS, **d}
        d.pop("n_upsample", None)
        return cls(**d)


#: Fields added after the first model files, with the values that reproduce those files' networks.
LEGACY_FIELDS = {"event_channels": 0, "event_subsample": False, "event_kernel": 0, "additive_glitches": False, "discriminator_peak_view": False, "causal_pulses": False}


def soft_bound(y, lo: float, hi: float, width: float):
    """Smooth asymmetric clamp of ``y`` (numpy array or torch tensor) into ``(lo, hi)``.

    The identity on ``[lo + width, hi - width]``; beyond the knees
    ``a + width * tanh((y - a) / width)`` (``a`` the knee), continuous with a
    continuous first derivative, strictly increasing, and never reaching
    ``lo`` or ``hi``.
    """
    a, b = hi - width, lo + width
    if isinstance(y, torch.Tensor):
        up = a + width * torch.tanh((y - a) / width)
        down = b + width * torch.tanh((y - b) / width)
        return torch.where(y > a, up, torch.where(y < b, down, y))
    import numpy as np

    y = np.asarray(y)
    w = y.dtype.type(width) if y.dtype.kind == "f" else width
    out = np.where(y > a, a + w * np.tanh((y - a) / w), y)
    out = np.where(y < b, b + w * np.tanh((y - b) / w), out)
    return out.astype(y.dtype, copy=False)


def event_phase(gauss: torch.Tensor) -> torch.Tensor:
    """Sub-sample phase ``p = Phi(g)``, uniform in (0, 1), of an event from the Gaussian noise latent ``g`` at its sample."""
    return 0.5 * (1.0 + torch.erf(gauss / math.sqrt(2.0)))


def event_noise(noise: torch.Tensor, n_event_channels: int, threshold: float, subsample: bool = False) -> torch.Tensor:
    """Turn the last ``n_event_channels`` full-resolution noise channels into sparse event channels.

    ``noise`` (..., n_noise, n_samples): the generator's full-resolution noise
    inputs (standard normal).  In each event channel every value with
    ``|z| <= threshold`` becomes 0 and the others are kept.  With
    ``subsample`` each event is moreover split between its sample and the
    next in proportions ``1 - p`` and ``p``, with ``p = Phi(g)`` uniform in
    (0, 1) from the first (Gaussian) noise channel at that sample: an event
    at a random time *between* samples, as a linear interpolation places an
    impulse, so that a convolution can give the sub-sample spread of
    glitch shapes the anti-alias filter gives a real TOD.  An event in the
    last sample loses its moved part (it belongs to the next samples, which a
    streaming generator always computes with a margin).  The same function
    serves training and streaming generation.  Returns a new tensor.
    """
    if not n_event_channels:
        return noise
    k = noise.shape[-2] - n_event_channels
    gauss, ev = noise[..., :k, :], noise[..., k:, :]
    ev = torch.where(ev.abs() > threshold, ev, torch.zeros_like(ev))
    if subsample:
        p = event_phase(gauss[..., :1, :])
        moved = ev * p
        ev = ev - moved + torch.nn.functional.pad(moved[..., :-1], (1, 0))
    return torch.cat([gauss, ev], -2)


def causal_decay(kernel: int, tau_samples: float) -> torch.Tensor:
    """Taps (``kernel``, odd) of a zero-padded ``Conv1d`` that make an impulse into a causal
    exponential decay of ``tau_samples``: tap ``j <= kernel // 2`` reads the input ``kernel // 2 - j``
    samples earlier with weight ``exp(-(kernel // 2 - j) / tau_samples)``; the later taps are 0."""
    h = kernel // 2
    lag = torch.arange(h, -1, -1, dtype=torch.float32)
    w = torch.zeros(kernel)
    w[: h + 1] = torch.exp(-lag / tau_samples)
    return w


class EventFilter(nn.Module):
    """Learned pulse shapes of the event channels (``ModelConfig.event_kernel``).

    ``forward(noise)`` maps the full-resolution noise inputs (batch, n_noise,
    n_samples), whose last ``n_events`` channels are event channels
    (:func:`event_noise`), to (batch, n_noise + 2 n_events, n_samples): the
    inputs followed by a linear convolution of the event channels (no bias,
    zero padding, ``kernel`` taps).  Its weights start as causal exponential
    decays of 1 and 6 samples after each event (a direct hit and a wafer hit
    at 19 Hz), which training reshapes.
    """

    def __init__(self, n_events: int, kernel: int) -> None:
        super().__init__()
        self.n_events = int(n_events)
        self.conv = nn.Conv1d(self.n_events, 2 * self.n_events, kernel, padding=kernel // 2, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        w = torch.zeros_like(self.conv.weight)
        for i in range(self.n_events):
            for j, tau in enumerate((1.0, 6.0)):
                w[2 * i + j, i] = 0.1 * causal_decay(self.conv.kernel_size[0], tau)
        with torch.no_grad():
            self.conv.weight.copy_(w)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return torch.cat([noise, self.conv(noise[:, noise.shape[1] - self.n_events :])], 1)


class AdditiveGlitches(nn.Module):
    r"""Glitches of the event channels composed in TOD units (``ModelConfig.additive_glitches``).

    An event of channel ``i`` (a latent ``|z| > t``, :func:`event_noise`) has
    the amplitude (units of the transform's linear scale ``s``)

    .. math::

        A = a_i \exp(c_i E), \qquad
        E = \ln \frac{P(|Z| > t)}{P(|Z| > |z|)} \sim \mathrm{Exp}(1),

    a Pareto distribution ``P(A > a) = (a / a_i)^{-1 / c_i}`` above ``a_i``
    (capped at ``exp(log_amax)``), and the pulse ``K_i0 + p K_i1 + p^2 K_i2``
    around its sample, ``p`` its sub-sample phase (``event_subsample``; the
    phase of :func:`event_noise`, ``Phi`` of the first Gaussian noise channel),
    so that a learned pulse can move by a fraction of a sample.
    ``forward`` returns the sum of all pulses (batch, 1, n_samples).

    The pulses start as causal exponential decays of 1 and 6 samples split
    linearly between the event's sample and the next (``K_i1 = K_i0(t - 1) -
    K_i0(t)``, ``K_i2 = 0``), ``a_i = 0.5`` and ``c_i = 1`` (the Monte Carlo's
    amplitude slope is about 2).  ``a_i`` and ``c_i`` are stored as
    ``log(.) / LR_MULT`` (equalised learning rate: with Adam, a parameter
    moves by about the learning rate per step, too slow for a log-amplitude).
    """

    #: Learning-rate multiplier of the amplitude parameters (see class docstring).
    LR_MULT = 20.0

    def __init__(self, n_events: int, kernel: int, threshold: float, subsample: bool, causal: bool = False) -> None:
        super().__init__()
        self.n_events, self.threshold, self.subsample = int(n_events), float(threshold), bool(subsample)
        self._log_tail = float(torch.special.log_ndtr(torch.tensor(-self.threshold)))  # ln P(Z > t) (float32, as the latents)
        self.n_basis = 3 if self.subsample else 1
        self.conv = nn.Conv1d(self.n_events * self.n_basis, 1, kernel, padding=kernel // 2, bias=False)
        self.log_a0 = nn.Parameter(torch.zeros(self.n_events))
        self.log_c1 = nn.Parameter(torch.zeros(self.n_events))
        mask = torch.ones(1, 1, kernel)
        if causal:  # tap j reads the input kernel // 2 - j samples earlier: j > kernel // 2 would put signal before the event
            mask[..., kernel // 2 + 1 :] = 0.0
        self.register_buffer("tap_mask", mask, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        k = self.conv.kernel_size[0]
        w = torch.zeros_like(self.conv.weight)
        for i in range(self.n_events):
            k0 = causal_decay(k, (1.0, 6.0)[i % 2])
            w[0, i * self.n_basis] = k0
            if self.subsample:  # the linear split (1 - p, p): K(t) + p (K(t - 1) - K(t))
                k1 = torch.zeros(k)
                k1[:-1] = k0[1:]
                w[0, i * self.n_basis + 1] = k1 - k0
        with torch.no_grad():
            self.conv.weight.copy_(w)
            self.log_a0.fill_(math.log(0.5) / self.LR_MULT)
            self.log_c1.zero_()

    def pulse_weight(self) -> torch.Tensor:
        """The pulse taps in use (``conv.weight``; the taps before the event held at 0 for causal pulses)."""
        return self.conv.weight * self.tap_mask

    def scale_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, c)`` of every event channel: Pareto scale (transform-scale units) and 1 / index."""
        return torch.exp(self.LR_MULT * self.log_a0), torch.exp(self.LR_MULT * self.log_c1)

    def log_amplitudes(self, z: torch.Tensor, channel: torch.Tensor | None = None) -> torch.Tensor:
        """``log A`` (uncapped) of event latents: ``z`` (..., n_events, n) of the event channels, or
        values ``z`` (m,) of the channels ``channel`` (m,).  Meaningful where ``|z| > threshold``."""
        a, c = self.LR_MULT * self.log_a0, torch.exp(self.LR_MULT * self.log_c1)
        a, c = (a[:, None], c[:, None]) if channel is None else (a[channel], c[channel])
        e = (self._log_tail - torch.special.log_ndtr(-z.abs())).clamp(min=0)
        return a + c * e

    def amplitudes(self, z: torch.Tensor, log_amax: float, channel: torch.Tensor | None = None) -> torch.Tensor:
        """``A`` of event latents (as :meth:`log_amplitudes`), capped at ``exp(log_amax)``."""
        return torch.exp(torch.clamp(self.log_amplitudes(z, channel), max=log_amax))

    def forward(self, z: torch.Tensor, gauss0: torch.Tensor, log_amax: float) -> torch.Tensor:
        """Pulses of the raw event latents ``z`` (batch, n_events, n) with phases from ``gauss0`` (batch, 1, n)."""
        hit = z.abs() > self.threshold
        amp = torch.where(hit, self.amplitudes(z, log_amax), torch.zeros_like(z))
        if self.subsample:
            p = event_phase(gauss0)
            amp = torch.stack([amp, amp * p, amp * p * p], 2).flatten(1, 2)
        return nn.functional.conv1d(amp, self.pulse_weight(), padding=self.conv.padding)


def _init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: N(0, 0.02) weights, zero biases, BN weights N(1, 0.02)."""
    if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm1d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class _UpStage(nn.Sequential):
    """Upsample x2, (concatenate noise channels), convolution, batch norm, LeakyReLU."""

    def __init__(self, c_in: int, c_out: int, k: int, slope: float, n_noise: int = 0, n_cond: int = 0) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv1d(c_in + n_noise + n_cond, c_out, k, padding=k // 2, bias=False),
            nn.BatchNorm1d(c_out),
            nn.LeakyReLU(slope),
        )

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = self[0](x)
        if noise is not None:
            x = torch.cat([x, noise], 1)
        if cond is not None:  # constant condition channels, last
            x = torch.cat([x, cond[:, :, None].expand(-1, -1, x.shape[-1])], 1)
        return self[3](self[2](self[1](x)))


class Generator(nn.Module):
    """Latent -> TOD window(s) in the transformed amplitude space.

    Streaming architecture: ``forward(z)`` with ``z`` of shape
    ``(batch, latent_dim, n_latent_steps)`` returns ``(batch, out_channels,
    n_latent_steps * upsample_factor)``.  Output samples
    ``[upsample_factor * m, upsample_factor * (n - m))`` do not depend on the
    zero padding at the edges when ``m >= margin_latents``.

    Paper architecture: ``z`` of shape ``(batch, latent_dim)`` (or with a
    trailing length-1 axis) returns ``(batch, out_channels, window_samples)``.

    ``cond`` (batch, cond_dim), when the model is conditioned, is broadcast
    along time as extra input channels.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch, k, s = cfg.generator_channels, cfg.kernel_size, cfg.leaky_slope
        self.streaming = cfg.generator_arch == "streaming"
        self.noise_dim = cfg.noise_dim if self.streaming else 0
        self.exchangeable = bool(cfg.shared_latent_dim)
        n_noise = self.noise_dim // cfg.upsample_factor
        self.event_filter = EventFilter(cfg.event_channels, cfg.event_kernel) if self.streaming and cfg.event_kernel and cfg.event_channels else None
        if self.event_filter is not None:
            n_noise += self.event_filter.conv.out_channels  # the pulses are inputs of the last stage too
        n_in = cfg.latent_dim - self.noise_dim + cfg.cond_dim + cfg.shared_latent_dim
        self.coarse_len = cfg.window_samples // cfg.upsample_factor
        if self.streaming:
            self.stem = nn.Sequential(nn.Conv1d(n_in, ch[0], 3, padding=1, bias=False), nn.BatchNorm1d(ch[0]), nn.LeakyReLU(s))
        else:
            self.stem = nn.Sequential(nn.Linear(n_in, ch[0] * self.coarse_len, bias=False), nn.Unflatten(1, (ch[0], self.coarse_len)), nn.BatchNorm1d(ch[0]), nn.LeakyReLU(s))
        self.stages = nn.ModuleList([_UpStage(ch[i], ch[i + 1], k, s, n_noise if i == cfg.n_upsample - 1 else 0, cfg.cond_dim) for i in range(cfg.n_upsample)])
        self.head = nn.Conv1d(ch[-1] + cfg.cond_dim, 1 if self.exchangeable else cfg.out_channels, k, padding=k // 2)
        self.apply(_init_weights)
        if self.event_filter is not None:
            self.event_filter.reset_parameters()
        self.additive = None
        if cfg.has_additive_glitches:
            self.additive = AdditiveGlitches(cfg.event_channels, cfg.event_kernel, cfg.event_threshold, cfg.event_subsample, cfg.causal_pulses)

    @property
    def input_latent_dim(self) -> int:
        """Latent channels of one run of the network (shared + own latents when exchangeable)."""
        return self.cfg.latent_dim + self.cfg.shared_latent_dim

    def assemble_latents(self, z: torch.Tensor, channel: int) -> torch.Tensor:
        """Exchangeable wafer: the network input of ``channel`` from the wafer latents ``z``
        (..., shared + out_channels * latent_dim, steps) -> (..., shared + latent_dim, steps)."""
        s, L = self.cfg.shared_latent_dim, self.cfg.latent_dim
        return torch.cat([z[..., :s, :], z[..., s + channel * L : s + (channel + 1) * L, :]], -2)

    @property
    def margin_latents(self) -> int:
        """Latent steps on each side of a tile that its outputs can depend on."""
        k = self.cfg.kernel_size
        f = self.cfg.upsample_factor
        radius = 1 * f  # stem, kernel 3 at the coarse resolution
        for i in range(self.cfg.n_upsample):
            radius += (k // 2) * f // 2 ** (i + 1)
        radius += k // 2  # head, full resolution
        if self.event_filter is not None or self.additive is not None:  # events feed the last stage / add pulses
            radius += self.cfg.event_kernel // 2
        return int(math.ceil(radius / f)) + 1

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.exchangeable:
            if z.ndim != 3:
                raise ValueError(f"streaming generator expects z of shape (batch, latent_dim, steps), got {tuple(z.shape)}")
            b, c, steps = z.shape[0], self.cfg.out_channels, z.shape[-1]
            zz = torch.stack([self.assemble_latents(z, i) for i in range(c)], 1).reshape(b * c, self.input_latent_dim, steps)
            y = self._forward(zz, None if cond is None else cond.repeat_interleave(c, 0))
            return y.reshape(b, c, y.shape[-1])
        return self._forward(z, cond)

    def _forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.streaming:
            if z.ndim != 3:
                raise ValueError(f"streaming generator expects z of shape (batch, latent_dim, steps), got {tuple(z.shape)}")
            noise = None
            if self.noise_dim:
                b, f, steps = z.shape[0], self.cfg.upsample_factor, z.shape[-1]
                zn = z[:, z.shape[1] - self.noise_dim :]
                noise = zn.reshape(b, -1, f, steps).transpose(2, 3).reshape(b, -1, steps * f)
                if self.additive is not None:
                    pulses = self.additive(noise[:, noise.shape[1] - self.cfg.event_channels :], noise[:, :1], self.log_amplitude_cap)
                noise = event_noise(noise, self.cfg.event_channels, self.cfg.event_threshold, self.cfg.event_subsample)
                if self.event_filter is not None:
                    noise = self.event_filter(noise)
                z = z[:, : z.shape[1] - self.noise_dim]
            x = z if cond is None else torch.cat([z, cond[:, :, None].expand(-1, -1, z.shape[-1])], 1)
        else:
            noise = None
            zz = z.reshape(z.shape[0], -1)
            x = zz if cond is None else torch.cat([zz, cond], 1)
        h = self.stem(x)
        for i, stage in enumerate(self.stages):
            h = stage(h, noise if i == len(self.stages) - 1 else None, cond)
        if cond is not None:
            h = torch.cat([h, cond[:, :, None].expand(-1, -1, h.shape[-1])], 1)
        y = self.bound(self.head(h))
        if self.additive is not None:
            k = self.out_scale
            y = torch.asinh(torch.sinh(k * y) + pulses) / k
        return y

    @property
    def out_scale(self) -> float:
        """``k`` of the amplitude transform (``cfg.transform_out_scale``), needed by ``additive_glitches``."""
        if self.cfg.transform_out_scale is None:
            raise ValueError("additive_glitches needs ModelConfig.transform_out_scale (the trainer sets it from the amplitude transform)")
        return self.cfg.transform_out_scale

    @property
    def log_amplitude_cap(self) -> float:
        """Cap of an additive glitch's log amplitude: ``k * hi`` with the output bound ``hi`` (a glitch
        at most about twice the largest training value), else 20."""
        return self.out_scale * self.cfg.output_bounds[1] if self.cfg.output_bounds is not None else 20.0

    def bound(self, y: torch.Tensor) -> torch.Tensor:
        """The output bound (:func:`soft_bound` with ``cfg.output_bounds``; identity when None)."""
        if self.cfg.output_bounds is None:
            return y
        lo, hi = self.cfg.output_bounds
        return soft_bound(y, lo, hi, self.cfg.output_bound_width)

    def latent_shape(self, batch: int, n_latent_steps: int | None = None) -> tuple[int, ...]:
        """Shape of the latent input for ``batch`` windows (or tiles of ``n_latent_steps``)."""
        if self.streaming:
            dim = self.cfg.shared_latent_dim + self.cfg.out_channels * self.cfg.latent_dim if self.exchangeable else self.cfg.latent_dim
            return (batch, dim, n_latent_steps or self.coarse_len)
        return (batch, self.cfg.latent_dim)


def peak_view(y: torch.Tensor, out_scale: float, floor: float) -> torch.Tensor:
    """Windows ``y`` (..., n) of transformed amplitudes back in transform scales (``sinh(k y)``),
    minus their median, divided by ``max(window maximum, floor)``
    (``ModelConfig.discriminator_peak_view``)."""
    lin = torch.sinh(out_scale * y)
    lin = lin - lin.median(dim=-1, keepdim=True).values
    return lin / lin.amax(dim=-1, keepdim=True).clamp(min=floor)


class _MinibatchStd(nn.Module):
    """Adds one feature: the mean over features of the standard deviation across the batch."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        std = h.float().std(dim=0, unbiased=False).mean().expand(h.shape[0], 1)
        return torch.cat([h, std.to(h.dtype)], 1)


class Discriminator(nn.Module):
    """TOD window -> one logit (real > 0).  Input (batch, out_channels, window_samples)."""

    #: Floor of the peak view's divisor (transform scales ``s``; 10 robust noise sigma at the
    #: default ``TrainConfig.transform_noise_multiple`` of 4): a window without a glitch above it
    #: shows its noise at its own small height instead of stretched to 1.
    PEAK_VIEW_FLOOR = 2.5

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch, k, s = cfg.discriminator_channels, cfg.kernel_size, cfg.leaky_slope
        sn = nn.utils.parametrizations.spectral_norm if cfg.spectral_norm else (lambda m: m)
        layers: list[nn.Module] = []
        if cfg.discriminator_peak_view and cfg.transform_out_scale is None:
            raise ValueError("discriminator_peak_view needs transform_out_scale (k of the amplitude transform; the trainer sets it)")
        c_in = cfg.out_channels * (1 + cfg.discriminator_diff + cfg.discriminator_peak_view) + cfg.cond_dim
        for c in ch:
            layers += [sn(nn.Conv1d(c_in, c, k, stride=2, padding=k // 2)), nn.GroupNorm(1, c), nn.LeakyReLU(s)]
            c_in = c
        self.features = nn.Sequential(*layers, nn.Flatten())
        n_feat = ch[-1] * cfg.window_samples // 16
        self.mbstd = _MinibatchStd() if cfg.minibatch_std else None
        self.head = sn(nn.Linear(n_feat + (1 if cfg.minibatch_std else 0) + cfg.cond_dim, 1))
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.cfg.window_samples:
            raise ValueError(f"discriminator expects (batch, {self.cfg.out_channels}, {self.cfg.window_samples}), got {tuple(x.shape)}")
        raw = x
        if self.cfg.discriminator_diff:
            x = torch.cat([x, torch.nn.functional.pad(torch.diff(x, dim=-1), (1, 0))], 1)
        if self.cfg.discriminator_peak_view:
            x = torch.cat([x, peak_view(raw, self.cfg.transform_out_scale, self.PEAK_VIEW_FLOOR)], 1)
        if cond is not None:
            x = torch.cat([x, cond[:, :, None].expand(-1, -1, x.shape[-1])], 1)
        h = self.features(x)
        if self.mbstd is not None:
            h = self.mbstd(h)
        if cond is not None:
            h = torch.cat([h, cond], 1)
        return self.head(h).squeeze(1)
