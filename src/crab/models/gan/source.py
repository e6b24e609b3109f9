"""The streaming GAN as a tile source of the engine.

The generator is fully convolutional over a latent sequence, one latent vector
per ``upsample_factor`` samples, with a finite receptive field of
``margin_latents`` latent steps.  Tile ``t`` is computed from latent steps
``[t*TL - M, (t+1)*TL + M)`` (``TL`` latent steps per tile, ``M`` the margin)
and cropped to its own samples, so neighbouring tiles see the same latents
around their join: no seam by construction.  The output is mapped to TOD
units with the model's transform and, for a model trained on high-passed
data, the slow drifts are added back by a noise generator keyed on the
detector (stream ``"gan_noise"``).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from crab.core import rng
from crab.core.cache import BoundedCache
from crab.core.errors import InputError
from crab.models.base import TileSource
from crab.models.gan.inference import CompiledGenerator, NotCompilable, compile_generator
from crab.models.gan.latent import latent_sequence, stream_key
from crab.models.glitch_layer.wafer import WaferGrouping, WaferSignal
from crab.physics.noise import NoiseGenerator

#: Latent steps per tile of the streaming GAN (16384 samples with the default
#: 16x upsampling).  Part of what defines the bytes: recorded in the run record.
DEFAULT_TILE_LATENTS = 1024


def _schedule_for(model, cond, allow_extrapolation: bool):
    """The :class:`~crab.physics.conditions.ConditionSchedule` of a run (None for an unconditioned model)."""
    from crab.physics.conditions import ConditionSchedule, check_in_range

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
    """Tiles of a trained streaming GAN, in TOD units.

    Parameters
    ----------
    model : TrainedModel
    seed : int
    cond : ConditionSchedule, dict or sequence of float, optional
        Conditions of a conditioned model: a schedule in time
        (:class:`crab.physics.conditions.ConditionSchedule`), a ``{name: value}``
        dict or values in the order of ``model.cond_names`` (constants).
        Each tile is generated at the schedule's value at its middle sample.
    allow_extrapolation : bool
        Accept conditions outside the trained range (otherwise an error).
    tile_latents : int
        Latent steps per tile (changes the bytes; recorded in the run record).
    backend : str
        ``"auto"`` (the fast rewrite, checked against the module; the module
        if the check fails), ``"fast"`` (error if not applicable) or ``"module"``.
    grouping : WaferGrouping, optional
        Which wafer each detector key is on, for a model with a wafer layer
        (default: the training wafer's size per wafer).  The hits of wafer ``w``
        come from the stream ``("gan_wafer", w, block)``.
    """

    kind = "gan"

    def __init__(
        self, model, seed: int, *, cond=None, allow_extrapolation: bool = False, tile_latents: int = DEFAULT_TILE_LATENTS, backend: str = "auto",
        grouping: WaferGrouping | None = None,
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
        self._keys: dict[int, np.ndarray] = {}
        self._keys_lock = threading.Lock()
        self._events = BoundedCache(6)  # (key, tile) -> truth rows, see tile_events
        self.noise: NoiseGenerator | None = None
        self._noise_args = None
        if model.noise_params is not None and model.highpass_hz:
            self._noise_args = (model.noise_params, self.sampling_rate_hz, self.seed, "gan_noise", float(model.highpass_hz))
        self.backend = "module"
        self.f = int(cfg.upsample_factor)
        self.margin = int(self.gen.margin_latents)
        self.tile_latents = int(tile_latents)
        if self.tile_latents < 1:
            raise InputError(f"tile_latents must be >= 1, got {tile_latents}")
        self.tile_samples = self.tile_latents * self.f
        self._fast = None
        self.truth = None
        if self.gen.additive is not None and self.rows == 1 and not self.gen.exchangeable:
            from crab.models.gan.glitch_truth import AdditiveGlitchTruth

            self.truth = AdditiveGlitchTruth(self.gen, self._tf[1], self.sampling_rate_hz, self.tile_latents)
        layer = getattr(model, "wafer_layer", None)
        self.layer = layer if layer is not None and layer.active else None
        if self.layer is not None and self.rows != 1:
            raise InputError("a wafer layer needs a one-detector generator (not a joint-detector model)")
        self.grouping = grouping or WaferGrouping(self.layer.n_detectors if self.layer else 1)
        self.wafer: WaferSignal | None = None
        self._prepare_wafer(1)
        if backend not in ("auto", "fast", "module"):
            raise InputError(f"backend must be 'auto', 'fast' or 'module', got {backend!r}")
        if backend != "module":
            try:
                fast = compile_generator(self.gen)
                if fast.offset > self.f * self.margin or fast.end_loss > self.f * self.margin:
                    raise NotCompilable("receptive field wider than margin_latents")
                self._check_fast(fast)
                self._fast = fast
                self.backend = "fast"
            except NotCompilable as exc:
                if backend == "fast":
                    raise InputError(f"fast inference is not available for this generator: {exc}") from None

    # ---------------------------------------------------------------- helpers
    def _key(self, key: int) -> np.ndarray:
        k = self._keys.get(key)
        if k is None:
            k = stream_key(self.seed, "gan_latent", key)
            with self._keys_lock:
                self._keys[key] = k
        return k

    def _check_fast(self, fast: CompiledGenerator) -> None:
        """Compare the rewrite with the module on one random sequence (raises NotCompilable)."""
        import torch

        n = 48 + 2 * self.margin
        z = latent_sequence(stream_key(0, "gan_latent", 0), 0, n, self.z_dim)
        c = None if self.schedule is None else np.linspace(-1.0, 1.0, len(self.schedule.names))  # any values do
        with torch.inference_mode():
            ref = self.gen(torch.from_numpy(z.T.copy())[None], self._cond_tensor(c))[0]  # (channels, samples)
            out = fast.generate(torch.from_numpy(z), c)
        lo, hi = self.f * self.margin, self.f * (n - self.margin)
        a = ref[:, lo:hi].numpy()
        b = out[:, lo - fast.offset : hi - fast.offset]
        if a.shape != b.shape or not np.all(np.isfinite(b)):
            raise NotCompilable("shape mismatch in self-check")
        scale = float(np.max(np.abs(a))) + 1e-30
        if float(np.max(np.abs(a - b))) > 1e-4 * scale:
            raise NotCompilable(f"self-check mismatch ({float(np.max(np.abs(a - b))) / scale:.2e} relative)")

    def _prepare_wafer(self, n_keys: int) -> None:
        """The wafer layer's signal, its caches sized for ``n_keys`` detector keys (at most as many wafers)."""
        if self.layer is not None:
            self.wafer = WaferSignal(self.layer.population, self.sampling_rate_hz, self.seed, "gan_wafer", self.tile_samples, n_wafers=n_keys)

    def prepare(self, n_keys: int) -> None:
        self._events.size = 3 * (n_keys + 1)  # a key's tiles t - 1 .. t + 1 (glitch_signal)
        self._prepare_wafer(n_keys)
        if self._noise_args is not None:
            p, fs, seed, stream, lp = self._noise_args
            self.noise = NoiseGenerator(p, fs, seed, stream, lowpass_hz=lp, cache_blocks=max(8, 4 * n_keys * self.rows))

    def _inverse(self, y: np.ndarray, linear: bool = False) -> np.ndarray:
        """Transformed -> TOD units, in place (float32; as AmplitudeTransform.inverse).  ``linear``:
        ``y`` is already ``sinh(k y)`` (:meth:`CompiledGenerator.run`), only scaled and shifted."""
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
        from crab.models.gan.network import normalize_cond

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
        n = self.tile_latents + 2 * self.margin
        z = torch.from_numpy(latent_sequence(self._key(key), t * self.tile_latents - self.margin, n, self.z_dim))
        lo = self.f * self.margin
        with torch.inference_mode():
            linear = self._fast is not None and self._fast.additive is not None
            if self._fast is not None:
                a = lo - self._fast.offset
                y = self._fast.generate(z, c, linear)[:, a : a + self.tile_samples]
            else:
                y = self.gen(z.T.contiguous()[None], self._cond_tensor(c))[0, :, lo : lo + self.tile_samples].numpy()
        # additive glitches: sinh(k y) + pulses already (linear), x = x0 + s * that (no asinh and sinh again)
        out = self._inverse(np.ascontiguousarray(y, dtype=np.float32), linear)
        self._add_noise(out, key, t)
        if self.wafer is not None:
            out[0] += self.wafer_signal(key, t).astype(np.float32)
        return out

    def assign_wafers(self, mapping) -> None:
        self.grouping.assign(mapping)

    def wafer_of(self, key: int) -> tuple[int, int] | None:
        return None if self.layer is None else self.grouping.of(key)

    def wafer_signal(self, key: int, t: int) -> np.ndarray:
        """The wafer layer's part of tile ``t`` of detector key ``key`` (float64): its coupling times
        the signal of its wafer."""
        wafer, position = self.grouping.of(key)
        return self.layer.coupling(position) * self.wafer.signal(wafer, t)

    # ---------------------------------------------------------------- truth
    @property
    def lists_glitches(self) -> bool:
        """Whether the generator places its glitches explicitly (additive glitches) and lists them."""
        return self.truth is not None

    def tile_events(self, key: int, t: int):
        if self.truth is None:
            return None
        hit = self._events.get((key, t))
        if hit is None:  # cached: glitch_signal renders each tile with its neighbours' rows
            hit = self._events.put((key, t), self.truth.tile_events(self._key(key), t, detector=key, wafer=self.wafer_index(key)))
        return hit

    def wafer_events(self, wafer: int, t: int):
        if self.wafer is None:
            return super().wafer_events(wafer, t)
        return self.wafer.truth(wafer, t)

    def render_events(self, events, key: int, first_sample: int, n_samples: int) -> np.ndarray:
        from crab.physics.events import EVENT_KIND_DIRECT, EVENT_KIND_WAFER

        out = np.zeros(int(n_samples))
        if self.truth is not None:
            out += self.truth.render(events.select((events.detector == key) & (events.kind == EVENT_KIND_DIRECT)), first_sample, n_samples)
        w = self.wafer_index(key)
        if w >= 0:
            rows = events.select((events.kind == EVENT_KIND_WAFER) & (events.wafer == w))
            out += self.layer.coupling(self.grouping.of(key)[1]) * self.layer.population.render_truth(rows, first_sample, n_samples, self.sampling_rate_hz)
        return out

    def glitch_signal(self, key: int, t: int) -> np.ndarray | None:
        """The additive glitches of tile ``t`` rendered from their truth rows (those of tiles ``t - 1``
        to ``t + 1``: a pulse reaches less than a tile), plus the wafer layer's signal."""
        if self.truth is None and self.layer is None:
            return None
        T = self.tile_samples
        out = np.zeros(T)
        if self.truth is not None:
            from crab.physics.events import EventTable

            rows = EventTable.concatenate([self.tile_events(key, b) for b in range(max(0, t - 1), t + 2)])
            out += self.truth.render(rows, t * T, T)
        if self.wafer is not None:
            out += self.wafer_signal(key, t)
        return out

    def glitch_rates_hz(self) -> tuple[float, float]:
        return (0.0 if self.truth is None else self.truth.rate_hz()), (0.0 if self.layer is None else float(self.layer.population.rate_hz))

    def describe(self) -> dict[str, Any]:
        return {
            "method": "gan",
            "generator_arch": "streaming",
            "tile_samples": self.tile_samples,
            "backend": self.backend,
            "latents": "Philox(key of rng.generator(seed, 'gan_latent', detector), counter = latent step) + Box-Muller float32",
            "lf_noise": None if self._noise_args is None else {"stream": "gan_noise", "lowpass_hz": self._noise_args[4]},
            "cond": None if self.schedule is None else self.schedule.to_dict(),
            "tile_latents": self.tile_latents,
            "margin_latents": self.margin,
            "wafer_layer": None if self.layer is None else {"stream": "gan_wafer (wafer, block)", **self.grouping.describe(), "rate_hz": self.layer.population.rate_hz},
        }
