"""The wafer layer: hits on a wafer, drawn once per wafer and seen by every detector on it.

A wafer hit of deposited energy ``E`` at time ``t_i`` adds ``c_d E h(t -
t_i)`` to detector ``d`` of the wafer, with the fitted linear response ``h``
(:class:`~crab.models.glitch_layer.population.GlitchPopulation` in its linear
form) and the detector's coupling ``c_d``.  Their Poisson sum is the wafer's
sub-threshold pile-up (about 15 hits per second in the Monte Carlo) plus its
occasional visible glitch, common to every detector of the wafer.

- :class:`WaferLayer` is what is fitted (:func:`crab.models.glitch_layer.wafer_fit.fit_wafer_layer`)
  and stored with a model;
- :class:`WaferGrouping` says which wafer (and which position on it) each
  generated detector key belongs to;
- :class:`WaferSignal` draws the hits of a wafer block by block and renders
  the common signal of a tile, cached for the detectors of the wafer.

Randomness: the hits of block ``b`` of wafer ``w`` come from
``rng.generator(seed, stream, key_offset + w, b)`` alone, so a wafer's signal
does not depend on which of its detectors are generated, in which order or
on which process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from crab.core import rng
from crab.core.cache import BoundedCache
from crab.core.errors import InputError
from crab.models.glitch_layer.population import GlitchPopulation
from crab.models.glitch_layer.shapes import lookback_samples


@dataclass
class WaferLayer:
    """The fitted wafer layer of a model.

    Attributes
    ----------
    population : GlitchPopulation
        Kind ``"wafer"``, linear response: rate per wafer (Hz), energy quantiles (keV),
        response time constants (s) and gains (TOD units per keV), delay (s).
    couplings : list of float
        Gain of each detector position of the fitted wafer on the common signal (about 1).
    source : str
        How it was fitted: ``"truth"`` (regression on a truth table).
    fit_info : dict
        Fit quality (residual RMS, common-mode RMS...).
    """

    population: GlitchPopulation
    couplings: list[float] = field(default_factory=lambda: [1.0])
    source: str = "truth"
    fit_info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.population.kind != "wafer" or (self.population.rate_hz > 0 and not self.population.linear):
            raise InputError("the wafer layer needs a linear 'wafer' population")
        self.couplings = [float(c) for c in self.couplings]
        if not self.couplings or not all(np.isfinite(c) for c in self.couplings):
            raise InputError(f"wafer couplings must be finite numbers, got {self.couplings}")

    @property
    def n_detectors(self) -> int:
        """Detectors of the fitted wafer (the default wafer size at generation)."""
        return len(self.couplings)

    @property
    def active(self) -> bool:
        """Whether the layer draws any hit."""
        return self.population.rate_hz > 0

    def coupling(self, position: int) -> float:
        """Coupling of the detector at ``position`` on its wafer (positions beyond the fitted
        wafer reuse the fitted couplings cyclically)."""
        return self.couplings[int(position) % len(self.couplings)]

    def to_dict(self) -> dict[str, Any]:
        info = {k: v for k, v in self.fit_info.items() if isinstance(v, (int, float, str, list))}
        return {"population": self.population.to_dict(), "couplings": list(self.couplings), "source": self.source, "fit_info": info}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "WaferLayer":
        return cls(GlitchPopulation(**d["population"]), couplings=list(d["couplings"]), source=str(d.get("source", "truth")), fit_info=dict(d.get("fit_info", {})))


class WaferGrouping:
    """Which wafer, and which position on it, each detector key belongs to.

    Parameters
    ----------
    wafer_size : int
        Detectors per wafer for keys without an explicit entry: key ``k`` is
        position ``k % wafer_size`` of wafer ``k // wafer_size``.
    mapping : mapping of int to (int, int), optional
        Explicit ``{key: (wafer, position)}`` (e.g. from detector and wafer names).
    """

    def __init__(self, wafer_size: int, mapping: Mapping[int, tuple[int, int]] | None = None) -> None:
        if isinstance(wafer_size, bool) or not isinstance(wafer_size, (int, np.integer)) or wafer_size < 1:
            raise InputError(f"wafer_size must be a positive number of detectors, got {wafer_size!r}")
        self.wafer_size = int(wafer_size)
        self.mapping = {int(k): (int(w), int(p)) for k, (w, p) in (mapping or {}).items()}
        if any(w < 0 or p < 0 for w, p in self.mapping.values()):
            raise InputError("wafer indices and positions must be non-negative")

    def assign(self, mapping: Mapping[int, tuple[int, int]]) -> None:
        """Add explicit ``{key: (wafer, position)}`` entries (before generating those keys)."""
        for k, (w, p) in mapping.items():
            if int(w) < 0 or int(p) < 0:
                raise InputError("wafer indices and positions must be non-negative")
            self.mapping[int(k)] = (int(w), int(p))

    def of(self, key: int) -> tuple[int, int]:
        """``(wafer, position)`` of detector key ``key``."""
        hit = self.mapping.get(int(key))
        return hit if hit is not None else (int(key) // self.wafer_size, int(key) % self.wafer_size)

    @staticmethod
    def by_name(keys: list[int], wafer_names: list[str]) -> dict[int, tuple[int, int]]:
        """Explicit entries for detector ``keys`` on the wafers named ``wafer_names`` (same order): the
        wafer index is :func:`crab.core.rng.detector_key` of ``"wafer:" + name`` and the position the
        detector's own key, so that neither depends on which other detectors are generated."""
        if len(keys) != len(wafer_names):
            raise InputError(f"got {len(keys)} detector keys but {len(wafer_names)} wafer names")
        return {int(k): (rng.detector_key(f"wafer:{w}"), int(k)) for k, w in zip(keys, wafer_names)}

    def describe(self) -> dict[str, Any]:
        return {"wafer_size": self.wafer_size, "explicit": len(self.mapping)}


