"""The contract every generative method implements.

A generative method is one folder under :mod:`crab.models` (``gan``,
``template``) and one line of :data:`crab.models.registry.METHODS`.  It provides

fit / train
    A function that makes a model from Monte Carlo TOD (``crab train`` for the
    GAN: :func:`crab.models.gan.training.train`; the template:
    :func:`crab.models.template.fitting.fit_template_file`).
save
    A function that writes the model into a model directory or file, with a
    ``format`` / ``format_version`` record (:func:`crab.core.formats.format_record`).
load
    ``load(path, sampling_rate_hz=None) -> GenerativeModel``, named in the
    registry; it checks the format (:func:`crab.core.formats.check_format`) and
    the sampling rate and raises :class:`crab.core.errors.ModelCompatibilityError`
    with a one-line message saying how to get a usable model.
a tile source
    The loaded model's :meth:`GenerativeModel.tile_source` returns a
    :class:`TileSource`: fixed **tiles** of TOD, where tile ``t`` of detector
    key ``k`` covers samples ``[t * tile_samples, (t + 1) * tile_samples)``
    and depends only on ``(seed, k, t)``, so the engine (:mod:`crab.generation`)
    can compute any span, in any order, on any number of threads or processes.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

from crab.core.errors import InputError


class TileSource:
    """What :class:`crab.generation.TodGenerator` needs from a method: fixed tiles of TOD.

    Attributes
    ----------
    kind : str
        The method's name in :data:`crab.models.registry.METHODS` (``"gan"``, ``"template"``).
    sampling_rate_hz : float
        Sampling rate of the tiles (Hz).
    units : str
        TOD units of the tiles (e.g. ``"pW"``).
    tile_samples : int
        Samples per tile.
    rows : int
        Detectors produced per key (the model's output channels).
    lists_glitches : bool
        Whether :meth:`tile_events` lists every glitch the source places on a detector.
    """

    kind = "unknown"
    sampling_rate_hz: float
    units: str = "pW"
    tile_samples: int
    rows: int = 1
    lists_glitches = False

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

    def tile_events(self, key: int, t: int):
        """The glitches this source placed on detector key ``key`` whose hit sample lies in tile ``t``
        (its own ones; those of its wafer are :meth:`wafer_events`), as a
        :class:`crab.physics.events.EventTable` with ``detector = key``, ``sample``, ``amplitude``
        (TOD units), ``family`` and, where the shape needs it, ``tau_s``; or None when the method
        does not know where its glitches are (then :meth:`glitch_signal` is None too)."""
        return None

    def wafer_events(self, wafer: int, t: int):
        """The hits on wafer ``wafer`` whose hit sample lies in tile ``t`` (``detector = -1``, ``wafer``,
        ``energy_kev`` and ``amplitude`` for a detector of coupling 1); an empty table for a method
        without wafers."""
        from crab.physics.events import EventTable

        return EventTable()

    def render_events(self, events, key: int, first_sample: int, n_samples: int) -> np.ndarray:
        """The glitch signal (float64, ``n_samples``) on samples ``[first_sample, first_sample + n_samples)``
        of detector key ``key`` made by the rows ``events`` (its own rows with ``detector = key``, and
        its wafer's rows, times its coupling): the truth table's pulses summed.  Give every row whose
        pulse reaches the slice."""
        raise NotImplementedError(f"the {self.kind} method does not render its glitches")

    def glitch_signal(self, key: int, t: int) -> np.ndarray | None:
        """The glitch part of tile ``t`` of detector key ``key`` (float64, ``tile_samples``), rendered from
        :meth:`tile_events` and :meth:`wafer_events` of the tiles whose pulses reach it; None when the
        method does not record its glitches."""
        return None

    def glitch_rates_hz(self) -> tuple[float, float]:
        """Expected glitches listed per second: ``(per detector, per wafer)`` (sizes the truth table)."""
        return 0.0, 0.0

    def assign_wafers(self, mapping) -> None:
        """Put detector keys on wafers: ``{key: (wafer, position)}`` (a no-op for a method without wafers)."""

    def wafer_index(self, key: int) -> int:
        """The wafer of detector key ``key`` (:meth:`wafer_of`), -1 for a method without wafers (a truth row's ``wafer``)."""
        w = self.wafer_of(key)
        return -1 if w is None else w[0]

    def wafer_of(self, key: int) -> tuple[int, int] | None:
        """``(wafer, position)`` of detector key ``key`` when the method draws hits per wafer
        (:class:`crab.models.glitch_layer.wafer.WaferGrouping`), else None."""
        return None


@runtime_checkable
class GenerativeModel(Protocol):
    """A loaded model of any generative method.

    Attributes
    ----------
    kind : str
        The method's name in :data:`crab.models.registry.METHODS`.
    sampling_rate_hz : float
        Sampling rate the model was made for (Hz).
    units : str
        TOD units of what it generates.
    path : path-like or None
        Where it was loaded from (None if never saved).
    """

    kind: str
    sampling_rate_hz: float
    units: str
    path: os.PathLike | str | None

    def tile_source(self, seed: int, **options: Any) -> TileSource:
        """The tiles of TOD for ``seed``.

        ``options`` are the method's generation options (the GAN: ``cond``,
        ``allow_extrapolation``, ``tile_latents``, ``backend``).  An option
        given as ``None`` (or ``False``, a flag left off) counts as not given; a method raises
        :class:`InputError` for any other option it does not take.
        """
        ...


def reject_options(kind: str, options: Mapping[str, Any], hints: Mapping[str, str] | None = None) -> None:
    """Raise :class:`InputError` for the ``options`` (other than None or False) that the method ``kind`` does not take.

    ``hints`` maps an option to the message to give instead of the generic one.
    """
    given = [k for k, v in options.items() if v is not None and v is not False]
    for k in given:
        if hints and k in hints:
            raise InputError(hints[k])
    if given:
        raise InputError(f"the {kind} method takes no generation option {', '.join(sorted(given))}")
