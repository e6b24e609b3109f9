"""Generation split over MPI ranks into one file: the MPI file sink of :mod:`crab.generation.output`."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np

from crab.core.errors import InputError
from crab.generation.mpi.files import CHECKSUM_ATTR, write_distributed
from crab.generation.mpi.launch import local_size, world
from crab.generation.sinks import Sink
from crab.generation.stats import GenerationStats, peak_rss_mb
from crab.io import tod as tod_io


def generate_distributed(
    gen: Any,
    path: str | os.PathLike,
    meta: tod_io.TodMetadata,
    detectors: int | Sequence[int],
    start_sample: int,
    n_samples: int,
    *,
    comm: Any | None = None,
    chunk_samples: int = 1 << 18,
    overwrite: bool = False,
    progress: bool | None = None,
    consolidate: bool = False,
    litebird: dict | None = None,
    truth: bool = False,
) -> Any:
    """Generate with a :class:`crab.generation.engine.TodGenerator` into ``path``, split over ``comm``.

    The MPI branch of :func:`crab.generation.output.generate_to_file`: same file
    (``/tod`` bytes, attributes and ``checksum_sha256``) as a single-process
    run, assembled from per-rank parts (see the module docstring).

    Parameters
    ----------
    gen : TodGenerator
        The generator (its ``n_workers`` is lowered to the cores per rank when
        several ranks share a node; that never changes the output).
    path, meta
        Output file and its metadata (all detectors; ``meta.start_time_s`` is
        the time of ``start_sample``).
    detectors : int or sequence of int
        What ``TodGenerator`` takes: a count (keys ``0..n-1``) or the keys.
    start_sample, n_samples : int
        Absolute first sample and number of samples.
    comm : mpi4py communicator, optional
        Default :func:`world` (serial when not launched by MPI).
    truth : bool
        Add the ``/events`` table of the generated glitches (:mod:`crab.generation.truth`): rank 0
        lists them for the whole run once the parts are written (cheap beside the TOD: no network
        runs), so the rows do not depend on the number of ranks.

    Returns
    -------
    crab.generation.stats.GenerationStats
        On every rank; ``wall_s`` from the first rank's start to the last
        rank's end, ``samples_per_s`` of the whole job, ``peak_rss_mb`` the
        largest over ranks.
    """
    comm = world() if comm is None else comm
    keys = list(range(int(detectors))) if isinstance(detectors, (int, np.integer)) else [int(d) for d in detectors]
    if len(keys) != meta.n_detectors:
        raise InputError(f"{len(keys)} detector keys for {meta.n_detectors} detector names")
    start_sample = int(start_sample)
    if comm is not None and comm.Get_size() > 1:
        try:
            cap = max(1, len(os.sched_getaffinity(0)) // local_size(comm))
        except AttributeError:  # pragma: no cover
            cap = max(1, (os.cpu_count() or 1) // local_size(comm))
        if getattr(gen, "n_workers", 1) > cap:
            gen.n_workers = cap

    def tile_chunks(rows: np.ndarray, s: int, n: int, c: int) -> Iterator[tuple[int, np.ndarray]]:
        for c0, chunk in gen.iter_chunks([keys[r] for r in rows], start_sample + s, n, c):
            yield c0 - start_sample, chunk

    finish_file = None
    if truth:
        from crab.generation.truth import RunTruth, write_truth

        run_truth = RunTruth(gen, keys)
        if run_truth.recorded:
            def finish_file(f) -> None:
                write_truth(f, run_truth, start_sample, n_samples)

    if comm is not None:
        comm.Barrier()
    t0 = time.perf_counter()
    write_distributed(
        path, meta, n_samples, tile_chunks=tile_chunks, comm=comm, chunk_samples=chunk_samples, overwrite=overwrite,
        consolidate=consolidate, litebird=litebird, checksum=True, progress=progress is not False, finish_file=finish_file,
    )
    wall = time.perf_counter() - t0
    rss = peak_rss_mb()
    checksum = None
    if comm is None or comm.Get_rank() == 0:
        with h5py.File(path, "r") as f:
            checksum = str(f["tod"].attrs[CHECKSUM_ATTR])
    if comm is not None and comm.Get_size() > 1:
        from mpi4py import MPI

        wall = comm.allreduce(wall, op=MPI.MAX)
        rss = comm.allreduce(rss, op=MPI.MAX)
        checksum = comm.bcast(checksum, root=0)
    total = len(keys) * int(n_samples)
    return GenerationStats(
        n_detectors=len(keys),
        start_sample=start_sample,
        n_samples=int(n_samples),
        sampling_rate_hz=float(meta.sampling_rate_hz),
        wall_s=wall,
        samples_per_s=total / wall if wall > 0 else float("inf"),
        checksum=checksum,
        path=Path(path),
        peak_rss_mb=rss,
        settings={**gen.describe(), "mpi_ranks": 1 if comm is None else comm.Get_size()},
    )


class MpiFileSink(Sink):
    """One TOD file written by every rank of ``comm``, each its own part (see :mod:`crab.generation.mpi`).

    Same file (``/tod`` bytes, attributes and ``checksum_sha256``) as
    :class:`crab.generation.sinks.Hdf5FileSink` in one process.

    Parameters
    ----------
    path : path-like
        Output file; the parts go to :func:`crab.generation.mpi.parts_dir` ``(path)``.
    meta : TodMetadata
        Metadata of the whole file (all detectors; ``start_time_s`` the time of the first sample).
    comm : mpi4py communicator, optional
        Default :func:`world` (serial when not launched by MPI).
    overwrite, consolidate, litebird, truth
        See :func:`generate_distributed`.
    """

    desc = "generate"

    def __init__(
        self, path: str | os.PathLike, meta: tod_io.TodMetadata, *, comm: Any | None = None, overwrite: bool = False, consolidate: bool = False,
        litebird: dict | None = None, truth: bool = False,
    ) -> None:
        self.truth = bool(truth)
        self.path = Path(path)
        self.meta = meta
        self.comm = comm
        self.overwrite = overwrite
        self.consolidate = consolidate
        self.litebird = litebird

    def consume(self, generator, detectors, start_sample, n_samples, *, chunk_samples, progress, desc) -> GenerationStats:
        stats = generate_distributed(
            generator, self.path, self.meta, detectors, start_sample, n_samples, comm=self.comm, chunk_samples=chunk_samples,
            overwrite=self.overwrite, progress=progress, consolidate=self.consolidate, litebird=self.litebird, truth=self.truth,
        )
        stats.path = self.path
        return stats
