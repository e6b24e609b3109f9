"""The truth of generated TOD: where every glitch the generator placed is, how large, of which kind.

A tile source lists the glitches it places (:meth:`crab.models.base.TileSource.tile_events`:
a detector's own hits whose hit sample lies in a tile; :meth:`~crab.models.base.TileSource.wafer_events`:
the hits of a wafer).  :class:`RunTruth` turns them into the ``/events`` table of a run,
chunk by chunk, with the Monte Carlo's columns and meaning
(:class:`crab.physics.events.EventTable`): ``detector`` is the row of the
detector in the run (``-1`` for a wafer hit, listed once per wafer), ``time_s``
the hit time from sample 0 of the stream (s), ``amplitude`` the peak height in
the TOD's units.

A chunk lists the hits whose hit sample lies in it, sorted by (time,
kind, detector, wafer, family): the table of a run is the same, row for row,
for any chunking, worker count, ``start`` offset of a longer run or MPI
layout, since every hit belongs to exactly one tile and every tile's hits
depend only on (seed, key or wafer, tile).  A slice ``[start, stop)`` lists
the hits inside it; the tails of earlier hits (and, for a pulse that starts
before its hit sample, the fronts of later ones) reach into it unlisted.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from crab.io.tod import append_events, set_events_note
from crab.physics.events import EventTable


class RunTruth:
    """The truth table of one generation run, chunk by chunk.

    Parameters
    ----------
    generator : crab.generation.engine.TodGenerator
    detectors : int or sequence of int
        The run's detectors (a count or keys), as given to the generator.

    Attributes
    ----------
    recorded : bool
        Whether the method lists its glitches (a joint-detector GAN does not; a
        GAN without additive glitches lists only its wafer hits: ``complete`` is
        then False).
    complete : bool
        Whether every glitch placed is listed.
    columns : list of str
        The columns of the table.
    """

    def __init__(self, generator, detectors: int | Sequence[int]) -> None:
        self.source = generator.source
        self.fs = float(generator.sampling_rate_hz)
        rows = generator._rows(detectors)
        self.keys = [k for k, _ in rows]
        self.single = self.source.rows == 1
        wafers = [self.source.wafer_of(k) for k in self.keys] if self.single else []
        self.wafers = list(dict.fromkeys(w[0] for w in wafers if w is not None))
        self.complete = self.single and bool(self.source.lists_glitches)
        self.recorded = self.complete or bool(self.wafers)
        self.columns = ["time_s", "detector", "charge_z", "energy_kev", "kind", "amplitude", "sample", "wafer", "family", "tau_s"]

    def describe(self) -> dict:
        """What the table holds (for the run record)."""
        if not self.recorded:
            return {"recorded": False, "why": "the method does not list its glitches (a joint-detector model)"}
        note = "every glitch placed" if self.complete else "the wafer hits only (the network's own glitches are not listed)"
        return {"recorded": True, "complete": self.complete, "lists": note, "detector": "row in the file; -1: a wafer hit (see wafer)"}

    def pieces(self, first_sample: int, n_samples: int) -> Iterator[EventTable]:
        """The hits whose hit sample lies in ``[first_sample, first_sample + n_samples)``, sorted, one
        tile at a time (memory: one tile's hits of every detector, whatever the span)."""
        if not self.recorded or n_samples <= 0:
            return
        T = int(self.source.tile_samples)
        a, b = int(first_sample), int(first_sample) + int(n_samples)
        for t in range(a // T, (b - 1) // T + 1):
            lo, hi = max(a, t * T), min(b, (t + 1) * T)
            parts = []
            if self.complete:
                for row, key in enumerate(self.keys):
                    ev = self.source.tile_events(key, t)
                    if len(ev):
                        ev = ev.select((ev.sample >= lo) & (ev.sample < hi))
                        ev.detector[:] = row
                        parts.append(ev)
            for w in self.wafers:
                ev = self.source.wafer_events(w, t)
                if len(ev):
                    parts.append(ev.select((ev.sample >= lo) & (ev.sample < hi)))
            table = EventTable.concatenate(parts)
            # tiles are consecutive spans of samples, so sorting within each keeps the whole in time order
            yield table.select(np.lexsort((table.family, table.wafer, table.detector, table.kind, table.time_s)))

    def chunk(self, first_sample: int, n_samples: int) -> EventTable:
        """The hits whose hit sample lies in ``[first_sample, first_sample + n_samples)``, sorted, as one table."""
        return EventTable.concatenate(list(self.pieces(first_sample, n_samples)))

    def start(self, f) -> None:
        """Create the (empty) ``/events`` table of this run in the open HDF5 file ``f``, with its note."""
        append_events(f, EventTable(), self.columns)
        set_events_note(f, self.describe())

    def append(self, f, first_sample: int, n_samples: int) -> None:
        """Append the rows of samples ``[first_sample, first_sample + n_samples)`` to the table :meth:`start` made."""
        for table in self.pieces(first_sample, n_samples):
            append_events(f, table, self.columns)

    def expected_rows(self, n_samples: int) -> int:
        """Rows a run of ``n_samples`` is expected to list (for the disk-space check)."""
        det_hz, wafer_hz = self.source.glitch_rates_hz()
        n_s = int(n_samples) / self.fs
        return int((det_hz * len(self.keys) * self.complete + wafer_hz * len(self.wafers)) * n_s * 1.2) + 100


def write_truth(f, truth: RunTruth, start_sample: int, n_samples: int) -> None:
    """Write the whole ``/events`` table of a run into the open HDF5 file ``f``, tile by tile (the MPI
    file's rank 0 does this once the parts are written: the rows do not depend on the layout)."""
    truth.start(f)
    truth.append(f, start_sample, n_samples)


def lists_glitches(generator) -> bool:
    """Whether ``generator`` (a :class:`crab.generation.TodGenerator`; any other generator lists nothing)
    lists every glitch it places on a detector, so that :func:`glitch_signal` can render them."""
    src = getattr(generator, "source", None)
    return src is not None and getattr(src, "rows", 1) == 1 and bool(getattr(src, "lists_glitches", False))


def glitch_signal(generator, detector_keys: Sequence[int], start_sample: int, n_samples: int) -> np.ndarray | None:
    """The glitch part of the generated TOD, float64 ``(len(detector_keys), n_samples)``: every listed
    glitch's pulse (:meth:`crab.models.base.TileSource.glitch_signal`, rendered from the truth rows),
    the wafer's included, on samples ``[start_sample, start_sample + n_samples)``; None when the
    method does not list its glitches.  What a flag of "a glitch above x" is made from
    (:func:`glitch_flags`)."""
    if not lists_glitches(generator):
        return None
    src = generator.source
    T = int(src.tile_samples)
    a, b = int(start_sample), int(start_sample) + int(n_samples)
    out = np.zeros((len(detector_keys), max(0, b - a)))
    if b <= a:
        return out
    for i, key in enumerate(detector_keys):
        for t in range(a // T, (b - 1) // T + 1):
            lo, hi = max(a, t * T), min(b, (t + 1) * T)
            out[i, lo - a : hi - a] = src.glitch_signal(int(key), t)[lo - t * T : hi - t * T]
    return out


def glitch_flags(generator, detector_keys: Sequence[int], start_sample: int, n_samples: int, threshold: float) -> np.ndarray | None:
    """Boolean ``(len(detector_keys), n_samples)``: where the generated glitch signal (:func:`glitch_signal`,
    TOD units) exceeds ``threshold`` (TOD units, > 0; e.g. a fraction of the noise RMS) in magnitude;
    None when the method does not list its glitches."""
    if not (np.isfinite(threshold) and threshold > 0):
        from crab.core.errors import InputError

        raise InputError(f"the flag threshold must be a positive number in TOD units, got {threshold!r}")
    sig = glitch_signal(generator, detector_keys, start_sample, n_samples)
    return None if sig is None else np.abs(sig) > float(threshold)
