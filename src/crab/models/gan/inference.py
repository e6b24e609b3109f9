"""Fast inference form of the streaming generator."""

from __future__ import annotations

from typing import Any

import numpy as np


class _Unsupported(Exception):
    pass


class _FastStreamingNet:
    """The streaming generator rewritten for inference (see the module docstring).

    ``run(z, cond)`` maps latents (n_steps, latent_dim) (channels-last) to the
    generator output (n_out, out_channels) over the *valid* range: output row
    ``i`` is output sample ``offset + i`` of the module run on ``z`` (with
    ``offset = self.offset`` samples).  Constant conditioning inputs
    (normalised, :func:`crab.models.gan.network.normalize_cond`) only shift the biases of
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
        self.events = (int(cfg.event_channels), float(cfg.event_threshold), bool(cfg.event_subsample))  # crab.models.gan.network.event_noise arguments
        ef = getattr(gen, "event_filter", None)  # crab.models.gan.network.EventFilter: learned pulses of the events, more last-stage inputs
        self.event_filter = None
        if ef is not None:  # as (events, taps, pulses) weights, tap i adding to the sample h - i before the event, and h
            taps = ef.conv.kernel_size[0]
            self.event_filter = (ef.conv.weight.detach().to(torch.float32).permute(1, 2, 0).flip(1).contiguous(), taps // 2)
            n_noise += ef.conv.out_channels
        ag = getattr(gen, "additive", None)  # crab.models.gan.network.AdditiveGlitches: pulses added in TOD units to the output
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
        # the generator's output bound (crab.models.gan.network.soft_bound), applied to the result
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
        as :func:`crab.models.gan.network.event_noise` defines them.  Events are about 1 % of the samples, so the fast
        path handles them one by one (sparse) instead of as dense channels: a few torch operations, which
        release the interpreter lock for the other generation threads."""
        import torch

        from crab.models.gan.network import event_phase

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
        """:func:`crab.models.gan.network.event_noise` and the event pulses (:class:`crab.models.gan.network.EventFilter`) of the noise
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
        """The summed pulses of :class:`crab.models.gan.network.AdditiveGlitches` (torch (n,)) of the ``events`` (:meth:`_events`)."""
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
        from crab.models.gan.network import soft_bound

        return np.ascontiguousarray(soft_bound(y, *self.bound), dtype=np.float32)
