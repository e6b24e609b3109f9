"""The truth of the GAN's additive glitches: which latent made a glitch, where, how large.

A generator with additive glitches (:class:`crab.models.gan.network.AdditiveGlitches`)
places each glitch explicitly: an event latent ``|z| > threshold`` of event
channel ``c`` at full-rate sample ``e`` adds ``s A K(ln A, p)`` to the TOD, with
``s`` the amplitude transform's linear scale (TOD units), ``A`` the channel's
Pareto amplitude of ``z``, ``p`` the sub-sample phase and ``K`` the pulse table
(:meth:`crab.models.gan.network.AdditiveGlitches.event_pulses`), tap ``i`` on
sample ``e - h + i``.  A truth row records the hit at ``time_s = (e + p) /
f_s``, ``sample = e``, ``family = c`` and ``amplitude`` = the pulse's value of
largest magnitude (its peak, TOD units).  Rendering a row back finds the
``A`` whose pulse has that peak (bisection in ``ln A``: the peak grows with
``A``; exact when the table has one height band).
"""

from __future__ import annotations

import copy

import numpy as np

from crab.models.gan.latent import latent_sequence
from crab.physics.events import EVENT_KIND_DIRECT, EventTable


class AdditiveGlitchTruth:
    """Truth rows and rendering of the additive glitches of a one-detector streaming generator.

    Parameters
    ----------
    generator : crab.models.gan.network.Generator
        With additive glitches (``generator.additive`` not None), one detector per run.
    scale : float
        The amplitude transform's linear scale ``s`` (TOD units).
    sampling_rate_hz : float
    tile_latents : int
        Latent steps per tile.
    """

    def __init__(self, generator, scale: float, sampling_rate_hz: float, tile_latents: int) -> None:
        cfg = generator.cfg
        self.gen = generator
        self.module = generator.additive
        self.scale = float(scale)
        self.fs = float(sampling_rate_hz)
        self.tile_latents = int(tile_latents)
        self.f = int(cfg.upsample_factor)
        self.latent_dim = int(generator.input_latent_dim)
        self.noise_dim = int(cfg.noise_dim)
        self.n_events = int(cfg.event_channels)
        self.pulse_module = copy.deepcopy(self.module).double().requires_grad_(False)  # the pulses in float64
        self.half = self.module.half

    def _pulses(self, amp: np.ndarray, phase: np.ndarray) -> np.ndarray:
        """The pulses ``A K(ln A, p)`` (events, taps) of amplitudes ``amp`` (transform-scale units), float64."""
        import torch

        with torch.no_grad():
            ph = torch.from_numpy(np.asarray(phase, dtype=np.float64)) if self.module.subsample else None
            return self.pulse_module.event_pulses(torch.from_numpy(np.asarray(amp, dtype=np.float64)), ph).numpy()

    def _amplitude_of_peak(self, peak: np.ndarray, phase: np.ndarray) -> np.ndarray:
        """The ``A`` (transform-scale units) whose pulse at ``phase`` has the peak ``peak`` (same units)."""
        target = np.abs(np.asarray(peak, dtype=np.float64))
        if self.module.n_bands == 1 or target.size == 0:
            unit = np.abs(self._peak(self._pulses(np.ones_like(target), phase)))
            return target / np.where(unit > 0, unit, 1.0)
        lo, hi = np.log(np.maximum(target, 1e-300)) - 12.0, np.log(np.maximum(target, 1e-300)) + 12.0
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            above = np.abs(self._peak(self._pulses(np.exp(mid), phase))) > target
            hi, lo = np.where(above, mid, hi), np.where(above, lo, mid)
        return np.exp(0.5 * (lo + hi))

    @staticmethod
    def _peak(pulses: np.ndarray) -> np.ndarray:
        """The value of largest magnitude of each pulse."""
        return pulses[np.arange(len(pulses)), np.argmax(np.abs(pulses), axis=1)] if len(pulses) else np.zeros(0)

    def tile_events(self, key_stream: np.ndarray, t: int, *, detector: int, wafer: int) -> EventTable:
        """The glitches whose hit sample lies in tile ``t`` of the detector with latent key ``key_stream``."""
        import torch

        from crab.models.gan.network import event_phase

        TL, f = self.tile_latents, self.f
        z = latent_sequence(key_stream, t * TL, TL, self.latent_dim)
        n_noise = self.noise_dim // f
        full = z[:, self.latent_dim - self.noise_dim :].reshape(TL, n_noise, f).transpose(0, 2, 1).reshape(TL * f, n_noise)
        ev = full[:, n_noise - self.n_events :]
        pos, ch = np.nonzero(np.abs(ev) > self.module.threshold)
        value = torch.from_numpy(np.ascontiguousarray(ev[pos, ch]))
        with torch.no_grad():
            amp = self.module.amplitudes(value, self.gen.log_amplitude_cap, torch.from_numpy(ch)).numpy().astype(np.float64)
            phase = event_phase(torch.from_numpy(np.ascontiguousarray(full[pos, 0]))).numpy().astype(np.float64) if self.module.subsample else np.zeros(len(pos))
        glitch = amp > 0  # a fitted amplitude law gives some events no glitch
        pos, ch, amp, phase = pos[glitch], ch[glitch], amp[glitch], phase[glitch]
        peak = self._peak(self._pulses(amp, phase))
        sample = t * TL * f + pos.astype(np.int64)
        n = len(pos)
        return EventTable(
            time_s=(sample + phase) / self.fs,
            detector=np.full(n, detector),
            charge_z=np.zeros(n),
            energy_kev=np.full(n, np.nan),
            kind=np.full(n, EVENT_KIND_DIRECT),
            amplitude=self.scale * peak,
            sample=sample,
            wafer=np.full(n, wafer),
            family=ch,
            tau_s=np.full(n, np.nan),
        )

    def render(self, events: EventTable, first_sample: int, n_samples: int) -> np.ndarray:
        """The pulses (float64, ``n_samples``) of the rows ``events`` on ``[first_sample, first_sample + n_samples)``."""
        out = np.zeros(int(n_samples))
        if not len(events):
            return out[: int(n_samples)]
        phase = events.time_s * self.fs - events.sample
        amp = self._amplitude_of_peak(events.amplitude / self.scale, phase)
        y = self.scale * self._pulses(amp, phase)
        idx = (events.sample - self.half - int(first_sample))[:, None] + np.arange(y.shape[1])[None, :]
        keep = (idx >= 0) & (idx < n_samples)
        return np.bincount(idx[keep], weights=y[keep], minlength=int(n_samples))[: int(n_samples)]

    @property
    def reach_samples(self) -> int:
        """Samples a pulse reaches before and after its hit sample."""
        return self.half + 1

    def rate_hz(self) -> float:
        """Expected glitches per second of one detector: ``2 P(Z > threshold) * channels * f_s``
        (times ``1 - q_0`` with a fitted amplitude law)."""
        kept = 1.0 - float(self.module.law_zero_fraction.item()) if self.module.law_fitted else 1.0
        return self.module.event_rate_hz(self.fs) * kept