class WaferSignal:
    """The common wafer signal of each (wafer, tile), drawn and rendered once and cached.

    Parameters
    ----------
    population : GlitchPopulation
        The wafer population: a linear response driven by energies (fitted layers), or
        independent templates (older template models).
    sampling_rate_hz : float
    seed : int
    stream : str
        Name of the random stream of the wafer hits.
    tile_samples : int
        Samples per tile (= per event block).
    key_offset : int
        Added to the wafer index to make the stream key.
    n_wafers : int
        Wafers generated together (sizes the cache).
    """

    def __init__(self, population: GlitchPopulation, sampling_rate_hz: float, seed: int, stream: str, tile_samples: int, *, key_offset: int = 0, n_wafers: int = 1) -> None:
        self.population = population
        self.fs = float(sampling_rate_hz)
        self.seed = rng.check_seed(seed)
        self.stream = str(stream)
        self.tile_samples = int(tile_samples)
        self.key_offset = int(key_offset)
        self.n_back = int(np.ceil(lookback_samples(population.max_tau_s(), self.fs, population.delay_s) / self.tile_samples)) if population.rate_hz > 0 else 0
        self._events = BoundedCache(4 * (n_wafers + 1) * (self.n_back + 1))  # (wafer, block) -> hits
        self._signal = BoundedCache(4 + 2 * n_wafers)  # (wafer, tile) -> rendered signal

    def events(self, wafer: int, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hits of block ``block`` of wafer ``wafer``: (times in samples, energies in keV or, for a
        population of independent templates, peak heights, decay times in s or NaN)."""
        hit = self._events.get((wafer, block))
        if hit is None:
            B, pop = self.tile_samples, self.population
            g = rng.generator(self.seed, self.stream, self.key_offset + wafer, block)
            n = int(g.poisson(pop.rate_hz * B / self.fs))
            t = block * B + g.random(n) * B
            if pop.linear:
                hit = (t, pop.sample_energy(g.random(n)), np.full(n, np.nan))
            else:
                hit = (t, *pop.sample(g.random(n), g.random(n)))
            self._events.put((wafer, block), hit)
        return hit

    def truth(self, wafer: int, block: int):
        """Truth rows of the hits of block ``block`` of wafer ``wafer`` (``detector = -1``; see
        :meth:`GlitchPopulation.truth`)."""
        return self.population.truth(*self.events(wafer, block), self.fs, detector=-1, wafer=wafer)

    def signal(self, wafer: int, t: int) -> np.ndarray:
        """The common signal of tile ``t`` of wafer ``wafer`` (float64, tile_samples; zeros without hits)."""
        B = self.tile_samples
        if self.population.rate_hz <= 0:
            return np.zeros(B)
        hit = self._signal.get((wafer, t))
        if hit is None:
            evs = [self.events(wafer, b) for b in range(max(0, t - self.n_back), t + 1)]
            ts, c2, tau = (np.concatenate([e[i] for e in evs]) for i in range(3))
            hit = self.population.render(t * B, B, ts, c2, tau, self.fs)
            self._signal.put((wafer, t), hit)
        return hit


def grouping_for(default_size: int, wafer_size: int | None = None, wafers: Mapping[int, tuple[int, int]] | WaferGrouping | None = None) -> WaferGrouping:
    """The grouping of a generation run from its options: ``wafers`` (a grouping, or an explicit
    ``{key: (wafer, position)}``), else ``wafer_size`` detectors per wafer, else ``default_size``
    (the detectors of the wafer the model was fitted on)."""
    if isinstance(wafers, WaferGrouping):
        return wafers
    return WaferGrouping(default_size if wafer_size is None else wafer_size, wafers)
