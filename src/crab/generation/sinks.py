"""Where a generation run's chunks go: a file, a raw stream, or only a checksum.

A sink receives the chunks of a run in time order (:meth:`Sink.consume`, the
loop of :func:`crab.generation.output.run`).  The MPI file sink
(:class:`crab.generation.mpi.MpiFileSink`) consumes a run differently: each
rank generates its own part of the grid.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, BinaryIO, Callable, Iterator, Sequence

import numpy as np

from crab.core.paths import check_output_file
from crab.generation.stats import GenerationStats, peak_rss_mb
from crab.io.tod import TodChecksum, TodMetadata, TodWriter

#: HDF5 chunk length along time for generated files.
HDF5_CHUNK_SAMPLES = 1 << 18

#: ``write(first_sample, tod)``: receives one chunk, float32 (n_detectors, n).
ChunkWriter = Callable[[int, np.ndarray], None]


class Sink:
    """Where the chunks of a run go; this base class only checksums them.

    Attributes
    ----------
    desc : str
        Label of the progress bar.
    path : Path or None
        The file written, for a file sink.
    """

    desc = "generate (checksum)"
    path = None

    @contextlib.contextmanager
    def open(self, generator: Any, detectors: int | Sequence[int], start_sample: int, n_samples: int) -> Iterator[ChunkWriter]:
        """Open the output of a run; yield the function that receives its chunks (in time order)."""
        yield lambda first_sample, chunk: None

    def finish(self, stats: GenerationStats) -> None:
        """After the last chunk, before the output is closed (e.g. store the checksum)."""

    def consume(
        self, generator: Any, detectors: int | Sequence[int], start_sample: int, n_samples: int, *, chunk_samples: int, progress: bool | None, desc: str
    ) -> GenerationStats:
        """Generate ``[start_sample, start_sample + n_samples)`` of ``detectors`` into this sink."""
        from crab.core.progress import bar

        n_det = generator.count(detectors)
        chunks = generator.iter_chunks(detectors, start_sample, n_samples, chunk_samples)  # checks the plan's memory first
        check = TodChecksum(n_det)
        with self.open(generator, detectors, start_sample, n_samples) as write:
            t0 = time.perf_counter()
            with bar(total=n_det * n_samples, desc=desc, unit="sample", disable=None if progress is None else not progress, unit_scale=True) as pb:
                for c0, chunk in chunks:
                    write(c0, chunk)
                    check.update(chunk)
                    pb.update(chunk.size)
            wall = time.perf_counter() - t0
            stats = GenerationStats(
                n_detectors=n_det,
                start_sample=int(start_sample),
                n_samples=int(n_samples),
                sampling_rate_hz=generator.sampling_rate_hz,
                wall_s=wall,
                samples_per_s=n_det * n_samples / wall if wall > 0 else float("inf"),
                checksum=check.hexdigest(),
                peak_rss_mb=peak_rss_mb(),
                settings=generator.describe(),
            )
            self.finish(stats)
        stats.path = self.path
        return stats


class ChecksumSink(Sink):
    """No output: only the checksum (the benchmark sink)."""


class RawStreamSink(Sink):
    """Raw float32 (little-endian) samples to a binary file object (e.g. stdout), chunk by chunk,
    each chunk C-ordered (n_detectors, n): for one detector, simply the series."""

    desc = "generate (stream)"

    def __init__(self, out: BinaryIO) -> None:
        self.out = out

    @contextlib.contextmanager
    def open(self, generator, detectors, start_sample, n_samples) -> Iterator[ChunkWriter]:
        yield lambda first_sample, chunk: self.out.write(np.ascontiguousarray(chunk, dtype="<f4").tobytes())

    def finish(self, stats: GenerationStats) -> None:
        self.out.flush()


class Hdf5FileSink(Sink):
    """An HDF5 TOD file (:class:`crab.io.tod.TodWriter` layout), with the checksum as the ``/tod``
    attribute ``checksum_sha256`` and, with ``truth``, the ``/events`` table of the glitches the
    generator placed (:class:`crab.generation.truth.RunTruth`), written chunk by chunk.

    Parameters
    ----------
    path : path-like
        Final file name; written under a temporary name and renamed when
        complete (a failed or killed run leaves nothing under ``path``).
    meta : TodMetadata
        The file's metadata (detectors, start time, run record...).
    overwrite : bool
        Replace an existing file.
    truth : bool
        Write the ``/events`` table of the generated glitches (when the method lists them).
    """

    desc = "generate"

    def __init__(self, path: str | os.PathLike, meta: TodMetadata, *, overwrite: bool = False, truth: bool = True) -> None:
        self.path = check_output_file(path, overwrite=overwrite)
        self.meta = meta
        self.overwrite = overwrite
        self.truth = bool(truth)
        self._writer: TodWriter | None = None

    @contextlib.contextmanager
    def open(self, generator, detectors, start_sample, n_samples) -> Iterator[ChunkWriter]:
        from crab.generation.truth import RunTruth

        truth = RunTruth(generator, detectors) if self.truth else None
        if truth is not None and not truth.recorded:
            truth = None
        with TodWriter(self.path, self.meta, n_samples=n_samples, chunk_samples=min(HDF5_CHUNK_SAMPLES, n_samples), overwrite=self.overwrite) as w:
            self._writer = w

            def write(first_sample: int, chunk: np.ndarray) -> None:
                w.write(chunk)
                if truth is not None:
                    truth.append(w.dataset.file, first_sample, chunk.shape[1])

            try:
                if truth is not None:
                    truth.start(w.dataset.file)  # the table exists even when empty
                yield write
            finally:
                self._writer = None

    def finish(self, stats: GenerationStats) -> None:
        self._writer.dataset.attrs["checksum_sha256"] = stats.checksum
