"""The compiled (inference) form of the streaming generator.

:func:`compile_generator` turns an eval-mode streaming
:class:`~crab.models.gan.network.Generator` into a :class:`CompiledGenerator`,
the same function rewritten from the module's parameters, buffers and
:class:`~crab.models.gan.network.ModelConfig` for fast single-threaded
inference of long latent sequences on a CPU:

* every batch normalisation (eval mode: a per-channel affine map) is folded
  into the convolution before it (in float64, then rounded to float32);
* constant conditioning channels become a bias shift of each layer, per call;
* a nearest-neighbour x2 upsampling followed by a convolution is computed as
  a polyphase convolution at the input rate (two output phases per input
  sample), without the upsampled copy;
* every convolution is a sum of matrix products over its taps, channels-last
  and without padding: only the *valid* outputs, those that do not depend on
  the zero padding at the ends, are computed (:attr:`CompiledGenerator.offset`);
* the event channels (about 1 % of the samples are events) and the learned
  pulses of :class:`~crab.models.gan.network.EventFilter` and
  :class:`~crab.models.gan.network.AdditiveGlitches` are handled event by
  event (sparse) instead of as dense channels;
* an output layer with few channels is one product against all its taps,
  then shifted adds.

The module remains the one definition of the network: nothing here is a
hand-kept copy of its weights, and the functions of the network that are not
convolutions (:func:`~crab.models.gan.network.event_phase`,
:func:`~crab.models.gan.network.soft_bound`, the amplitude law of
``AdditiveGlitches``) are called, not rewritten.  ``tests/test_inference.py``
checks that both give the same samples; ``GanSource`` checks it again on
every load; ``benchmarks/inference_backends.py`` times this form against
plain torch inference.

torch is imported inside the functions: importing this module (and the
generation engine that imports it) does not import torch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from crab.models.gan.network import Generator


class NotCompilable(Exception):
    """The generator is not one :func:`compile_generator` handles (the message says why)."""


# ---------------------------------------------------------------------------- compiled parts
@dataclass(frozen=True)
class _Bias:
    """Bias of a compiled layer.

    Attributes
    ----------
    value64 : numpy.ndarray, shape (c_out,)
        The bias with batch norm folded in, float64.
    value32 : numpy.ndarray or torch.Tensor, shape (c_out,)
        The same in float32, in the array type the layer adds it to.
    cond_weight : numpy.ndarray, shape (c_out, n_cond), or None
        Bias shift per normalised condition value (the condition channels'
        taps summed: they are constant in time); None if unconditioned.
    """

    value64: np.ndarray
    value32: Any
    cond_weight: np.ndarray | None

    def at(self, cond: np.ndarray | None):
        """The float32 bias for the normalised conditions ``cond`` (``value64 + cond_weight @ cond``)."""
        if self.cond_weight is None:
            return self.value32
        if cond is None:
            raise ValueError("this generator is conditioned: give cond")
        b = (self.value64 + self.cond_weight @ cond).astype(np.float32)
        if isinstance(self.value32, np.ndarray):
            return b
        import torch

        return torch.from_numpy(b)


@dataclass(frozen=True)
class _TapLayer:
    """A convolution as matrix products over its taps: output row ``i`` is
    ``bias + sum_j input[i + j] @ taps[j]`` (channels-last, valid rows only).

    Attributes
    ----------
    taps : list of torch.Tensor, each (c_in, c_out) float32
        With ``upsample`` the polyphase taps at the input rate: ``c_out`` is
        twice the convolution's channels (output phase 0, then phase 1).
    bias : _Bias
    slope : float or None
        Negative slope of the LeakyReLU after it (0: ReLU), None for none.
    upsample : bool
        Whether the convolution follows a nearest-neighbour x2 upsampling.
    noise_start : int or None
        The layer also reads the full-rate noise inputs (two samples per
        input row): the first one it reads, in input rows; None if it does not.
    """

    taps: list
    bias: _Bias
    slope: float | None
    upsample: bool
    noise_start: int | None


@dataclass(frozen=True)
class _OutputLayer:
    """The output convolution with few channels: one product ``(n, c_in) x (c_in, n_columns)``
    against all taps, then ``n_taps`` shifted adds (numpy); a matrix product with so few
    columns is slow as ``n_taps`` separate products.

    Attributes
    ----------
    weights : torch.Tensor, shape (c_in, 8 or 16) float32
        Column ``j * c_out + c`` is tap ``j`` of output channel ``c``; zero padded.
    bias : _Bias
    slope : float or None
        As :attr:`_TapLayer.slope`.
    n_taps : int
    """

    weights: Any
    bias: _Bias
    slope: float | None
    n_taps: int


@dataclass(frozen=True)
class _EventPulses:
    """The learned pulses of :class:`~crab.models.gan.network.EventFilter`.

    Attributes
    ----------
    weights : torch.Tensor, shape (n_events, n_taps, n_pulses) float32
        In time order: tap ``i`` of an event at sample ``e`` adds to sample ``e - half + i``.
    half : int
        ``n_taps // 2``.
    """

    weights: Any
    half: int


@dataclass(frozen=True)
class _AdditivePulses:
    """:class:`~crab.models.gan.network.AdditiveGlitches`, pulses added in TOD units.

    Attributes
    ----------
    module : AdditiveGlitches
        A frozen copy of the module: its amplitude law (``amplitudes``) and pulses (``event_pulses``).
    out_scale : float
        ``k`` of the amplitude transform (``Generator.out_scale``).
    log_amplitude_cap : float
        ``Generator.log_amplitude_cap``.
    """

    module: Any
    out_scale: float
    log_amplitude_cap: float


# ---------------------------------------------------------------------------- the compiled form
class CompiledGenerator:
    """The compiled form of a streaming generator (see the module docstring); made by :func:`compile_generator`.

    :meth:`run` maps the latents of one network run (n_steps, input_latent_dim)
    (channels-last) to its output over the *valid* range: output sample ``i``
    is output sample ``offset + i`` of the module run on the same latents;
    the last ``end_loss`` samples of the module's output have no counterpart.
    :meth:`generate` does the same for the module's whole output (all
    detectors of an exchangeable wafer).

    Attributes
    ----------
    offset : int
        Samples of the module's output before the first valid output sample.
    end_loss : int
        Samples of the module's output after the last valid output sample.
    out_channels : int
        Output channels of :meth:`generate` (``ModelConfig.out_channels``).
    additive : _AdditivePulses or None
        The additive glitches, None when the generator has none (then
        ``linear`` output is not available).
    """

    def __init__(
        self,
        *,
        layers: list,
        offset: int,
        end_loss: int,
        latent_dim: int,
        noise_dim: int,
        upsample_factor: int,
        cond_dim: int,
        events: tuple[int, float, bool],
        event_inputs: bool,
        event_filter: _EventPulses | None,
        additive: _AdditivePulses | None,
        bound: tuple[float, float, float] | None,
        out_channels: int,
        assemble_latents: Callable[[Any, int], Any] | None,
    ) -> None:
        self.layers = layers
        self.offset = offset
        self.end_loss = end_loss
        self.latent_dim = latent_dim  # latents of one run (shared + own for a wafer)
        self.noise_dim = noise_dim
        self.upsample_factor = upsample_factor
        self.cond_dim = cond_dim
        self.events = events  # crab.models.gan.network.event_noise arguments: (channels, threshold, subsample)
        self.event_inputs = event_inputs  # ModelConfig.event_inputs: the events are network inputs too
        self.event_filter = event_filter
        self.additive = additive
        self.bound = bound  # soft_bound (lo, hi, width), or None
        self.out_channels = out_channels
        self.assemble_latents = assemble_latents  # Generator.assemble_latents of an exchangeable wafer, or None

    # ------------------------------------------------------------------ running
    def generate(self, z, cond: np.ndarray | None = None, linear: bool = False) -> np.ndarray:
        """Valid outputs of the whole generator for latents ``z`` (torch (n_steps, z_dim), the
        module's latents channels-last): float32 numpy (out_channels, n_out).  An exchangeable wafer
        runs the one-detector network once per detector on its (shared, own) latents
        (``Generator.assemble_latents``).  ``cond`` and ``linear`` as in :meth:`run`."""
        if self.assemble_latents is None:
            return self.run(z, cond, linear)
        runs = [self.run(self.assemble_latents(z.T, r).T.contiguous(), cond, linear) for r in range(self.out_channels)]
        return np.concatenate(runs, axis=0)

    def run(self, z, cond: np.ndarray | None = None, linear: bool = False) -> np.ndarray:
        """Valid outputs of one network run for latents ``z`` (torch (n_steps, latent_dim)): float32
        numpy (channels of one run, n_out).

        Parameters
        ----------
        z : torch.Tensor, shape (n_steps, latent_dim) float32
        cond : numpy.ndarray, shape (cond_dim,), optional
            Normalised condition values (:func:`crab.models.gan.network.normalize_cond`)
            of this stretch, for a conditioned generator.
        linear : bool
            Additive glitches only: return ``sinh(k y)`` instead of ``y``, i.e.
            ``(x - x0) / s`` in TOD units, without the ``asinh`` that the
            inverse transform would undo.
        """
        import torch
        import torch.nn.functional as F

        c = None if cond is None else np.asarray(cond, dtype=np.float64).reshape(self.cond_dim)

        nd = self.noise_dim
        noise = None
        pulses = None
        if nd:
            # latent step j, noise channel c*f + i -> full-rate sample f j + i of noise channel c;
            # as pairs of samples (half-rate polyphase, channels-last): (steps * f / 2, 2 * n_noise)
            steps, f = z.shape[0], self.upsample_factor
            n_noise = nd // f
            zn = z[:, self.latent_dim - nd :]
            full = zn.reshape(steps, n_noise, f).transpose(1, 2).reshape(steps * f, n_noise)
            if self.events[0]:
                ev = self._events(full)
                if self.additive is not None:
                    pulses = self._additive_pulses(ev, full.shape[0])
                full = self._event_inputs(full, ev) if self.event_inputs else full[:, : full.shape[1] - self.events[0]]
            noise = full.reshape(steps * f // 2, -1)
            h = z[:, : self.latent_dim - nd]
        else:
            h = z
        for layer in self.layers:
            if isinstance(layer, _TapLayer):
                taps, slope = layer.taps, layer.slope
                bias = layer.bias.at(c)
                if layer.noise_start is not None:
                    h = torch.cat([h, noise[layer.noise_start : layer.noise_start + h.shape[0]]], 1)
                n = h.shape[0] - len(taps) + 1
                out = torch.addmm(bias, h[:n], taps[0])
                for j in range(1, len(taps)):
                    out.addmm_(h[j : j + n], taps[j])
                if slope is not None:
                    F.leaky_relu_(out, slope) if slope > 0 else F.relu_(out)
                h = out.view(2 * n, out.shape[1] // 2) if layer.upsample else out
            else:
                k, slope = layer.n_taps, layer.slope
                bias = layer.bias.at(c)
                P = torch.mm(h, layer.weights).numpy()
                n = P.shape[0] - k + 1
                C = bias.shape[0]
                res = np.empty((C, n), np.float32)
                for ch in range(C):
                    acc = res[ch]
                    np.add(P[0:n, ch], bias[ch], out=acc)
                    for j in range(1, k):
                        acc += P[j : j + n, j * C + ch]
                if slope is not None:
                    res = np.where(res > 0, res, res * np.float32(slope)).astype(np.float32)
                return self._finish(res, pulses, linear)
        return self._finish(np.ascontiguousarray(h.numpy().T), pulses, linear)

    def _finish(self, y: np.ndarray, pulses, linear: bool = False) -> np.ndarray:
        """The output bound, then the additive glitches (``pulses`` over all samples of the run, or None;
        ``linear``: stay in units of the transform's scale, see :meth:`run`)."""
        if self.bound is not None:
            from crab.models.gan.network import soft_bound

            y = np.ascontiguousarray(soft_bound(y, *self.bound), dtype=np.float32)
        if pulses is None:
            if linear:
                raise ValueError("linear output is for generators with additive glitches")
            return y
        k = np.float32(self.additive.out_scale)
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
        as :func:`crab.models.gan.network.event_noise` defines them.  A few torch operations, which
        release the interpreter lock for the other generation threads."""
        import torch

        from crab.models.gan.network import event_phase

        n_ev, threshold, subsample = self.events
        k = full.shape[1] - n_ev
        pos, ch = torch.nonzero(full[:, k:].abs() > threshold, as_tuple=True)
        value = full[pos, k + ch]
        phase = event_phase(full[pos, 0]) if subsample else None
        return pos, ch, value, phase

    def _event_inputs(self, full, events):
        """:func:`crab.models.gan.network.event_noise` and the event pulses
        (:class:`crab.models.gan.network.EventFilter`) of the noise inputs, from their ``events``
        (:meth:`_events`): (n_samples, n_noise [+ 2 n_events]), channels-last.  Each event's value
        lands on its channel (split with the next sample by its phase) and its pulse taps are
        scatter-added to a padded buffer, cropped to the run's samples (a part beyond them is dropped)."""
        import torch

        n_ev = self.events[0]
        n, k = full.shape[0], full.shape[1] - n_ev
        pos, ch, value, phase = events
        # each event's value on its sample, split with the next one by its phase
        split = value[:, None] if phase is None else torch.stack([value - value * phase, value * phase], 1)  # (events, 1 or 2)
        s = split.shape[1]
        ev = torch.zeros(n + s, n_ev)
        for j in range(s):
            ev.index_put_((pos + j, ch), split[:, j], accumulate=True)
        parts = [full[:, :k], ev[:n]]
        if self.event_filter is not None:
            w, h = self.event_filter.weights, self.event_filter.half  # (n_ev, taps, pulses), time order
            taps = torch.zeros(len(pos), 2 * h + s, w.shape[2])
            wc = w[ch]
            for j in range(s):  # the pulse of each part of the event, from its sample on
                taps[:, j : j + 2 * h + 1] += split[:, j, None, None] * wc
            pulses = torch.zeros(n + 2 * h + s, w.shape[2])  # row r: sample r - h
            pulses.index_add_(0, (pos[:, None] + torch.arange(2 * h + s)[None, :]).reshape(-1), taps.reshape(-1, w.shape[2]))
            parts.append(pulses[h : h + n])
        return torch.cat(parts, 1)

    def _additive_pulses(self, events, n: int):
        """The summed pulses of :class:`crab.models.gan.network.AdditiveGlitches` (torch (n,)) of the
        ``events`` (:meth:`_events`)."""
        import torch

        module = self.additive.module
        pos, ch, value, phase = events
        amp = module.amplitudes(value, self.additive.log_amplitude_cap, ch)
        glitch = amp > 0  # a fitted amplitude law leaves some events without a glitch
        pos, amp = pos[glitch], amp[glitch]
        pulse = module.event_pulses(amp, None if phase is None else phase[glitch])  # (events, taps), tap i on sample pos - half + i
        K, h = pulse.shape[1], module.half
        out = torch.zeros(n + K)  # row r: sample r - h
        out.index_add_(0, (pos[:, None] + torch.arange(K)[None, :]).reshape(-1), pulse.reshape(-1))
        return out[h : h + n]


# ---------------------------------------------------------------------------- compilation
def _check_conv(conv, where: str) -> None:
    """Raise :class:`NotCompilable` unless ``conv`` is a stride-1, zero-padded 'same' Conv1d of odd length."""
    from torch import nn

    if type(conv) is not nn.Conv1d:
        raise NotCompilable(f"{where}: expected a Conv1d, got {type(conv).__name__}")
    k = conv.kernel_size[0]
    if conv.stride[0] != 1 or conv.dilation[0] != 1 or conv.groups != 1 or conv.padding_mode != "zeros" or k % 2 == 0 or conv.padding not in ((k // 2,), "same"):
        raise NotCompilable(f"{where}: expected a stride-1 zero-padded 'same' convolution of odd length, got {conv}")


def _folded_conv(conv, batch_norm, n_in: int, n_noise: int, n_cond: int):
    """A convolution with the eval-mode batch norm after it (or None) folded in, float64.

    ``conv``'s inputs are ``n_in`` channels, then ``n_noise`` noise channels, then
    ``n_cond`` constant condition channels.  Returns ``(w, w_noise, b, bc)``: weights
    (out, n_in, k) and (out, n_noise, k) (None without noise), bias (out,) and the bias
    shift per condition (out, n_cond) (None without conditions).
    """
    import torch

    w = conv.weight.detach().to(torch.float64).numpy().copy()  # (out, in, k)
    if w.shape[1] != n_in + n_noise + n_cond:
        raise NotCompilable(f"{conv}: expected {n_in} + {n_noise} noise + {n_cond} condition input channels, got {w.shape[1]}")
    b = np.zeros(w.shape[0]) if conv.bias is None else conv.bias.detach().to(torch.float64).numpy().copy()
    bc = None
    if n_cond:  # constant channels: on valid outputs a bias bc @ cond
        bc = w[:, -n_cond:, :].sum(axis=2)
        w = w[:, :-n_cond, :]
    w_noise = None
    if n_noise:
        w_noise, w = w[:, n_in:, :], w[:, :n_in, :]
    if batch_norm is not None:
        s = batch_norm.weight.detach().double().numpy() / np.sqrt(batch_norm.running_var.double().numpy() + batch_norm.eps)
        w = w * s[:, None, None]
        if w_noise is not None:
            w_noise = w_noise * s[:, None, None]
        b = (b - batch_norm.running_mean.double().numpy()) * s + batch_norm.bias.detach().double().numpy()
        if bc is not None:
            bc = bc * s[:, None]
    return w, w_noise, b, bc


def _network_convolutions(generator: Generator) -> list[tuple]:
    """The convolutions of the streaming generator in order, read from its submodules:
    ``(w, w_noise, b, bc, slope, upsample)`` (:func:`_folded_conv`; ``slope`` of the LeakyReLU
    after it or None; ``upsample``: after a nearest-neighbour x2 upsampling)."""
    from torch import nn

    from crab.models.gan.network import _UpStage

    cfg = generator.cfg
    n_cond = cfg.cond_dim
    n_noise = generator.stage_noise_channels  # full-rate noise channels and event pulses, into the last stage
    stem = generator.stem
    if len(stem) != 3 or type(stem[1]) is not nn.BatchNorm1d or type(stem[2]) is not nn.LeakyReLU:
        raise NotCompilable(f"stem: expected Conv1d, BatchNorm1d, LeakyReLU, got {stem}")
    _check_conv(stem[0], "stem")
    c_in = generator.input_latent_dim - generator.noise_dim
    convs = [(*_folded_conv(stem[0], stem[1], c_in, 0, n_cond), float(stem[2].negative_slope), False)]
    c_in = stem[0].out_channels
    for i, stage in enumerate(generator.stages):
        if type(stage) is not _UpStage:
            raise NotCompilable(f"stage {i}: expected an _UpStage, got {type(stage).__name__}")
        up, conv, bn, act = stage
        if up.mode != "nearest" or float(np.ravel(up.scale_factor)[0]) != 2.0:
            raise NotCompilable(f"stage {i}: expected a nearest-neighbour x2 upsampling, got {up}")
        _check_conv(conv, f"stage {i}")
        last = i == len(generator.stages) - 1
        convs.append((*_folded_conv(conv, bn, c_in, n_noise if last else 0, n_cond), float(act.negative_slope), True))
        c_in = conv.out_channels
    _check_conv(generator.head, "head")
    convs.append((*_folded_conv(generator.head, None, c_in, 0, n_cond), None, False))
    return convs


def _compiled_layers(convs: list[tuple]) -> tuple[list, int, int]:
    """The compiled layers of the folded convolutions (:func:`_network_convolutions`) and the
    valid range: ``(layers, offset, end_loss)`` in full-rate samples."""
    import torch

    rate = 1  # samples per latent step at the current layer's input
    left = 0  # first valid position, in units of the current rate
    right = 0  # positions lost at the right end, same units
    layers: list = []
    for i, (w, wn, b, bc, slope, up) in enumerate(convs):
        c_out, c_in, k = w.shape
        h = k // 2
        noise_start = None
        if up:
            # polyphase: output phase p of input row r reads input rows r + o, o in [o_lo, o_hi]
            o_lo, o_hi = (-h) // 2, (1 + h) // 2
            n_noise = 0 if wn is None else wn.shape[1]
            # input columns: c_in upsampled channels, then (noise) the 2 full-rate phases of each noise channel
            W = np.zeros((o_hi - o_lo + 1, c_in + 2 * n_noise, 2 * c_out))
            for p in range(2):
                for j in range(k):
                    o, q = divmod(p + j - h, 2)
                    W[o - o_lo, :c_in, p * c_out : (p + 1) * c_out] += w[:, :, j].T
                    if n_noise:
                        W[o - o_lo, c_in + q * n_noise : c_in + (q + 1) * n_noise, p * c_out : (p + 1) * c_out] += wn[:, :, j].T
            if n_noise:
                noise_start = left
            b = np.concatenate([b, b])
            bc = None if bc is None else np.concatenate([bc, bc])
            left, right = 2 * (left - o_lo), 2 * (right + o_hi)
            rate *= 2
        else:
            W = np.stack([w[:, :, j].T for j in range(k)])
            left, right = left + h, right + h
        if i == len(convs) - 1 and not up and k * c_out <= 16:
            n_columns = 8 if k * c_out <= 8 else 16
            Wcat = np.zeros((c_in, n_columns))
            Wcat[:, : k * c_out] = np.concatenate([W[j] for j in range(k)], axis=1)
            layers.append(_OutputLayer(torch.from_numpy(Wcat.astype(np.float32)), _Bias(b, b.astype(np.float32), bc), slope, k))
            continue
        taps = [torch.from_numpy(np.ascontiguousarray(W[j], dtype=np.float32)) for j in range(W.shape[0])]
        layers.append(_TapLayer(taps, _Bias(b, torch.from_numpy(b.astype(np.float32)), bc), slope, up, noise_start))
    return layers, left, right


def compile_generator(generator: Generator) -> CompiledGenerator:
    """The compiled form of a streaming generator in eval mode (see the module docstring).

    Built from the module's parameters, buffers and config only; later changes
    to the module do not reach the compiled form.

    Parameters
    ----------
    generator : crab.models.gan.network.Generator
        A streaming generator in eval mode.

    Returns
    -------
    CompiledGenerator

    Raises
    ------
    NotCompilable
        A generator in training mode (its batch norm uses batch statistics),
        or submodules not laid out as the streaming generator defines them.
    """
    import torch

    cfg = generator.cfg
    if generator.training:
        raise NotCompilable("generator in training mode (batch norm would use batch statistics): call .eval() first")
    layers, offset, end_loss = _compiled_layers(_network_convolutions(generator))
    event_filter = None
    if generator.event_filter is not None:  # present with event channels and event_kernel > 0
        conv = generator.event_filter.conv
        event_filter = _EventPulses(conv.weight.detach().to(torch.float32).permute(1, 2, 0).flip(1).contiguous(), conv.kernel_size[0] // 2)
    additive = None
    if generator.additive is not None:  # present when cfg.has_additive_glitches
        module = copy.deepcopy(generator.additive).float().requires_grad_(False)
        additive = _AdditivePulses(module, generator.out_scale, generator.log_amplitude_cap)
    bounds = cfg.output_bounds
    return CompiledGenerator(
        layers=layers,
        offset=offset,
        end_loss=end_loss,
        latent_dim=generator.input_latent_dim,
        noise_dim=generator.noise_dim,
        upsample_factor=cfg.upsample_factor,
        cond_dim=cfg.cond_dim,
        events=(cfg.event_channels, float(cfg.event_threshold), bool(cfg.event_subsample)),
        event_inputs=bool(cfg.event_inputs),
        event_filter=event_filter,
        additive=additive,
        bound=None if bounds is None else (float(bounds[0]), float(bounds[1]), float(cfg.output_bound_width)),
        out_channels=cfg.out_channels,
        assemble_latents=generator.assemble_latents if generator.exchangeable else None,  # the module's one definition of the wafer's inputs
    )

