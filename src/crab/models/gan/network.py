"""The generator and discriminator networks (paper, section 3.1), configured by
:class:`crab.models.gan.config.ModelConfig`.

All layers are one-dimensional: a TOD window is a one-dimensional image.

Discriminator
    four strided 1-D convolutions, each followed by layer normalisation
    (``GroupNorm`` with one group: normalises every sample over all its
    channels and positions, independently of the window length) and a
    LeakyReLU, then a dense layer giving one logit.
Generator
    streaming and fully convolutional: the latent is a *sequence* of latent
    vectors, one per ``upsample_factor`` output samples; a convolutional stem,
    four upsampling stages (x2 each: nearest-neighbour upsample, 1-D
    convolution, batch normalisation, LeakyReLU) and a convolution to the
    output channel(s).  It is translation-equivariant with a finite receptive
    field, so any stretch of TOD is produced from the latents around it and
    long TOD is generated tile by tile with no seams
    (:mod:`crab.generation.engine`).

Conditioning inputs (e.g. the solar modulation potential ``phi``) enter both
networks as extra constant channels when ``cond_dim > 0`` (the input of every
generator convolution; the discriminator's input and dense head), scaled by
:func:`normalize_cond` to [-1, 1] over the trained range.
"""
from __future__ import annotations

import math
import numpy as np
import torch
from torch import nn

