"""The template baseline as a tile source of the streaming engine."""

from __future__ import annotations

from typing import Any

import numpy as np

from crab.core import rng
from crab.core.cache import BoundedCache
from crab.core.errors import InputError
from crab.models.base import TileSource
from crab.models.glitch_layer.shapes import lookback_samples
from crab.models.glitch_layer.wafer import WaferGrouping, WaferSignal
from crab.physics.events import EVENT_KIND_DIRECT, EVENT_KIND_WAFER
from crab.physics.noise import NoiseGenerator

#: Key of the events of wafer 0 in the "template_events" stream (wafer ``w``: ``WAFER_KEY + w``):
#: above every detector key (indices and ``rng.detector_key`` values are below 2**63).
WAFER_KEY = 1 << 63
#: Samples per generation block (tile).
DEFAULT_BLOCK_SAMPLES = 1 << 16


class TemplateSource(TileSource):
    """Tiles (blocks) of template TOD for :class:`crab.generation.engine.TodGenerator`.

    Parameters
    ----------
    model : crab.models.template.model.TemplateModel
    seed : int
    block_samples : int
        Samples per block (tile); part of what defines the bytes.
    grouping : WaferGrouping, optional
        Which wafer each detector key is on (default: all the fitted wafer's size per wafer).
    """

    kind = "template"
    rows = 1

    def __init__(self, model, seed: int, *, block_samples: int = DEFAULT_BLOCK_SAMPLES, grouping: WaferGrouping | None = None) -> None:
        self.model = model
        self.seed = rng.check_seed(seed)
        self.sampling_rate_hz = float(model.sampling_rate_hz)
        self.units = model.units
        self.tile_samples = int(block_samples)
        if self.tile_samples < 16:
            raise InputError(f"block_samples must be >= 16, got {block_samples}")
        fs = self.sampling_rate_hz
        # blocks of direct hits whose glitches reach into a block (the wafer signal keeps its own)
        self.n_back = int(np.ceil(lookback_samples(model.direct.max_tau_s(), fs, model.direct.delay_s) / self.tile_samples))
        self.noise: NoiseGenerator | None = None
        self.grouping = grouping or WaferGrouping(int(model.fit_info.get("n_detectors", 1)))  # one wafer of the fitted size
        self.prepare(1)

    def prepare(self, n_keys: int) -> None:
        self._events_cache = BoundedCache(4 * (n_keys + 1) * (self.n_back + 1))  # (key, block) -> direct hits
        self.wafer = WaferSignal(self.model.wafer, self.sampling_rate_hz, self.seed, "template_events", self.tile_samples, key_offset=WAFER_KEY, n_wafers=n_keys)
        self.noise = NoiseGenerator(self.model.noise_params, self.sampling_rate_hz, self.seed, "template_noise", cache_blocks=max(8, 3 * n_keys + 2))

    def events(self, key: int, block: int) -> dict[str, np.ndarray]:
        """Events whose hit time lies in ``block``: ``{"t": sample times (float), "c2": peak height
        (direct) or energy in keV (linear wafer), "tau_s", "wafer" (bool)}``."""
        direct = self._events(key, block)
        if self.model.wafer.rate_hz <= 0:
            return direct
        t, c2, tau = self.wafer.events(self.grouping.of(key)[0], block)
        wafer = {"t": t, "c2": c2, "tau_s": tau, "wafer": np.ones(t.size, bool)}
        return {k: np.concatenate([direct[k], wafer[k]]) for k in direct}

    def _events(self, key: int, block: int) -> dict[str, np.ndarray]:
        hit = self._events_cache.get((key, block))
        if hit is None:
            hit = self._events_cache.put((key, block), self._draw_events(key, block))
        return hit

    def _draw_events(self, key: int, block: int) -> dict[str, np.ndarray]:
        B = self.tile_samples
        fs = self.sampling_rate_hz
        pop = self.model.direct
        if pop.rate_hz <= 0:
            z = np.zeros(0)
            return {"t": z, "c2": z, "tau_s": z, "wafer": np.zeros(0, bool)}
        g = rng.generator(self.seed, "template_events", key, block)
        n = int(g.poisson(pop.rate_hz * B / fs))
        t = block * B + g.random(n) * B
        c2, tau = pop.sample(g.random(n), g.random(n))
        return {"t": t, "c2": c2, "tau_s": tau, "wafer": np.zeros(n, bool)}

    def _gather(self, key: int, t: int) -> dict[str, np.ndarray]:
        evs = [self._events(key, b) for b in range(max(0, t - self.n_back), t + 1)]
        return {k: np.concatenate([e[k] for e in evs]) for k in ("t", "c2", "tau_s")}

    def assign_wafers(self, mapping) -> None:
        self.grouping.assign(mapping)

    def wafer_of(self, key: int) -> tuple[int, int] | None:
        return self.grouping.of(key) if self.model.wafer.rate_hz > 0 else None

    def wafer_signal(self, key: int, t: int) -> np.ndarray:
        """The wafer part of tile ``t`` of detector key ``key`` (float64, tile_samples), common to its wafer."""
        return self.wafer.signal(self.grouping.of(key)[0], t)

    def direct_signal(self, key: int, t: int) -> np.ndarray:
        """The direct-hit part of tile ``t`` of detector ``key`` (float64, tile_samples)."""
        B = self.tile_samples
        if self.model.direct.rate_hz <= 0:
            return np.zeros(B)
        ev = self._gather(key, t)
        return self.model.direct.render(t * B, B, ev["t"], ev["c2"], ev["tau_s"], self.sampling_rate_hz)

    def glitches(self, key: int, t: int) -> np.ndarray:
        """The glitch part of tile ``t`` (float64, tile_samples)."""
        return self.direct_signal(key, t) + self.wafer_signal(key, t)

    # ------------------------------------------------------------ truth
    lists_glitches = True

    def tile_events(self, key: int, t: int):
        ev = self._events(key, t)
        return self.model.direct.truth(ev["t"], ev["c2"], ev["tau_s"], self.sampling_rate_hz, detector=key, wafer=self.wafer_index(key))

    def wafer_events(self, wafer: int, t: int):
        if self.model.wafer.rate_hz <= 0:
            return super().wafer_events(wafer, t)
        return self.wafer.truth(wafer, t)

    def render_events(self, events, key: int, first_sample: int, n_samples: int) -> np.ndarray:
        fs = self.sampling_rate_hz
        own = events.select((events.detector == key) & (events.kind == EVENT_KIND_DIRECT))
        out = self.model.direct.render_truth(own, first_sample, n_samples, fs)
        w = self.wafer_index(key)
        if w >= 0:
            out += self.model.wafer.render_truth(events.select((events.kind == EVENT_KIND_WAFER) & (events.wafer == w)), first_sample, n_samples, fs)
        return out

    def glitch_signal(self, key: int, t: int) -> np.ndarray:
        return self.glitches(key, t)

    def glitch_rates_hz(self) -> tuple[float, float]:
        return float(self.model.direct.rate_hz), float(self.model.wafer.rate_hz)

    def tile(self, key: int, t: int) -> np.ndarray:
        B = self.tile_samples
        out = self.noise.generate(key, t * B, B)
        out += self.glitches(key, t).astype(np.float32)
        return out[None]

    def describe(self) -> dict[str, Any]:
        return {
            "method": "template",
            "tile_samples": self.tile_samples,
            "template": None if self.model.path is None else str(self.model.path),
            "direct_rate_hz": self.model.direct.rate_hz,
            "wafer_rate_hz": self.model.wafer.rate_hz,
            "wafer_model": "linear response" if self.model.wafer.linear else "independent templates",
            "wafers": self.grouping.describe(),
            "streams": {"events": "template_events (detector, block); wafer w: (WAFER_KEY + w, block)", "noise": "template_noise"},
        }
