"""The streaming engine: TOD of any length from any tile source, in bounded memory.

Time is cut into the source's fixed **tiles** (:mod:`crab.models.base`): tile
``t`` of detector key ``k`` covers samples ``[t * tile_samples, (t + 1) *
tile_samples)`` and depends only on ``(seed, k, t)``.  A chunk, a ``start``
slice or a process therefore computes exactly the tiles it needs, and every
sample has the same bytes whatever the chunk size, the order of computation,
the number of worker threads or the split across processes (on one platform:
float32 kernels of other CPUs or library versions may round differently).

Tiles are computed by a pool of threads, each running torch (when a method
uses it) with one intra-op thread, so results do not depend on the number of
workers.  Where a run's chunks go is :mod:`crab.generation.output`'s business.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterator, Sequence

import numpy as np

from crab.core import interrupt
from crab.core import rng
from crab.core.errors import InputError
from crab.core.resources import check_memory
from crab.core.units import check_sample_span
from crab.models.base import TileSource

#: Samples per generated chunk (a multiple of every tile size used here).
DEFAULT_CHUNK_SAMPLES = 1 << 20

#: Memory of a run's bookkeeping per detector (row plan, names, run record, checksum state), bytes:
#: 0.5 KiB measured with Python 3.11 (``tests/test_bad_inputs.py`` checks that it stays below this).
PLAN_BYTES_PER_DETECTOR = 1536


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
    """Generate TOD tile by tile with any generative method.

    Parameters
    ----------
    model : GenerativeModel or TileSource
        What to generate with: a loaded model (:func:`crab.models.registry.load_generation_model`),
        whose :meth:`~crab.models.base.GenerativeModel.tile_source` gives the tiles,
        or a tile source itself.
    seed : int
        User seed; with the detector key and the position it determines every
        sample.  The only seed of a run (written to its output).
    n_workers : int, optional
        Worker threads computing tiles (default: the CPUs available).  Does
        not change the output.
    **source_options
        The method's generation options, passed to ``model.tile_source`` (the
        GAN: ``cond``, ``allow_extrapolation``, ``tile_latents``, ``backend``;
        see :class:`crab.models.gan.source.GanSource`).  A method raises
        :class:`InputError` for an option it does not take.

    Notes
    -----
    Detectors are given as a count ``n`` (keys ``0 .. n-1``) or as explicit
    non-negative integer keys (e.g. :func:`crab.core.rng.detector_key` of names);
    every random stream is keyed on them, so a detector's TOD does not depend
    on which other detectors are generated with it.
    """

    def __init__(self, model, seed: int, *, n_workers: int | None = None, **source_options: Any) -> None:
        self.seed = rng.check_seed(seed)
        if isinstance(model, TileSource):
            if source_options:
                raise InputError(f"generation options {sorted(source_options)} go to a model's tile_source, not to a tile source given directly")
            self.source = model
        elif callable(getattr(model, "tile_source", None)):
            self.source = model.tile_source(self.seed, **source_options)
        else:
            raise InputError(f"cannot generate with a {type(model).__name__}: expected a loaded model (crab.models.base.GenerativeModel) or a TileSource")
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

    def assign_wafers(self, mapping) -> None:
        """Put detector keys on wafers, ``{key: (wafer, position)}`` (:meth:`~crab.models.base.TileSource.assign_wafers`);
        e.g. :meth:`crab.models.glitch_layer.wafer.WaferGrouping.by_name` of detector and wafer names."""
        self.source.assign_wafers(mapping)

    def detector_names(self, detectors: int | Sequence[int]) -> list[str]:
        """Default names of ``detectors``: ``W{wafer}_D{position}`` for a method that draws hits per
        wafer (:meth:`~crab.models.base.TileSource.wafer_of`), else ``W00_D000, ...`` (one wafer),
        or for a joint (wafer) model ``W{key}_D{row}`` (key = wafer, row = detector of the wafer)."""
        if self.source.rows == 1:
            wafers = [self.source.wafer_of(k) for k, _ in self._rows(detectors)]
            if all(w is not None for w in wafers):
                return [f"W{w:02d}_D{p:03d}" for w, p in wafers]
            from crab.io.tod import default_detector_names

            return default_detector_names(len(self._rows(detectors)))
        return [f"W{k:02d}_D{r:03d}" for k, r in self._rows(detectors)]

    def plan_memory_bytes(self, n_detectors: int, n_samples: int, chunk_samples: int = DEFAULT_CHUNK_SAMPLES) -> int:
        """Memory a run of ``n_detectors`` x ``n_samples`` in chunks of ``chunk_samples`` needs (bytes):
        two chunk buffers, the tiles in flight and the current ones (all float32) and
        :data:`PLAN_BYTES_PER_DETECTOR` per detector."""
        n_det, chunk = int(n_detectors), max(1, min(int(chunk_samples), int(n_samples)))
        R = int(self.source.rows)
        n_keys = -(-n_det // R)
        tiles = (max(4, 3 * self.n_workers) + 2 * n_keys) * R * self.tile_samples * 4
        return 2 * 4 * n_det * chunk + tiles + PLAN_BYTES_PER_DETECTOR * n_det

    def check_memory(self, n_detectors: int, n_samples: int, chunk_samples: int = DEFAULT_CHUNK_SAMPLES) -> None:
        """:class:`InputError` if :meth:`plan_memory_bytes` exceeds the memory available (before anything is made)."""
        chunk = max(1, min(int(chunk_samples), int(n_samples)))
        check_memory(
            self.plan_memory_bytes(n_detectors, n_samples, chunk_samples),
            what=f"generating {int(n_detectors)} detectors in chunks of {chunk} samples",
            remedy="generate fewer detectors per run (several runs, or MPI ranks) or lower --chunk-samples",
        )

    @staticmethod
    def count(detectors: int | Sequence[int]) -> int:
        """Number of detectors in ``detectors`` (a count or a sequence of keys), without building the row plan."""
        return int(detectors) if isinstance(detectors, (int, np.integer)) else len(detectors)

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
        chunks whatever ``n_samples`` (:meth:`plan_memory_bytes`, checked here,
        before anything is computed).  The arrays are fresh (safe to keep).
        """
        start_sample, n_samples, chunk_samples = int(start_sample), int(n_samples), int(chunk_samples)
        if start_sample < 0 or n_samples < 0:
            raise InputError(f"start_sample and n_samples must be >= 0, got {start_sample}, {n_samples}")
        if chunk_samples < 1:
            raise InputError(f"chunk_samples must be >= 1, got {chunk_samples}")
        check_sample_span(start_sample + n_samples, self.sampling_rate_hz)
        if n_samples:
            self.check_memory(self.count(detectors), n_samples, chunk_samples)
        rows = self._rows(detectors)
        keys = list(dict.fromkeys(k for k, _ in rows))
        src = self.source
        src.check_span(start_sample, start_sample + n_samples)
        src.prepare(len(keys))
        return self._chunks(rows, keys, start_sample, n_samples, chunk_samples)

    def _chunks(self, rows: list[tuple[int, int]], keys: list[int], start_sample: int, n_samples: int, chunk_samples: int) -> Iterator[tuple[int, np.ndarray]]:
        """The loop of :meth:`iter_chunks`, once its arguments are checked."""
        src = self.source
        T = self.tile_samples
        stop = start_sample + n_samples
        if n_samples == 0:
            return
        t_first, t_last = start_sample // T, (stop - 1) // T
        row_of: dict[int, list[tuple[int, int]]] = {k: [] for k in keys}  # one pass: linear in the detectors
        for i, (k, r) in enumerate(rows):
            row_of[k].append((i, r))

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