from crab.models.gan.config import ModelConfig


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
    (capped at ``exp(log_amax)``), or, once :meth:`set_law` has fitted the
    law on training data, ``A = Q((q - q_0) / (1 - q_0))`` with ``q = 1 -
    e^{-E}`` uniform, ``Q`` the data's quantile function (tabulated at
    :data:`LAW_POINTS` equal steps, ``ln A`` linear between them) and the
    events with ``q < q_0`` of amplitude 0 (no glitch), so that the channels
    place the data's glitches per second; and the pulse ``A K(ln A, p)`` around its
    sample, with ``p`` its sub-sample phase (``event_subsample``: the phase of
    :func:`event_noise`, ``Phi`` of the first Gaussian noise channel).

    The pulse *table* ``K`` (``n_bands`` x ``n_phases`` x ``kernel`` taps in
    time order: tap ``j`` adds to the sample ``j - kernel // 2`` after the
    event's) holds one pulse per height band and phase; an event's pulse
    is its bilinear interpolation: linear in ``ln A`` between the band centres
    ``band_log_amp`` (constant beyond the first and last) and linear in ``p``
    between the phases ``j / (n_phases - 1)``.  So the shape of a glitch
    depends on its height (a Monte Carlo TES saturates: large hits decay
    differently) and moves by fractions of a sample with its phase (the
    anti-alias filter's response to a hit between two samples).  The table
    starts from the pulses fitted on the training data
    (:func:`crab.models.gan.pulses.init_additive_glitches`) or, without a fit,
    as causal decays of one sample split linearly between the event's sample
    and the next; training adjusts it adversarially.  ``a_i`` and ``c_i`` are
    stored as ``log(.) / LR_MULT`` (equalised learning rate: with Adam, a
    parameter moves by about the learning rate per step, too slow for a
    log-amplitude).

    :meth:`event_pulses` is the one definition of a pulse: training
    (:meth:`forward`), the compiled generator and the truth of generated
    glitches (:mod:`crab.models.gan.glitch_truth`) all call it.
    """

    #: Learning-rate multiplier of the amplitude parameters (see class docstring).
    LR_MULT = 20.0
    #: Points of the fitted amplitude law's quantile table (:meth:`set_law`).
    LAW_POINTS = 257

    def __init__(self, n_events: int, kernel: int, threshold: float, subsample: bool, n_bands: int = 1, n_phases: int = 2) -> None:
        super().__init__()
        self.n_events, self.threshold, self.subsample = int(n_events), float(threshold), bool(subsample)
        self.kernel = int(kernel)
        self.n_bands = int(n_bands)
        self.n_phases = int(n_phases) if self.subsample else 1
        if self.n_bands < 1 or self.n_phases < (2 if self.subsample else 1):
            raise ValueError(f"pulse table needs >= 1 band and >= 2 phases with event_subsample, got {n_bands} x {n_phases}")
        self._log_tail = float(torch.special.log_ndtr(torch.tensor(-self.threshold)))  # ln P(Z > t) (float32, as the latents)
        self.table = nn.Parameter(torch.zeros(self.n_bands, self.n_phases, self.kernel))
        self.register_buffer("band_log_amp", torch.zeros(self.n_bands))
        self.register_buffer("law_log_quantiles", torch.zeros(self.LAW_POINTS))
        self.register_buffer("law_zero_fraction", torch.full((1,), -1.0))  # < 0: the Pareto law
        self.log_a0 = nn.Parameter(torch.zeros(self.n_events))
        self.log_c1 = nn.Parameter(torch.zeros(self.n_events))
        self.reset_parameters()

    @property
    def half(self) -> int:
        """Taps before (and after) the event's sample: tap ``j`` adds to sample ``pos - half + j``."""
        return self.kernel // 2

    def reset_parameters(self) -> None:
        """Causal one-sample decays split linearly by the phase; bands centred on ``A`` = 0.5 .. 50, ``a_i = 0.5``, ``c_i = 1``."""
        k0 = causal_decay(self.kernel, 1.0).flip(0)  # time order: the event sample at tap h, decay after it
        k1 = torch.zeros(self.kernel)
        k1[1:] = k0[:-1]  # one sample later
        p = torch.linspace(0.0, 1.0, self.n_phases) if self.n_phases > 1 else torch.zeros(1)
        with torch.no_grad():
            self.table.copy_(((1 - p)[:, None] * k0 + p[:, None] * k1).expand(self.n_bands, -1, -1))
            self.band_log_amp.copy_(torch.linspace(math.log(0.5), math.log(50.0), self.n_bands) if self.n_bands > 1 else torch.zeros(1))
            self.log_a0.fill_(math.log(0.5) / self.LR_MULT)
            self.log_c1.zero_()

    def set_table(self, table, band_log_amp) -> None:
        """Set the pulse table ``(n_bands, n_phases, kernel)`` (time order) and the bands' ``ln A`` centres (increasing)."""
        t = torch.as_tensor(np.asarray(table, dtype=np.float32))
        c = torch.as_tensor(np.asarray(band_log_amp, dtype=np.float32)).reshape(-1)
        if tuple(t.shape) != tuple(self.table.shape) or c.shape[0] != self.n_bands or bool((c[1:] <= c[:-1]).any()):
            raise ValueError(f"pulse table must be {tuple(self.table.shape)} with {self.n_bands} increasing band centres, got {tuple(t.shape)}, {c.tolist()}")
        with torch.no_grad():
            self.table.copy_(t)
            self.band_log_amp.copy_(c)

    def set_law(self, log_quantiles, zero_fraction: float) -> None:
        """Fit the amplitude law: ``ln A`` at the probabilities ``0 .. 1`` in :data:`LAW_POINTS` equal
        steps (increasing), and the fraction ``q_0`` of events of amplitude 0."""
        q = torch.as_tensor(np.asarray(log_quantiles, dtype=np.float32)).reshape(-1)
        if q.shape[0] != self.LAW_POINTS or not bool(torch.isfinite(q).all()) or bool((q[1:] < q[:-1]).any()) or not 0.0 <= zero_fraction < 1.0:
            raise ValueError(f"amplitude law needs {self.LAW_POINTS} finite increasing log quantiles and 0 <= zero_fraction < 1")
        with torch.no_grad():
            self.law_log_quantiles.copy_(q)
            self.law_zero_fraction.fill_(float(zero_fraction))

    def event_rate_hz(self, sampling_rate_hz: float) -> float:
        """Events per second of the event channels of one detector: ``2 P(Z > threshold) * channels * f_s``
        (with a fitted law, the share ``q_0`` of them places no glitch)."""
        return math.erfc(self.threshold / math.sqrt(2.0)) * self.n_events * float(sampling_rate_hz)

    @property
    def law_fitted(self) -> bool:
        """Whether the amplitude law is the fitted quantile table (:meth:`set_law`), not the Pareto law."""
        return bool(self.law_zero_fraction.item() >= 0)

    def scale_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, c)`` of every event channel: Pareto scale (transform-scale units) and 1 / index."""
        return torch.exp(self.LR_MULT * self.log_a0), torch.exp(self.LR_MULT * self.log_c1)

    def log_amplitudes(self, z: torch.Tensor, channel: torch.Tensor | None = None) -> torch.Tensor:
        """``log A`` (uncapped; -inf for no glitch) of event latents: ``z`` (..., n_events, n) of the
        event channels, or values ``z`` (m,) of the channels ``channel`` (m,).  Meaningful where ``|z| > threshold``."""
        e = (self._log_tail - torch.special.log_ndtr(-z.abs())).clamp(min=0)
        if self.law_fitted:
            q0 = self.law_zero_fraction[0]
            q = -torch.expm1(-e)  # 1 - exp(-E): uniform in [0, 1)
            x = ((q - q0) / (1.0 - q0)).clamp(min=0.0) * (self.LAW_POINTS - 1)
            j = torch.clamp(torch.floor(x), max=self.LAW_POINTS - 2).long()
            t = self.law_log_quantiles
            out = t[j] + (x - j) * (t[j + 1] - t[j])
            return torch.where(q < q0, torch.full_like(out, -math.inf), out)
        a, c = self.LR_MULT * self.log_a0, torch.exp(self.LR_MULT * self.log_c1)
        a, c = (a[:, None], c[:, None]) if channel is None else (a[channel], c[channel])
        return a + c * e

    def amplitudes(self, z: torch.Tensor, log_amax: float, channel: torch.Tensor | None = None) -> torch.Tensor:
        """``A`` of event latents (as :meth:`log_amplitudes`; 0 for no glitch), capped at ``exp(log_amax)``."""
        return torch.exp(torch.clamp(self.log_amplitudes(z, channel), max=log_amax))

    @staticmethod
    def _hat(x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Linear interpolation on the grid ``0 .. n - 1``: lower index and weight of the upper one, for ``x`` clamped to the grid."""
        if n == 1:
            return torch.zeros_like(x, dtype=torch.long), torch.zeros_like(x)
        x = x.clamp(0.0, n - 1.0)
        j = torch.clamp(torch.floor(x), max=n - 2).long()
        return j, x - j

    def event_pulses(self, amp: torch.Tensor, phase: torch.Tensor | None) -> torch.Tensor:
        """The pulses ``A K(ln A, p)`` (m, kernel), time order, of events of amplitudes ``amp`` (m,) and phases ``phase`` (m,) or None."""
        c = self.band_log_amp
        u = torch.log(amp.clamp(min=1e-30))
        if self.n_bands > 1:  # band coordinate: piecewise linear through (c_b, b)
            j = torch.clamp(torch.searchsorted(c, u.detach().contiguous()) - 1, 0, self.n_bands - 2)
            xb = j + (u - c[j]) / (c[j + 1] - c[j])
        else:
            xb = torch.zeros_like(u)
        jb, fb = self._hat(xb, self.n_bands)
        xp = torch.zeros_like(u) if phase is None or self.n_phases == 1 else phase * (self.n_phases - 1)
        jp, fp = self._hat(xp, self.n_phases)
        T = self.table
        jb1, jp1 = torch.clamp(jb + 1, max=self.n_bands - 1), torch.clamp(jp + 1, max=self.n_phases - 1)
        fb, fp = fb[:, None], fp[:, None]
        lo = (1 - fp) * T[jb, jp] + fp * T[jb, jp1]
        hi = (1 - fp) * T[jb1, jp] + fp * T[jb1, jp1]
        return amp[:, None] * ((1 - fb) * lo + fb * hi)

    def forward(self, z: torch.Tensor, gauss0: torch.Tensor, log_amax: float) -> torch.Tensor:
        """Pulses (batch, 1, n) of the raw event latents ``z`` (batch, n_events, n) with phases from ``gauss0`` (batch, 1, n)."""
        b, ch, pos = torch.nonzero(z.abs() > self.threshold, as_tuple=True)
        amp = self.amplitudes(z[b, ch, pos], log_amax, ch)
        phase = event_phase(gauss0[b, 0, pos]) if self.subsample else None
        rows = self.event_pulses(amp, phase)  # (m, kernel)
        n, k = z.shape[-1], self.kernel
        idx = pos[:, None] + torch.arange(k)[None, :]  # on the padded axis: sample pos - half + j
        out = torch.zeros(z.shape[0], n + k - 1, dtype=rows.dtype).index_put((b[:, None].expand(-1, k), idx), rows, accumulate=True)
        return out[:, None, self.half : self.half + n]


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

    ``forward(z)`` with ``z`` of shape ``(batch, latent_dim, n_latent_steps)``
    returns ``(batch, out_channels, n_latent_steps * upsample_factor)``.
    Output samples ``[upsample_factor * m, upsample_factor * (n - m))`` do not
    depend on the zero padding at the edges when ``m >= margin_latents``.

    ``cond`` (batch, cond_dim), when the model is conditioned, is broadcast
    along time as extra input channels.
    """


    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch, k, s = cfg.generator_channels, cfg.kernel_size, cfg.leaky_slope
        self.noise_dim = cfg.noise_dim
        self.exchangeable = bool(cfg.shared_latent_dim)
        self.event_filter = EventFilter(cfg.event_channels, cfg.event_kernel) if cfg.event_kernel and cfg.event_channels and cfg.event_inputs else None
        n_noise = self.stage_noise_channels
        n_in = cfg.latent_dim - self.noise_dim + cfg.cond_dim + cfg.shared_latent_dim
        self.coarse_len = cfg.window_samples // cfg.upsample_factor
        self.stem = nn.Sequential(nn.Conv1d(n_in, ch[0], 3, padding=1, bias=False), nn.BatchNorm1d(ch[0]), nn.LeakyReLU(s))
        self.stages = nn.ModuleList([_UpStage(ch[i], ch[i + 1], k, s, n_noise if i == cfg.n_upsample - 1 else 0, cfg.cond_dim) for i in range(cfg.n_upsample)])
        self.head = nn.Conv1d(ch[-1] + cfg.cond_dim, 1 if self.exchangeable else cfg.out_channels, k, padding=k // 2)
        self.apply(_init_weights)
        if self.event_filter is not None:
            self.event_filter.reset_parameters()
        self.additive = None
        if cfg.has_additive_glitches:
            self.additive = AdditiveGlitches(cfg.event_channels, cfg.event_kernel, cfg.event_threshold, cfg.event_subsample, cfg.pulse_bands, cfg.pulse_phases)

    @property
    def stage_noise_channels(self) -> int:
        """Full-rate noise inputs of the last stage: the noise channels (without the event channels
        when ``event_inputs`` is off), plus the event pulses of the ``EventFilter``."""
        cfg = self.cfg
        n = self.noise_dim // cfg.upsample_factor - (0 if cfg.event_inputs else cfg.event_channels)
        return n + (self.event_filter.conv.out_channels if self.event_filter is not None else 0)

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
        if z.ndim != 3:
            raise ValueError(f"streaming generator expects z of shape (batch, latent_dim, steps), got {tuple(z.shape)}")
        noise = None
        if self.noise_dim:
            b, f, steps = z.shape[0], self.cfg.upsample_factor, z.shape[-1]
            zn = z[:, z.shape[1] - self.noise_dim :]
            noise = zn.reshape(b, -1, f, steps).transpose(2, 3).reshape(b, -1, steps * f)
            if self.additive is not None:
                pulses = self.additive(noise[:, noise.shape[1] - self.cfg.event_channels :], noise[:, :1], self.log_amplitude_cap)
            if self.cfg.event_inputs:
                noise = event_noise(noise, self.cfg.event_channels, self.cfg.event_threshold, self.cfg.event_subsample)
                if self.event_filter is not None:
                    noise = self.event_filter(noise)
            else:  # the event channels only place the additive glitches
                noise = noise[:, : noise.shape[1] - self.cfg.event_channels]
            z = z[:, : z.shape[1] - self.noise_dim]
        x = z if cond is None else torch.cat([z, cond[:, :, None].expand(-1, -1, z.shape[-1])], 1)
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
        dim = self.cfg.shared_latent_dim + self.cfg.out_channels * self.cfg.latent_dim if self.exchangeable else self.cfg.latent_dim
        return (batch, dim, n_latent_steps or self.coarse_len)


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
        layers: list[nn.Module] = []
        if cfg.discriminator_peak_view and cfg.transform_out_scale is None:
            raise ValueError("discriminator_peak_view needs transform_out_scale (k of the amplitude transform; the trainer sets it)")
        c_in = cfg.out_channels * (1 + cfg.discriminator_diff + cfg.discriminator_peak_view) + cfg.cond_dim
        for c in ch:
            layers += [nn.Conv1d(c_in, c, k, stride=2, padding=k // 2), nn.GroupNorm(1, c), nn.LeakyReLU(s)]
            c_in = c
        self.features = nn.Sequential(*layers, nn.Flatten())
        n_feat = ch[-1] * cfg.window_samples // 16
        self.mbstd = _MinibatchStd() if cfg.minibatch_std else None
        self.head = nn.Linear(n_feat + (1 if cfg.minibatch_std else 0) + cfg.cond_dim, 1)
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
