"""Streaming, seam-free, counter-seeded generation of TOD of any length.

This module turns a trained model (:class:`crab.modelstore.TrainedModel`) or
the template baseline (:class:`crab.template.TemplateModel`) into TOD, for
any duration, in bounded memory, at many millions of samples per second.

Tiles
-----
Time is cut into fixed **tiles** of ``tile_samples`` samples; tile ``t`` of
detector ``d`` covers samples ``[t * tile_samples, (t + 1) * tile_samples)``
and is computed from randomness keyed on ``(seed, d, position)`` only, with
fixed tensor shapes.  A chunk, a ``start`` slice or a process therefore
computes exactly the tiles it needs, and every sample has the same bytes
whatever the chunk size, the order of computation, the number of worker
threads or the split across processes (on one platform: float32 kernels of
other CPUs or library versions may round differently).

Streaming GAN (``generator_arch = "streaming"``)
    The generator is fully convolutional over a latent sequence, one latent
    vector per ``upsample_factor`` (16) samples, with a finite receptive
    field of ``margin_latents`` latent steps (:mod:`crab.model`).  Latent
    step ``j`` of detector ``d`` is a fixed position of one counter-based
    stream: the Philox key of ``rng.generator(seed, "gan_latent", d)`` with
    the counter at ``j`` (see :func:`latent_sequence`).  Tile ``t`` is
    computed from latent steps ``[t*TL - M, (t+1)*TL + M)`` (``TL`` latent
    steps per tile, ``M`` the margin) and cropped to its own samples, so two
    neighbouring tiles see the *same* latents around their join: the output
    is one continuous convolution of one latent sequence, with no seam by
    construction (tested against the network run over a long sequence), and
    a glitch that straddles a tile boundary simply continues.
Paper GAN (``generator_arch = "paper"``)
    Independent windows, one latent vector each.  Windows overlap by a
    quarter and are joined by an equal-power (sin/cos) cross-fade about the
    transform's baseline.  The variance of the noise is preserved across
    joins, but a glitch falling in an overlap is faded rather than
    continued: join statistics are only approximately those inside windows.
    Prefer the streaming architecture.
Template baseline
    See :mod:`crab.template` (Poisson glitches keyed on blocks of time).

The GAN output is mapped to TOD units with ``model.transform.inverse`` and,
when the model was trained on high-passed data, the slow drifts are added
back with ``NoiseGenerator(noise_params, fs, seed, "gan_noise",
lowpass_hz=highpass_hz)`` keyed on the detector (``docs/design.md``).

Speed
-----
The streaming network is not run as written: at load time each batch
normalisation is folded into the preceding convolution, every "nearest
upsample x2 + convolution" is rewritten in polyphase form (two convolutions
at the low rate), and the network is evaluated channels-last as a few
matrix products per layer on "valid" (unpadded) sequences, where the
interleaving of the two phases is a free reshape.  The rewrite is checked
against the module at load time (and falls back to running the module if
the architecture is not one it understands).  Tiles are computed by a pool
of threads, each running torch with one intra-op thread, so results do not
depend on the number of workers.  Latent normals come from the Philox
stream by Box-Muller in float32 (about 2.5x faster than numpy's ziggurat on
Philox).

Public API
----------
:class:`TodGenerator` (array level: ``generate``, ``iter_chunks``),
:func:`generate_to_file`, :func:`stream_checksum`, :func:`stream_raw`,
:func:`tod_checksum`, :func:`file_checksum`, :func:`load_generation_model`,
:func:`latent_sequence`.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Sequence

import numpy as np

from . import interrupt, rng
from .tod_io import TodChecksum, file_checksum, tod_checksum  # noqa: F401  (re-exported)
from .errors import InputError, ModelCompatibilityError
from .noise import NoiseGenerator

#: Latent steps per tile of the streaming GAN (16384 samples with the default
#: 16x upsampling).  Part of what defines the bytes: recorded in the run record.
DEFAULT_TILE_LATENTS = 1024
#: Samples per generated chunk (a multiple of every tile size used here).
DEFAULT_CHUNK_SAMPLES = 1 << 20
#: HDF5 chunk length along time for generated files.
HDF5_CHUNK_SAMPLES = 1 << 18
#: Latent step j is stored at stream position j + LATENT_ORIGIN, so that the
#: margins of the first tile (negative j) are drawn like any other step.
LATENT_ORIGIN = 1 << 40

_TWO_PI_2M24 = np.float32(2.0 * np.pi * 2.0**-24)
_2M24 = np.float32(2.0**-24)


# --------------------------------------------------------------------------- randomness
def stream_key(seed: int, stream: str, *key: int) -> np.ndarray:
    """The 128-bit Philox key (two uint64) of the stream ``rng.generator(seed, stream, *key)``.

    With an explicit counter (``numpy.random.Philox(key=..., counter=...)``)
    it gives direct access to any position of that counter-based stream.
    """
    return np.array(rng.generator(seed, stream, *key).bit_generator.state["state"]["key"], dtype=np.uint64)


def _raw_words(key: np.ndarray, first_word: int, n_words: int) -> np.ndarray:
    """uint64 words ``[first_word, first_word + n_words)`` of the Philox stream with ``key``."""
    counter, skip = divmod(int(first_word), 4)  # Philox4x64: four words per counter value
    return np.random.Philox(key=key, counter=counter).random_raw(skip + int(n_words))[skip:]


def box_muller(words: np.ndarray) -> np.ndarray:
    """Standard normal float32 values, two per uint64 word (Box-Muller, 24-bit uniforms).

    Word ``w`` gives ``u1 = 1 - (lo >> 8) 2^-24`` and ``u2 = (hi >> 8) 2^-24``
    (``lo``, ``hi`` its 32-bit halves) and the pair ``r cos(2 pi u2), r sin(2 pi u2)``
    with ``r = sqrt(-2 ln u1)``; returns ``2 * len(words)`` values in that order.
    """
    w = np.ascontiguousarray(words, dtype=np.uint64)
    if sys.byteorder == "little":
        halves = w.view(np.uint32)
    else:  # pragma: no cover - keep the same numbers on big-endian machines
        halves = np.stack([(w & np.uint64(0xFFFFFFFF)).astype(np.uint32), (w >> np.uint64(32)).astype(np.uint32)], 1).reshape(-1)
    halves = halves >> np.uint32(8)
    f = halves.astype(np.float32).reshape(-1, 2)
    u1, theta = f[:, 0], f[:, 1]
    u1 *= -_2M24
    u1 += np.float32(1.0)
    theta *= _TWO_PI_2M24
    r = np.log(u1)
    r *= np.float32(-2.0)
    np.sqrt(r, out=r)
    c = np.cos(theta)
    c *= r
    s = np.sin(theta)
    s *= r
    f[:, 0] = c
    f[:, 1] = s
    return f.reshape(-1)


def latent_sequence(key: np.ndarray, first_step: int, n_steps: int, latent_dim: int) -> np.ndarray:
    """Latent vectors of steps ``[first_step, first_step + n_steps)``, shape (n_steps, latent_dim) float32.

    Step ``j`` (any integer, negative allowed) uses the ``ceil(latent_dim / 2)``
    words at position ``(j + LATENT_ORIGIN) * ceil(latent_dim / 2)`` of the
    Philox stream with ``key`` (:func:`stream_key`), turned into normals by
    :func:`box_muller`.  The same step always gets the same vector, whatever
    range it is drawn in.
    """
    wps = (int(latent_dim) + 1) // 2
    words = _raw_words(key, (int(first_step) + LATENT_ORIGIN) * wps, int(n_steps) * wps)
    z = box_muller(words).reshape(int(n_steps), 2 * wps)
    return z if 2 * wps == latent_dim else np.ascontiguousarray(z[:, :latent_dim])


# --------------------------------------------------------------------------- sources
class TileSource:
    """What :class:`TodGenerator` needs from a method: fixed tiles of TOD.

    Attributes
    ----------
    kind : str
        ``"gan"`` or ``"template"`` (the file's ``kind``).
    sampling_rate_hz : float
    units : str
    tile_samples : int
        Samples per tile.
    rows : int
        Detectors produced per key (the model's output channels).
    """

    kind = "unknown"
    sampling_rate_hz: float
    units: str = "pW"
    tile_samples: int
    rows: int = 1

    def prepare(self, n_keys: int) -> None:
        """Called before a run over ``n_keys`` detector keys (size caches)."""

    def tile(self, key: int, t: int) -> np.ndarray:
        """Tile ``t`` (>= 0) of detector key ``key``: float32 (rows, tile_samples).  Thread-safe."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What defines the bytes (for the run record)."""
        return {}

    def check_span(self, start_sample: int, stop_sample: int) -> None:
        """Raise :class:`InputError` if ``[start_sample, stop_sample)`` cannot be generated."""


class _Unsupported(Exception):
    pass


class _FastStreamingNet:
    """The streaming generator rewritten for inference (see the module docstring).

    ``run(z, cond)`` maps latents (n_steps, latent_dim) (channels-last) to the
    generator output (n_out, out_channels) over the *valid* range: output row
    ``i`` is output sample ``offset + i`` of the module run on ``z`` (with
    ``offset = self.offset`` samples).  Constant conditioning inputs
    (normalised, :func:`crab.model.normalize_cond`) only shift the biases of
    the layers that receive them, so they are applied per call.
    """

    def __init__(self, gen) -> None:
        import torch
        from torch import nn

        cfg = gen.cfg
        if not getattr(gen, "streaming", False):
            raise _Unsupported("not a streaming generator")
        if gen.training:
            raise _Unsupported("generator not in eval mode")
        mods = list(gen.stem) + [m for st in gen.stages for m in st] + [gen.head]
        n_cond = int(cfg.cond_dim)
        self.n_cond = n_cond
        f = int(cfg.upsample_factor)
        self.f = f
        self.noise_dim = int(getattr(gen, "noise_dim", 0) or 0)
        if self.noise_dim % f:
            raise _Unsupported(f"noise_dim {self.noise_dim} not a multiple of {f}")
        n_noise = self.noise_dim // f  # full-resolution noise channels fed to the last up stage
        self.events = (int(cfg.event_channels), float(cfg.event_threshold), bool(cfg.event_subsample))  # crab.model.event_noise arguments
        ef = getattr(gen, "event_filter", None)  # crab.model.EventFilter: learned pulses of the events, more last-stage inputs
        self.event_filter = None
        if ef is not None:  # as (events, taps, pulses) weights, tap i adding to the sample h - i before the event, and h
            taps = ef.conv.kernel_size[0]
            self.event_filter = (ef.conv.weight.detach().to(torch.float32).permute(1, 2, 0).flip(1).contiguous(), taps // 2)
            n_noise += ef.conv.out_channels
        ag = getattr(gen, "additive", None)  # crab.model.AdditiveGlitches: pulses added in TOD units to the output
        self.additive = None
        if ag is not None:  # the module (for its amplitudes), the pulse bases as (events, bases, taps) in time order, the output's k and the cap
            kernels = ag.pulse_weight().detach().to(torch.float32).reshape(ag.n_events, ag.n_basis, -1).flip(2).contiguous()
            self.additive = (ag, kernels, gen.out_scale, gen.log_amplitude_cap)
        self.latent_dim = int(getattr(gen, "input_latent_dim", cfg.latent_dim))  # one run's latents (shared + own when exchangeable)
        layers: list[dict[str, Any]] = []
        pending_up = False
        c_prev = self.latent_dim - self.noise_dim  # input channels of the next convolution, conditions not counted
        for m in mods:
            if isinstance(m, nn.Upsample):
                sf = m.scale_factor
                sf = sf[0] if isinstance(sf, (tuple, list)) else sf
                if m.mode != "nearest" or float(sf) != 2.0 or pending_up:
                    raise _Unsupported(f"upsample {m}")
                pending_up = True
            elif isinstance(m, nn.Conv1d):
                k = m.kernel_size[0]
                if m.stride[0] != 1 or m.dilation[0] != 1 or m.groups != 1 or m.padding_mode != "zeros" or k % 2 == 0:
                    raise _Unsupported(f"conv {m}")
                if m.padding not in ((k // 2,), "same"):
                    raise _Unsupported(f"conv padding {m.padding}")
                w = m.weight.detach().to(torch.float64).numpy().copy()  # (out, in, k)
                b = np.zeros(w.shape[0]) if m.bias is None else m.bias.detach().to(torch.float64).numpy().copy()
                bc = None
                if n_cond:
                    # constant conditioning channels (the last inputs of every convolution): on valid outputs a bias bc @ cond
                    if w.shape[1] - c_prev < n_cond:
                        raise _Unsupported("conditioning channels missing")
                    bc = w[:, -n_cond:, :].sum(axis=2)  # (out, n_cond)
                    w = w[:, :-n_cond, :]
                n_extra = w.shape[1] - c_prev
                w_noise = None
                if n_extra:
                    # noise channels concatenated after the upsampling of the last stage
                    if not (pending_up and n_extra == n_noise and m is gen.stages[-1][1]):
                        raise _Unsupported(f"{n_extra} unexpected input channels")
                    w_noise, w = w[:, c_prev:, :], w[:, :c_prev, :]
                elif n_noise and pending_up and m is gen.stages[-1][1]:
                    raise _Unsupported("noise channels missing from the last stage")
                layers.append({"w": w, "b": b, "bc": bc, "up": pending_up, "act": None, "w_noise": w_noise})
                pending_up = False
                c_prev = w.shape[0]
            elif isinstance(m, nn.BatchNorm1d):
                if not layers or layers[-1]["act"] is not None or m.running_mean is None:
                    raise _Unsupported("batch norm not right after a convolution")
                s = m.weight.detach().double().numpy() / np.sqrt(m.running_var.double().numpy() + m.eps)
                L = layers[-1]
                L["w"] = L["w"] * s[:, None, None]
                if L["w_noise"] is not None:
                    L["w_noise"] = L["w_noise"] * s[:, None, None]
                L["b"] = (L["b"] - m.running_mean.double().numpy()) * s + m.bias.detach().double().numpy()
                if L["bc"] is not None:
                    L["bc"] = L["bc"] * s[:, None]
            elif isinstance(m, nn.LeakyReLU):
                if not layers or layers[-1]["act"] is not None:
                    raise _Unsupported("activation not after a convolution")
                layers[-1]["act"] = float(m.negative_slope)
            elif isinstance(m, nn.ReLU):
                if not layers or layers[-1]["act"] is not None:
                    raise _Unsupported("activation not after a convolution")
                layers[-1]["act"] = 0.0
            elif isinstance(m, (nn.Identity, nn.Dropout)):
                continue
            else:
                raise _Unsupported(f"module {type(m).__name__}")
        if pending_up or not layers:
            raise _Unsupported("dangling upsample")
        # polyphase rewrite and bookkeeping of the valid range (in samples of the current rate)
        rate = 1  # samples per latent step at the current layer's input
        left = 0  # first valid position, in units of the current rate
        right = 0  # positions lost at the right end, same units
        self.layers = []
        for i, L in enumerate(layers):
            w = L["w"]
            c_out, c_in, k = w.shape
            h = k // 2
            noise_left = None
            if L["up"]:
                o_lo, o_hi = (-h) // 2, (1 + h) // 2
                kk = o_hi - o_lo + 1
                wn = L["w_noise"]
                nn_ = 0 if wn is None else wn.shape[1]
                # input columns: c_in upsampled channels, then (noise) the 2 full-rate phases of each noise channel
                W = np.zeros((kk, c_in + 2 * nn_, 2 * c_out))
                for p in range(2):
                    for j in range(k):
                        o, q = divmod(p + j - h, 2)
                        W[o - o_lo, :c_in, p * c_out : (p + 1) * c_out] += w[:, :, j].T
                        if nn_:
                            W[o - o_lo, c_in + q * nn_ : c_in + (q + 1) * nn_, p * c_out : (p + 1) * c_out] += wn[:, :, j].T
                if nn_:
                    if rate * 2 != cfg.upsample_factor:
                        raise _Unsupported("noise channels not at full resolution")
                    noise_left = left  # first input position, in units of this layer's input rate
                bias = np.concatenate([L["b"], L["b"]])
                bc = None if L["bc"] is None else np.concatenate([L["bc"], L["bc"]])
                left, right = 2 * (left - o_lo), 2 * (right + o_hi)
                rate *= 2
            else:
                W = np.stack([w[:, :, j].T for j in range(k)])
                bias, bc = L["b"], L["bc"]
                left, right = left + h, right + h
            if i == len(layers) - 1 and not L["up"] and k * c_out <= 16:
                # output layer with few channels: one product against all taps at once
                # ((n, c_in) x (c_in, 8 or 16)), then k shifted adds (numpy); a matrix
                # product with so few columns is slow as k separate products
                n_cols = 8 if k * c_out <= 8 else 16
                Wcat = np.zeros((c_in, n_cols))
                Wcat[:, : k * c_out] = np.concatenate([W[j] for j in range(k)], axis=1)
                self.layers.append(("diag", torch.from_numpy(Wcat.astype(np.float32)), (bias, bias.astype(np.float32), bc), L["act"], k))
                continue
            self.layers.append(
                (
                    "taps",
                    [torch.from_numpy(np.ascontiguousarray(W[i], dtype=np.float32)) for i in range(W.shape[0])],
                    (bias, torch.from_numpy(bias.astype(np.float32)), bc),
                    L["act"],
                    L["up"],
                    noise_left,
                )
            )
        if rate != cfg.upsample_factor:
            raise _Unsupported(f"total upsampling {rate} != {cfg.upsample_factor}")
        self.offset = left
        self.right_loss = right
        self.out_channels = int(gen.head.out_channels)
        # the generator's output bound (crab.model.soft_bound), applied to the result
        bounds = getattr(cfg, "output_bounds", None)
        self.bound = None if bounds is None else (float(bounds[0]), float(bounds[1]), float(cfg.output_bound_width))

    @staticmethod
    def _bias(spec: tuple, cond: np.ndarray | None):
        """The layer's float32 bias (numpy or torch, as stored): fixed, or shifted by the conditions (bias + bc @ cond)."""
        bias64, bias32, bc = spec
        if bc is None:
            return bias32
        if cond is None:
            raise ValueError("this generator is conditioned: give cond")
        b = (bias64 + bc @ cond).astype(np.float32)
        if isinstance(bias32, np.ndarray):
            return b
        import torch

        return torch.from_numpy(b)

    def run(self, z, cond: np.ndarray | None = None, linear: bool = False) -> np.ndarray:
        """Valid outputs for latents ``z`` (torch (n_steps, latent_dim)): float32 numpy (out_channels, n_out).

        ``cond``: normalised condition values (cond_dim,) of this stretch, for a conditioned generator.
        ``linear`` (additive glitches only): return ``sinh(k y)`` instead of ``y``, i.e. ``(x - x0) / s``
        in TOD units, without the ``asinh`` that the inverse transform would undo."""
        import torch
        import torch.nn.functional as F

        c = None if cond is None else np.asarray(cond, dtype=np.float64).reshape(self.n_cond)

        nd = self.noise_dim
        noise = None
        pulses = None
        if nd:
            # latent step j, noise channel c*f + i -> full-rate sample f j + i of noise channel c;
            # as pairs of samples (half-rate polyphase, channels-last): (steps * 8, 2 * n_noise)
            steps, f = z.shape[0], self.f
            n_noise = nd // f
            zn = z[:, self.latent_dim - nd :]
            full = zn.reshape(steps, n_noise, f).transpose(1, 2).reshape(steps * f, n_noise)
            if self.events[0]:
                ev = self._events(full)
                if self.additive is not None:
                    pulses = self._additive_pulses(ev, full.shape[0])
                full = self._event_inputs(full, ev)
            noise = full.reshape(steps * f // 2, -1)
            h = z[:, : self.latent_dim - nd]
        else:
            h = z
        for mode, *spec in self.layers:
            if mode == "taps":
                taps, bspec, act, up, noise_left = spec
                bias = self._bias(bspec, c)
                if noise_left is not None:
                    h = torch.cat([h, noise[noise_left : noise_left + h.shape[0]]], 1)
                n = h.shape[0] - len(taps) + 1
                out = torch.addmm(bias, h[:n], taps[0])
                for j in range(1, len(taps)):
                    out.addmm_(h[j : j + n], taps[j])
                if act is not None:
                    F.leaky_relu_(out, act) if act > 0 else F.relu_(out)
                h = out.view(2 * n, out.shape[1] // 2) if up else out
            else:
                Wcat, bspec, act, k = spec
                bias = self._bias(bspec, c)
                P = torch.mm(h, Wcat).numpy()
                n = P.shape[0] - k + 1
                C = bias.shape[0]
                res = np.empty((C, n), np.float32)
                for c in range(C):
                    acc = res[c]
                    np.add(P[0:n, c], bias[c], out=acc)
                    for j in range(1, k):
                        acc += P[j : j + n, j * C + c]
                if act is not None:
                    res = np.where(res > 0, res, res * np.float32(act)).astype(np.float32)
                return self._finish(res, pulses, linear)
        return self._finish(np.ascontiguousarray(h.numpy().T), pulses, linear)

    def _finish(self, y: np.ndarray, pulses, linear: bool = False) -> np.ndarray:
        """The output bound, then the additive glitches (``pulses`` over all samples of the run, or None;
        ``linear``: stay in units of the transform's scale, see :meth:`run`)."""
        y = self._bound(y)
        if pulses is None:
            if linear:
                raise ValueError("linear output is for generators with additive glitches")
            return y
        k = np.float32(self.additive[2])
        y *= k
        np.sinh(y, out=y)
        y += pulses[self.offset : self.offset + y.shape[1]].numpy()[None, :]
        if not linear:
            np.arcsinh(y, out=y)
            y /= k
        return y

    def _events(self, full):
        """The events of the raw noise inputs ``full`` (n_samples, n_noise) (torch, channels-last): their
        samples, event channels, latent values and sub-sample phases (None without ``event_subsample``),
        as :func:`crab.model.event_noise` defines them.  Events are about 1 % of the samples, so the fast
        path handles them one by one (sparse) instead of as dense channels: a few torch operations, which
        release the interpreter lock for the other generation threads."""
        import torch

        from .model import event_phase

        n_ev, threshold, subsample = self.events
        k = full.shape[1] - n_ev
        pos, ch = torch.nonzero(full[:, k:].abs() > threshold, as_tuple=True)
        value = full[pos, k + ch]
        phase = event_phase(full[pos, 0]) if subsample else None
        return pos, ch, value, phase

    @staticmethod
    def _scatter(out, pos, taps, first: int) -> None:
        """Add per-event taps (events, n_taps, c) to ``out`` (n, c): event ``e``'s tap ``j`` lands on sample
        ``pos[e] + first + j`` (dropped outside ``[0, n)``)."""
        import torch

        n, n_taps = out.shape[0], taps.shape[1]
        idx = (pos[:, None] + (first + torch.arange(n_taps))[None, :]).reshape(-1)
        taps = taps.reshape(-1, taps.shape[2])
        keep = (idx >= 0) & (idx < n)
        if not bool(keep.all()):
            idx, taps = idx[keep], taps[keep]
        out.index_put_((idx,), taps, accumulate=True)

    def _event_inputs(self, full, events):
        """:func:`crab.model.event_noise` and the event pulses (:class:`crab.model.EventFilter`) of the noise
        inputs, from their ``events`` (:meth:`_events`): (n_samples, n_noise [+ 2 n_events]), channels-last,
        filled with one scatter-add of every event's values and pulse taps."""
        import torch

        n_ev = self.events[0]
        n, k = full.shape[0], full.shape[1] - n_ev
        pos, ch, value, phase = events
        # each event's value on its sample, split with the next one by its phase
        split = value[:, None] if phase is None else torch.stack([value - value * phase, value * phase], 1)  # (events, 1 or 2)
        h = 0
        n_pulses = 0
        if self.event_filter is not None:
            w, h = self.event_filter  # (n_events, taps, pulses), time order: tap i adds to sample pos - h + i
            n_pulses = w.shape[2]
        taps = torch.zeros(len(pos), 2 * h + split.shape[1], n_ev + n_pulses)
        taps[torch.arange(len(pos))[:, None], h + torch.arange(split.shape[1])[None, :], ch[:, None]] = split
        if n_pulses:
            wc = w[ch]
            for j in range(split.shape[1]):  # the pulse of each part of the event, from its sample on
                taps[:, j : j + 2 * h + 1, n_ev:] += split[:, j, None, None] * wc
        out = torch.zeros(n, full.shape[1] + n_pulses)
        out[:, :k] = full[:, :k]
        self._scatter(out[:, k:], pos, taps, -h)
        return out

    def _additive_pulses(self, events, n: int):
        """The summed pulses of :class:`crab.model.AdditiveGlitches` (torch (n,)) of the ``events`` (:meth:`_events`)."""
        import torch

        module, kernels, _, cap = self.additive
        pos, ch, value, phase = events
        h = kernels.shape[2] // 2
        amp = module.amplitudes(value, cap, ch)
        pulse = kernels[ch, 0]  # (events, taps), tap i adds to sample pos - h + i
        if phase is not None:
            p = phase[:, None]
            pulse = pulse + p * kernels[ch, 1] + (p * p) * kernels[ch, 2]
        out = torch.zeros(n, 1)
        self._scatter(out, pos, (amp[:, None] * pulse)[:, :, None], -h)
        return out[:, 0]

    def _bound(self, y: np.ndarray) -> np.ndarray:
        if self.bound is None:
            return y
        from .model import soft_bound

        return np.ascontiguousarray(soft_bound(y, *self.bound), dtype=np.float32)


def _schedule_for(model, cond, allow_extrapolation: bool):
    """The :class:`~crab.conditions.ConditionSchedule` of a run (None for an unconditioned model)."""
    from .conditions import ConditionSchedule, check_in_range

    names = list(model.cond_names or [])
    n_cond = int(model.model_config.cond_dim)
    if not n_cond:
        if cond is not None and not (isinstance(cond, (list, tuple, np.ndarray)) and len(cond) == 0):
            raise InputError("the model is not conditioned; do not give conditions (--phi, --phi-schedule, --cond)")
        return None
    if cond is None:
        raise InputError(f"the model is conditioned on {names}: give their values (e.g. --phi VALUE or --phi-schedule FILE)")
    if not isinstance(cond, ConditionSchedule):
        if isinstance(cond, dict):
            cond = ConditionSchedule.constant(cond)
        else:
            vals = np.asarray(cond, dtype=np.float64).reshape(-1)
            if vals.size != n_cond:
                raise InputError(f"the model needs {n_cond} condition value(s) {names}, got {vals.size}")
            cond = ConditionSchedule.constant(dict(zip(names, vals)))
    cond = cond.ordered(names)
    check_in_range(cond, model.cond_range, allow_extrapolation=allow_extrapolation)
    return cond


class GanSource(TileSource):
    """Tiles of a trained GAN (streaming or paper architecture), in TOD units.

    Parameters
    ----------
    model : TrainedModel
    seed : int
    cond : ConditionSchedule, dict or sequence of float, optional
        Conditions of a conditioned model: a schedule in time
        (:class:`crab.conditions.ConditionSchedule`), a ``{name: value}``
        dict or values in the order of ``model.cond_names`` (constants).
        Each tile is generated at the schedule's value at its middle sample.
    allow_extrapolation : bool
        Accept conditions outside the trained range (otherwise an error).
    tile_latents : int
        Latent steps per tile (streaming architecture).
    backend : str
        ``"auto"`` (the fast rewrite, checked against the module; the module
        if the check fails), ``"fast"`` (error if not applicable) or ``"module"``.
    """

    kind = "gan"

    def __init__(
        self, model, seed: int, *, cond=None, allow_extrapolation: bool = False, tile_latents: int = DEFAULT_TILE_LATENTS, backend: str = "auto"
    ) -> None:
        self.model = model
        self.seed = rng.check_seed(seed)
        self.gen = model.generator.eval()
        cfg = model.model_config
        self.z_dim = int(self.gen.latent_shape(1, 1)[1])  # latent channels per step of one key (a detector or a wafer)
        self.cfg = cfg
        self.sampling_rate_hz = float(model.sampling_rate_hz)
        self.units = model.units
        self.rows = int(cfg.out_channels)
        self.schedule = _schedule_for(model, cond, allow_extrapolation)
        tf = model.transform
        self._tf = (float(tf.offset), float(tf.scale), float(tf.out_scale))
        self.streaming = bool(getattr(self.gen, "streaming", cfg.generator_arch == "streaming"))
        self._keys: dict[int, np.ndarray] = {}
        self._keys_lock = threading.Lock()
        self.noise: NoiseGenerator | None = None
        self._noise_args = None
        if model.noise_params is not None and model.highpass_hz:
            self._noise_args = (model.noise_params, self.sampling_rate_hz, self.seed, "gan_noise", float(model.highpass_hz))
        self.backend = "module"
        if self.streaming:
            self.f = int(cfg.upsample_factor)
            self.margin = int(self.gen.margin_latents)
            self.tile_latents = int(tile_latents)
            if self.tile_latents < 1:
                raise InputError(f"tile_latents must be >= 1, got {tile_latents}")
            self.tile_samples = self.tile_latents * self.f
            self._fast = None
            if backend not in ("auto", "fast", "module"):
                raise InputError(f"backend must be 'auto', 'fast' or 'module', got {backend!r}")
            if backend != "module":
                try:
                    fast = _FastStreamingNet(self.gen)
                    if fast.offset > self.f * self.margin or fast.right_loss > self.f * self.margin:
                        raise _Unsupported("receptive field wider than margin_latents")
                    self._check_fast(fast)
                    self._fast = fast
                    self.backend = "fast"
                except _Unsupported as exc:
                    if backend == "fast":
                        raise InputError(f"fast inference is not available for this generator: {exc}") from None
        else:
            self.window = int(model.window_samples)
            self.overlap = max(2, (self.window // 4) // 2 * 2)
            self.hop = self.window - self.overlap
            self.tile_samples = self.hop * max(1, int(round(16 * 1024 / self.hop)))
            self.n_windows = self.tile_samples // self.hop + 2
            s = (np.arange(self.overlap) + 0.5) / self.overlap
            self._fade_out = np.cos(0.5 * np.pi * s).astype(np.float32)
            self._fade_in = np.sin(0.5 * np.pi * s).astype(np.float32)

    # ---------------------------------------------------------------- helpers
    def _key(self, key: int) -> np.ndarray:
        k = self._keys.get(key)
        if k is None:
            k = stream_key(self.seed, "gan_latent", key)
            with self._keys_lock:
                self._keys[key] = k
        return k

    def _run_fast(self, fast: _FastStreamingNet, z, c: np.ndarray | None, linear: bool = False) -> np.ndarray:
        """The fast network on tile latents ``z`` (steps, z_dim): (rows, n_out); an exchangeable
        wafer runs the one-detector network once per detector on (shared, own) latents."""
        if not getattr(self.gen, "exchangeable", False):
            return fast.run(z, c, linear)
        return np.concatenate([fast.run(self.gen.assemble_latents(z.T, r).T.contiguous(), c, linear) for r in range(self.rows)], axis=0)

    def _check_fast(self, fast: _FastStreamingNet) -> None:
        """Compare the rewrite with the module on one random sequence (raises _Unsupported)."""
        import torch

        n = 48 + 2 * self.margin
        z = latent_sequence(stream_key(0, "gan_latent", 0), 0, n, self.z_dim)
        c = None if self.schedule is None else np.linspace(-1.0, 1.0, len(self.schedule.names))  # any values do
        with torch.inference_mode():
            ref = self.gen(torch.from_numpy(z.T.copy())[None], self._cond_tensor(c))[0]  # (channels, samples)
            out = self._run_fast(fast, torch.from_numpy(z), c)
        lo, hi = self.f * self.margin, self.f * (n - self.margin)
        a = ref[:, lo:hi].numpy()
        b = out[:, lo - fast.offset : hi - fast.offset]
        if a.shape != b.shape or not np.all(np.isfinite(b)):
            raise _Unsupported("shape mismatch in self-check")
        scale = float(np.max(np.abs(a))) + 1e-30
        if float(np.max(np.abs(a - b))) > 1e-4 * scale:
            raise _Unsupported(f"self-check mismatch ({float(np.max(np.abs(a - b))) / scale:.2e} relative)")

    def prepare(self, n_keys: int) -> None:
        if self._noise_args is not None:
            p, fs, seed, stream, lp = self._noise_args
            self.noise = NoiseGenerator(p, fs, seed, stream, lowpass_hz=lp, cache_blocks=max(8, 4 * n_keys * self.rows))

    def _inverse(self, y: np.ndarray, linear: bool = False) -> np.ndarray:
        """Transformed -> TOD units, in place (float32; as AmplitudeTransform.inverse).  ``linear``:
        ``y`` is already ``sinh(k y)`` (:meth:`_FastStreamingNet.run`), only scaled and shifted."""
        off, sc, osc = self._tf
        if not linear:
            y *= np.float32(osc)
            np.sinh(y, out=y)
        y *= np.float32(sc)
        y += np.float32(off)
        return y

    def _add_noise(self, out: np.ndarray, key: int, t: int) -> None:
        if self._noise_args is None:
            return
        if self.noise is None:
            self.prepare(1)
        for r in range(self.rows):
            out[r] += self.noise.generate(key * self.rows + r, t * self.tile_samples, self.tile_samples)

    def tile_cond(self, t: int) -> np.ndarray | None:
        """Normalised conditions of tile ``t`` (the schedule at its middle sample), or None."""
        if self.schedule is None:
            return None
        from .model import normalize_cond

        mid_s = (t * self.tile_samples + 0.5 * (self.tile_samples - 1)) / self.sampling_rate_hz
        return normalize_cond(self.schedule.values_at(mid_s, clamp=True), self.model.cond_range)

    @staticmethod
    def _cond_tensor(c: np.ndarray | None, batch: int = 1):
        if c is None:
            return None
        import torch

        return torch.from_numpy(np.asarray(c, dtype=np.float32).reshape(1, -1)).expand(batch, -1)

    def check_span(self, start_sample: int, stop_sample: int) -> None:
        """Raise if the schedule does not cover the times of samples ``[start_sample, stop_sample)``."""
        if self.schedule is None or stop_sample <= start_sample:
            return
        self.schedule.check_span(start_sample / self.sampling_rate_hz, (stop_sample - 1) / self.sampling_rate_hz)

    # ---------------------------------------------------------------- tiles
    def tile(self, key: int, t: int) -> np.ndarray:
        import torch

        c = self.tile_cond(t)
        if self.streaming:
            n = self.tile_latents + 2 * self.margin
            z = torch.from_numpy(latent_sequence(self._key(key), t * self.tile_latents - self.margin, n, self.z_dim))
            lo = self.f * self.margin
            with torch.inference_mode():
                linear = self._fast is not None and self._fast.additive is not None
                if self._fast is not None:
                    a = lo - self._fast.offset
                    y = self._run_fast(self._fast, z, c, linear)[:, a : a + self.tile_samples]
                else:
                    y = self.gen(z.T.contiguous()[None], self._cond_tensor(c))[0, :, lo : lo + self.tile_samples].numpy()
            # additive glitches: sinh(k y) + pulses already (linear), x = x0 + s * that (no asinh and sinh again)
            out = self._inverse(np.ascontiguousarray(y, dtype=np.float32), linear)
        else:
            out = self._paper_tile(key, t, c)
        self._add_noise(out, key, t)
        return out

    def _paper_tile(self, key: int, t: int, c: np.ndarray | None) -> np.ndarray:
        """Overlapping independent windows joined by an equal-power cross-fade (approximate joins)."""
        import torch

        H, O, W = self.hop, self.overlap, self.window
        w0 = (t * self.tile_samples) // H - 1  # window w covers samples [w*H, w*H + W)
        zs = latent_sequence(self._key(key), w0, self.n_windows, self.z_dim)
        with torch.inference_mode():
            y = self.gen(torch.from_numpy(zs), self._cond_tensor(c, self.n_windows)).numpy()  # (n_windows, rows, W)
        y = self._inverse(np.array(y, dtype=np.float32)) - np.float32(self._tf[0])
        out = np.empty((self.rows, self.tile_samples), np.float32)
        s0 = t * self.tile_samples
        for i in range(self.n_windows):
            w = w0 + i
            a, b = max(w * H, s0), min(w * H + H, s0 + self.tile_samples)  # body: [wH + O, wH + H) plus fade [wH, wH + O)
            if a >= b:
                continue
            seg = y[i, :, a - w * H : b - w * H].copy()
            # fade-in region of window w: first O samples, mixed with the tail of window w - 1
            f_hi = min(b, w * H + O)
            if a < f_hi:
                j0, j1 = a - w * H, f_hi - w * H
                prev = y[i - 1, :, j0 + H : j1 + H] if i > 0 else 0.0
                seg[:, : j1 - j0] = self._fade_in[j0:j1] * y[i, :, j0:j1] + self._fade_out[j0:j1] * prev
            out[:, a - s0 : b - s0] = seg
        out += np.float32(self._tf[0])
        return out

    def describe(self) -> dict[str, Any]:
        d = {
            "method": "gan",
            "generator_arch": "streaming" if self.streaming else "paper",
            "tile_samples": self.tile_samples,
            "backend": self.backend,
            "latents": "Philox(key of rng.generator(seed, 'gan_latent', detector), counter = latent step) + Box-Muller float32",
            "lf_noise": None if self._noise_args is None else {"stream": "gan_noise", "lowpass_hz": self._noise_args[4]},
            "cond": None if self.schedule is None else self.schedule.to_dict(),
        }
        if self.streaming:
            d.update(tile_latents=self.tile_latents, margin_latents=self.margin)
        else:
            d.update(window_samples=self.window, overlap_samples=self.overlap, crossfade="equal-power sin/cos (approximate joins)")
        return d


# --------------------------------------------------------------------------- the generator
def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def _torch_threads(n: int):
    """Run torch with ``n`` intra-op threads inside the block (restored after); no-op without torch."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _thread_init() -> None:
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


class TodGenerator:
    """Generate TOD tile by tile with a trained GAN or the template baseline.

    Parameters
    ----------
    model : TrainedModel, TemplateModel or TileSource
        What to generate with (see :func:`load_generation_model`).
    seed : int
        User seed; with the detector key and the position it determines every sample.
    cond : ConditionSchedule, dict or sequence of float, optional
        Conditions of a conditioned GAN (see :class:`GanSource`).
    allow_extrapolation : bool
        Accept conditions outside the trained range.
    n_workers : int, optional
        Worker threads computing tiles (default: the CPUs available).  Does
        not change the output.
    tile_latents : int
        Latent steps per tile for a streaming GAN (changes the bytes; recorded).
    backend : str
        GAN inference backend (see :class:`GanSource`).

    Notes
    -----
    Detectors are given as a count ``n`` (keys ``0 .. n-1``) or as explicit
    non-negative integer keys (e.g. :func:`crab.rng.detector_key` of names);
    every random stream is keyed on them, so a detector's TOD does not depend
    on which other detectors are generated with it.
    """

    def __init__(
        self,
        model,
        seed: int,
        *,
        cond=None,
        allow_extrapolation: bool = False,
        n_workers: int | None = None,
        tile_latents: int = DEFAULT_TILE_LATENTS,
        backend: str = "auto",
    ) -> None:
        self.seed = rng.check_seed(seed)
        ms = sys.modules.get("crab.modelstore")  # a TrainedModel exists only if modelstore (and torch) was imported
        if isinstance(model, TileSource):
            self.source = model
        elif ms is not None and isinstance(model, ms.TrainedModel):
            self.source = GanSource(model, self.seed, cond=cond, allow_extrapolation=allow_extrapolation, tile_latents=tile_latents, backend=backend)
        else:
            if cond is not None:
                raise InputError("conditions (--phi, --phi-schedule, --cond) apply to conditioned GAN models only")
            from .template import TemplateModel, TemplateSource

            if not isinstance(model, TemplateModel):
                raise InputError(f"cannot generate with a {type(model).__name__}: expected a TrainedModel or a TemplateModel")
            self.source = TemplateSource(model, self.seed)
        self.model = model
        self.n_workers = int(n_workers) if n_workers else _default_workers()
        if self.n_workers < 1:
            raise InputError(f"n_workers must be >= 1, got {n_workers}")

    @property
    def sampling_rate_hz(self) -> float:
        return float(self.source.sampling_rate_hz)

    @property
    def tile_samples(self) -> int:
        return int(self.source.tile_samples)

    @property
    def kind(self) -> str:
        return self.source.kind

    def describe(self) -> dict[str, Any]:
        """The generation settings that define the bytes (for the run record)."""
        return {"seed": self.seed, **self.source.describe()}

    def detector_names(self, detectors: int | Sequence[int]) -> list[str]:
        """Default names of ``detectors``: ``W00_D000, ...`` (one wafer), or for a joint (wafer)
        model ``W{key}_D{row}`` (key = wafer, row = detector of the wafer)."""
        if self.source.rows == 1:
            from .tod_io import default_detector_names

            return default_detector_names(len(self._rows(detectors)))
        return [f"W{k:02d}_D{r:03d}" for k, r in self._rows(detectors)]

    def _rows(self, detectors: int | Sequence[int]) -> list[tuple[int, int]]:
        """(key, row) of each requested detector."""
        R = self.source.rows
        if isinstance(detectors, (int, np.integer)):
            if detectors < 1:
                raise InputError(f"number of detectors must be at least 1, got {detectors}")
            return [(d // R, d % R) for d in range(int(detectors))]
        dets = [int(d) for d in detectors]
        if not dets or any(d < 0 for d in dets):
            raise InputError(f"detector keys must be non-negative integers, got {detectors!r}")
        if len(set(dets)) != len(dets):
            raise InputError(f"detector keys must be unique, got {dets}")
        return [(d // R, d % R) for d in dets]

    def iter_chunks(
        self,
        detectors: int | Sequence[int],
        start_sample: int,
        n_samples: int,
        chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_sample, tod)`` chunks covering ``[start_sample, start_sample + n_samples)``.

        ``tod`` is float32 (n_detectors, <= chunk_samples); chunks start at
        ``start_sample + i * chunk_samples``.  Memory is bounded by a few
        chunks whatever ``n_samples``.  The arrays are fresh (safe to keep).
        """
        start_sample, n_samples, chunk_samples = int(start_sample), int(n_samples), int(chunk_samples)
        if start_sample < 0 or n_samples < 0:
            raise InputError(f"start_sample and n_samples must be >= 0, got {start_sample}, {n_samples}")
        if chunk_samples < 1:
            raise InputError(f"chunk_samples must be >= 1, got {chunk_samples}")
        rows = self._rows(detectors)
        keys = list(dict.fromkeys(k for k, _ in rows))
        src = self.source
        src.check_span(start_sample, start_sample + n_samples)
        src.prepare(len(keys))
        T = self.tile_samples
        stop = start_sample + n_samples
        if n_samples == 0:
            return
        t_first, t_last = start_sample // T, (stop - 1) // T
        row_of = {k: [(i, r) for i, (kk, r) in enumerate(rows) if kk == k] for k in keys}

        def tasks() -> Iterator[tuple[int, int]]:
            for t in range(t_first, t_last + 1):
                for k in keys:
                    yield (k, t)

        max_inflight = max(4, 3 * self.n_workers) + len(keys)
        with _torch_threads(1), ThreadPoolExecutor(self.n_workers, thread_name_prefix="crab-gen", initializer=_thread_init) as pool:
            pending: deque[tuple[int, int, Future]] = deque()
            it = tasks()

            def refill() -> None:
                while len(pending) < max_inflight:
                    nxt = next(it, None)
                    if nxt is None:
                        return
                    pending.append((nxt[0], nxt[1], pool.submit(src.tile, nxt[0], nxt[1])))

            try:
                refill()
                c0 = start_sample
                buf = np.empty((len(rows), min(chunk_samples, stop - c0)), np.float32)
                current: dict[int, np.ndarray] = {}  # tiles of the current tile index, by key
                while pending:
                    k, t, fut = pending.popleft()
                    current[k] = fut.result()
                    refill()
                    if len(current) < len(keys):
                        continue
                    a, b = max(t * T, start_sample), min((t + 1) * T, stop)
                    while a < b:
                        c1 = min(c0 + chunk_samples, stop)
                        e = min(b, c1)
                        for kk in keys:
                            tile = current[kk]
                            for i, r in row_of[kk]:
                                buf[i, a - c0 : e - c0] = tile[r, a - t * T : e - t * T]
                        a = e
                        if e == c1:
                            interrupt.check()  # a stop signal swallowed by a callback still stops the run
                            yield c0, buf
                            c0 = c1
                            if c0 < stop:
                                buf = np.empty((len(rows), min(chunk_samples, stop - c0)), np.float32)
                    current = {}
            finally:
                for _, _, f in pending:
                    f.cancel()

    def generate(self, detectors: int | Sequence[int] = 1, start_sample: int = 0, n_samples: int = 0) -> np.ndarray:
        """TOD samples ``[start_sample, start_sample + n_samples)``, float32 (n_detectors, n_samples)."""
        rows = self._rows(detectors)
        out = np.empty((len(rows), int(n_samples)), np.float32)
        for c0, chunk in self.iter_chunks(detectors, start_sample, n_samples, chunk_samples=max(1, min(int(n_samples), 1 << 22))):
            out[:, c0 - start_sample : c0 - start_sample + chunk.shape[1]] = chunk
        return out

# --------------------------------------------------------------------------- sinks
# one implementation, owned by the file format (re-exported here for users of generation)
Checksum = TodChecksum


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB).

    ``VmHWM`` of ``/proc/self/status`` on Linux (``ru_maxrss`` there also
    counts the parent's memory at the fork of a subprocess), else ``ru_maxrss``.
    """
    import resource

    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 2**20


@dataclass
class GenerationStats:
    """What a generation run did.

    Attributes
    ----------
    n_detectors, start_sample, n_samples : int
        Rows and time range generated (samples per detector).
    sampling_rate_hz : float
    wall_s : float
        Wall time of the generation loop (s).
    samples_per_s : float
        ``n_detectors * n_samples / wall_s``.
    checksum : str
        :class:`Checksum` of the generated TOD.
    path : Path or None
        Final file, for a file sink.
    peak_rss_mb : float
        Peak resident memory of the process at the end (MiB).
    settings : dict
        :meth:`TodGenerator.describe`.
    """

    n_detectors: int
    start_sample: int
    n_samples: int
    sampling_rate_hz: float
    wall_s: float
    samples_per_s: float
    checksum: str
    path: Path | None = None
    peak_rss_mb: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        from .units import format_duration

        what = f"{self.n_detectors} x {self.n_samples} samples ({format_duration(self.n_samples / self.sampling_rate_hz)})"
        return f"{what} in {self.wall_s:.2f} s: {self.samples_per_s / 1e6:.2f} Msamples/s, peak RSS {self.peak_rss_mb:.0f} MiB, sha256 {self.checksum}"


def as_generator(model, seed: int, **kw: Any) -> TodGenerator:
    """A :class:`TodGenerator` for ``model`` (returned unchanged if it already is one)."""
    if isinstance(model, TodGenerator):
        return model
    return TodGenerator(model, seed, **kw)


def _plan(model, seed: int, duration_s: float, start_s: float, gen_kw: dict[str, Any]) -> tuple[TodGenerator, int, int]:
    """The generator and the sample range ``(start_sample, n_samples)`` of a run."""
    gen = as_generator(model, seed, **gen_kw)
    fs = gen.sampling_rate_hz
    s0, n = samples_for(start_s, fs, what="start", allow_zero=True), samples_for(duration_s, fs)
    gen.source.check_span(s0, s0 + n)  # before any output is opened
    return gen, s0, n


def samples_for(duration_s: float, sampling_rate_hz: float, *, what: str = "duration", allow_zero: bool = False) -> int:
    """Number of samples for ``duration_s`` at ``sampling_rate_hz`` (rounded to the nearest)."""
    if not (duration_s >= 0 and math.isfinite(duration_s)):
        raise InputError(f"{what} must be a finite number of seconds >= 0, got {duration_s!r}")
    n = int(round(float(duration_s) * float(sampling_rate_hz)))
    if n < 1 and not allow_zero:
        raise InputError(f"{what} of {duration_s:g} s is less than one sample at {sampling_rate_hz:g} Hz")
    return n


def _run(
    gen: TodGenerator,
    detectors: int | Sequence[int],
    start_sample: int,
    n_samples: int,
    sink: Callable[[int, np.ndarray], None],
    *,
    chunk_samples: int,
    progress: bool | None,
    desc: str,
) -> GenerationStats:
    from .progress import bar

    n_det = len(gen._rows(detectors))
    check = Checksum(n_det)
    t0 = time.perf_counter()
    with bar(total=n_det * n_samples, desc=desc, unit="sample", disable=None if progress is None else not progress, unit_scale=True) as pb:
        for c0, chunk in gen.iter_chunks(detectors, start_sample, n_samples, chunk_samples):
            sink(c0, chunk)
            check.update(chunk)
            pb.update(chunk.size)
    wall = time.perf_counter() - t0
    return GenerationStats(
        n_detectors=n_det,
        start_sample=int(start_sample),
        n_samples=int(n_samples),
        sampling_rate_hz=gen.sampling_rate_hz,
        wall_s=wall,
        samples_per_s=n_det * n_samples / wall if wall > 0 else float("inf"),
        checksum=check.hexdigest(),
        peak_rss_mb=peak_rss_mb(),
        settings=gen.describe(),
    )


def stream_checksum(
    model,
    duration_s: float,
    n_detectors: int | Sequence[int] = 1,
    seed: int = 0,
    *,
    start_s: float = 0.0,
    chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
    progress: bool | None = None,
    **gen_kw: Any,
) -> GenerationStats:
    """Generate and only checksum (no output): the benchmark sink.

    Same arguments as :func:`generate_to_file` without the output.
    """
    gen, s0, n = _plan(model, seed, duration_s, start_s, gen_kw)
    return _run(gen, n_detectors, s0, n, lambda c0, c: None, chunk_samples=chunk_samples, progress=progress, desc="generate (checksum)")


def stream_raw(
    model,
    out: BinaryIO,
    duration_s: float,
    n_detectors: int | Sequence[int] = 1,
    seed: int = 0,
    *,
    start_s: float = 0.0,
    chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
    progress: bool | None = None,
    **gen_kw: Any,
) -> GenerationStats:
    """Stream raw float32 (native little-endian) samples to a binary file object (e.g. stdout).

    Chunk by chunk, each chunk C-ordered (n_detectors, n): for one detector,
    simply the series.
    """
    gen, s0, n = _plan(model, seed, duration_s, start_s, gen_kw)

    def sink(c0: int, chunk: np.ndarray) -> None:
        out.write(np.ascontiguousarray(chunk, dtype="<f4").tobytes())

    stats = _run(gen, n_detectors, s0, n, sink, chunk_samples=chunk_samples, progress=progress, desc="generate (stream)")
    out.flush()
    return stats


def generate_to_file(
    model,
    out: str | os.PathLike,
    duration_s: float,
    n_detectors: int | Sequence[int] = 1,
    seed: int = 0,
    *,
    start_s: float = 0.0,
    chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
    overwrite: bool = False,
    progress: bool | None = None,
    detector_names: Sequence[str] | None = None,
    run_config: dict[str, Any] | None = None,
    **gen_kw: Any,
) -> GenerationStats:
    """Generate TOD into an HDF5 file (``crab.tod_io`` layout, no ``events`` group).

    Parameters
    ----------
    model : TrainedModel, TemplateModel or TodGenerator
    out : path-like
        Final file name; written under a temporary name and renamed when
        complete (a failed or killed run leaves nothing under ``out``).
    duration_s : float
        Duration to generate (s).
    n_detectors : int or sequence of int
        Number of detectors (keys 0..n-1) or explicit detector keys.
    seed : int
    start_s : float
        Time of the first sample (s): the file holds exactly the samples a
        run from 0 would have there.
    chunk_samples : int
        Samples per detector generated and written at a time.
    overwrite : bool
        Replace an existing ``out``.
    progress : bool, optional
        Progress bar on stderr (default: when stderr is a terminal).
    detector_names : sequence of str, optional
        Names stored in the file (default ``W00_D000, ...``).
    run_config : dict, optional
        Extra entries for the run record (``config`` attribute).
    **gen_kw
        ``cond``, ``allow_extrapolation``, ``n_workers``, ``tile_latents``, ``backend`` (:class:`TodGenerator`).
    """
    from . import __version__
    from .provenance import run_record
    from .tod_io import TodMetadata, TodWriter

    path = Path(out)
    if path.exists() and not overwrite:
        raise InputError(f"output file {path} exists (use overwrite / --overwrite to replace it)")
    if not path.parent.exists():
        raise InputError(f"output folder {path.parent} does not exist")
    gen, s0, n = _plan(model, seed, duration_s, start_s, gen_kw)
    fs = gen.sampling_rate_hz
    n_det = len(gen._rows(n_detectors))
    names = list(detector_names) if detector_names is not None else gen.detector_names(n_detectors)
    if len(names) != n_det:
        raise InputError(f"{len(names)} detector names for {n_det} detectors")
    model_path = getattr(gen.model, "path", None)
    config = {
        "method": gen.kind,
        "model": None if model_path is None else str(model_path),
        "duration_s": n / fs,
        "start_s": s0 / fs,
        "start_sample": s0,
        "n_samples": n,
        "sampling_rate_hz": fs,
        "detectors": names,
        "detector_keys": n_detectors if isinstance(n_detectors, (int, np.integer)) else [int(d) for d in n_detectors],
        "generation": gen.describe(),
        **(run_config or {}),
    }
    meta = TodMetadata(
        sampling_rate_hz=fs,
        detectors=names,
        start_time_s=s0 / fs,
        units=gen.source.units,
        kind=gen.kind,
        config=run_record(config, seed, method=gen.kind, model_path=config["model"]),
        seed=seed,
        crab_version=__version__,
        description=f"CRAB {gen.kind} generation",
    )
    comm = _mpi_world()
    if comm is not None:  # launched by mpirun/srun with several ranks: split the work (crab.mpi)
        from .mpi import generate_distributed

        stats = generate_distributed(gen, path, meta, n_detectors, s0, n, comm=comm, chunk_samples=chunk_samples, overwrite=overwrite, progress=progress)
        stats.path = path
        return stats
    with TodWriter(path, meta, n_samples=n, chunk_samples=min(HDF5_CHUNK_SAMPLES, n), overwrite=overwrite) as w:
        stats = _run(gen, n_detectors, s0, n, lambda c0, c: w.write(c), chunk_samples=chunk_samples, progress=progress, desc="generate")
        w.dataset.attrs["checksum_sha256"] = stats.checksum
    stats.path = path
    return stats


def _mpi_world():
    """The MPI communicator when launched with several ranks (see :mod:`crab.mpi`), else None."""
    try:
        from .mpi import world
    except ImportError:  # pragma: no cover - crab.mpi is optional
        return None
    return world()


def is_root_process() -> bool:
    """False on MPI ranks other than 0 (they print no summaries)."""
    comm = _mpi_world()
    return comm is None or comm.Get_rank() == 0


# --------------------------------------------------------------------------- models
def is_template_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a template model (a ``.json`` file or a folder with ``template.json``)."""
    from .template import TEMPLATE_FILE

    p = Path(path)
    return (p.is_file() and p.suffix == ".json") or (p.is_dir() and (p / TEMPLATE_FILE).exists())


def load_generation_model(path: str | os.PathLike, *, method: str = "auto", sampling_rate_hz: float | None = None):
    """Load what to generate with: a trained model directory or a template model.

    Parameters
    ----------
    path : path-like
        Model directory (``crab train``) or template model (``.json`` file or
        folder with ``template.json``).
    method : str
        ``"gan"``, ``"template"`` or ``"auto"`` (from the path).
    sampling_rate_hz : float, optional
        Required sampling rate (Hz); another rate is a ModelCompatibilityError.

    Raises
    ------
    ModelCompatibilityError
        Missing, unreadable, another format version or another sampling rate.
    """
    if method not in ("auto", "gan", "template"):
        raise InputError(f"method must be 'gan', 'template' or 'auto', got {method!r}")
    p = Path(path)
    if not p.exists():
        raise ModelCompatibilityError(f"model not found: {p} (expected a directory written by `crab train` or a template .json)")
    if method == "template" or (method == "auto" and is_template_path(p)):
        from .template import load_template

        return load_template(p, sampling_rate_hz=sampling_rate_hz)
    from .errors import CrabError
    from .modelstore import load_model

    try:
        return load_model(p, sampling_rate_hz=sampling_rate_hz)
    except CrabError:
        raise
    except (ValueError, TypeError, KeyError, RuntimeError, AttributeError) as exc:
        # a model.pt whose configuration or weights this version cannot rebuild
        msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise ModelCompatibilityError(f"{p}: model incompatible with this version of crab ({msg}); retrain it or use the crab version that wrote it") from None
