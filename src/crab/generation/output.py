"""Generation runs: one run function and its sinks, plus thin wrappers by output.

:func:`run` generates a span of TOD with a :class:`TodGenerator` into a
sink (:mod:`crab.generation.sinks`: an HDF5 file, a raw stream, a checksum
only; :class:`crab.generation.mpi.MpiFileSink`: one file written by every MPI
rank).  The seed of a run is the generator's only (``generator.seed``).
"""

from __future__ import annotations

import math
import os
from typing import Any, BinaryIO, Sequence

import numpy as np

from crab.core.errors import InputError
from crab.core.paths import check_free_space, check_output_file
from crab.core.units import check_sample_span, format_duration
from crab.generation import mpi
from crab.generation.engine import DEFAULT_CHUNK_SAMPLES, TodGenerator
from crab.generation.sinks import ChecksumSink, Hdf5FileSink, RawStreamSink, Sink
from crab.generation.stats import GenerationStats
from crab.generation.truth import RunTruth


def samples_for(duration_s: float, sampling_rate_hz: float, *, what: str = "duration", allow_zero: bool = False) -> int:
    """Number of samples for ``duration_s`` at ``sampling_rate_hz`` (rounded to the nearest)."""
    if not (duration_s >= 0 and math.isfinite(duration_s)):
        raise InputError(f"{what} must be a finite number of seconds >= 0, got {duration_s!r}")
    n = int(round(float(duration_s) * float(sampling_rate_hz)))
    if n < 1 and not allow_zero:
        raise InputError(f"{what} of {duration_s:g} s is less than one sample at {sampling_rate_hz:g} Hz")
    return n


def run(
    generator: TodGenerator,
    detectors: int | Sequence[int],
    start_sample: int,
    n_samples: int,
    sink: Sink,
    *,
    chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
    progress: bool | None = None,
    desc: str | None = None,
) -> GenerationStats:
    """Generate samples ``[start_sample, start_sample + n_samples)`` of ``detectors`` into ``sink``.

    Parameters
    ----------
    generator : TodGenerator
    detectors : int or sequence of int
        Number of detectors (keys 0..n-1) or explicit detector keys.
    start_sample, n_samples : int
        Absolute first sample and number of samples per detector.
    sink : Sink
        Where the chunks go (:mod:`crab.generation.sinks`, :class:`crab.generation.mpi.MpiFileSink`).
    chunk_samples : int
        Samples per detector generated (and written) at a time.
    progress : bool, optional
        Progress bar on stderr (default: when stderr is a terminal).
    desc : str, optional
        Label of the progress bar (default: the sink's).
    """
    s0, n = int(start_sample), int(n_samples)
    generator.source.check_span(s0, s0 + n)  # before any output is opened
    return sink.consume(generator, detectors, s0, n, chunk_samples=int(chunk_samples), progress=progress, desc=desc or sink.desc)


def _span(generator: TodGenerator, duration_s: float, start_s: float) -> tuple[int, int]:
    """``(start_sample, n_samples)`` of a run of ``duration_s`` from ``start_s`` (s)."""
    fs = generator.sampling_rate_hz
    s0, n = samples_for(start_s, fs, what="start", allow_zero=True), samples_for(duration_s, fs)
    check_sample_span(s0 + n, fs, what=f"a run of {format_duration(duration_s)}" + (f" from {format_duration(start_s)}" if s0 else ""))
    return s0, n


def stream_checksum(
    generator: TodGenerator,
    duration_s: float,
    detectors: int | Sequence[int] = 1,
    *,
    start_s: float = 0.0,
    chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
    progress: bool | None = None,
) -> GenerationStats:
    """Generate ``duration_s`` seconds from ``start_s`` and only checksum them (no output): the benchmark sink."""
    s0, n = _span(generator, duration_s, start_s)
    return run(generator, detectors, s0, n, ChecksumSink(), chunk_samples=chunk_samples, progress=progress)


def stream_raw(
    generator: TodGenerator,
    out: BinaryIO,
    duration_s: float,
    detectors: int | Sequence[int] = 1,
    *,
    start_s: float = 0.0,
    chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
    progress: bool | None = None,
) -> GenerationStats:
    """Stream raw float32 (little-endian) samples to a binary file object (see :class:`RawStreamSink`)."""
    s0, n = _span(generator, duration_s, start_s)
    return run(generator, detectors, s0, n, RawStreamSink(out), chunk_samples=chunk_samples, progress=progress)


def generate_to_file(
    generator: TodGenerator,
    out: str | os.PathLike,
    duration_s: float,
    detectors: int | Sequence[int] = 1,
    *,
    start_s: float = 0.0,
    chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
    overwrite: bool = False,
    progress: bool | None = None,
    detector_names: Sequence[str] | None = None,
    run_config: dict[str, Any] | None = None,
    truth: bool = True,
) -> GenerationStats:
    """Generate TOD into an HDF5 file (``crab.io.tod`` layout), with the ``events`` table of the
    glitches the generator placed (:mod:`crab.generation.truth`).

    Under ``mpirun`` with several ranks the file is written by every rank
    (:class:`crab.generation.mpi.MpiFileSink`), with the same bytes.

    Parameters
    ----------
    generator : TodGenerator
        What to generate with; its seed is the one written to the file.
    out : path-like
        Final file name (see :class:`crab.generation.sinks.Hdf5FileSink`).
    duration_s : float
        Duration to generate (s).
    detectors : int or sequence of int
        Number of detectors (keys 0..n-1) or explicit detector keys.
    start_s : float
        Time of the first sample (s): the file holds exactly the samples a
        run from 0 would have there.
    chunk_samples : int
        Samples per detector generated and written at a time.
    overwrite : bool
        Replace an existing ``out``.
    progress : bool, optional
        Progress bar on stderr (default: when stderr is a terminal).
    detector_names : sequence of str, optional
        Names stored in the file (default ``W00_D000, ...``).
    run_config : dict, optional
        Extra entries for the run record (``config`` attribute).
    truth : bool
        Write the ``/events`` table (when the method lists its glitches; the same rows for any
        chunking, ``start_s`` slice of a longer run, worker count or MPI layout).
    """
    from crab import __version__
    from crab.core.provenance import run_record
    from crab.io.tod import FULL_EVENT_ROW_BYTES, TodMetadata, tod_file_bytes

    path = check_output_file(out, overwrite=overwrite)
    s0, n = _span(generator, duration_s, start_s)
    generator.source.check_span(s0, s0 + n)  # before any output is opened
    fs = generator.sampling_rate_hz
    seed = generator.seed
    n_det = generator.count(detectors)
    generator.check_memory(n_det, n, chunk_samples)  # before the plan of every detector is made
    n_rows = RunTruth(generator, detectors).expected_rows(n) if truth else 0
    check_free_space(path.parent, tod_file_bytes(n_det, n) + FULL_EVENT_ROW_BYTES * n_rows, what=f"{path} ({n_det} detector{'s' if n_det > 1 else ''} x {format_duration(n / fs)} at {fs:g} Hz)")
    names = list(detector_names) if detector_names is not None else generator.detector_names(detectors)
    if len(names) != n_det:
        raise InputError(f"{len(names)} detector names for {n_det} detectors")
    model_path = getattr(generator.model, "path", None)
    config = {
        "method": generator.kind,
        "model": None if model_path is None else str(model_path),
        "duration_s": n / fs,
        "start_s": s0 / fs,
        "start_sample": s0,
        "n_samples": n,
        "sampling_rate_hz": fs,
        "detectors": names,
        "detector_keys": detectors if isinstance(detectors, (int, np.integer)) else [int(d) for d in detectors],
        "generation": generator.describe(),
        **(run_config or {}),
    }
    meta = TodMetadata(
        sampling_rate_hz=fs,
        detectors=names,
        start_time_s=s0 / fs,
        units=generator.source.units,
        kind=generator.kind,
        config=run_record(config, seed, method=generator.kind, model_path=config["model"]),
        seed=seed,
        crab_version=__version__,
        description=f"CRAB {generator.kind} generation",
    )
    comm = mpi.world()
    sink: Sink = Hdf5FileSink(path, meta, overwrite=overwrite, truth=truth) if comm is None else mpi.MpiFileSink(path, meta, comm=comm, overwrite=overwrite, truth=truth)
    return run(generator, detectors, s0, n, sink, chunk_samples=chunk_samples, progress=progress)


def is_root_process() -> bool:
    """False on MPI ranks other than 0 (they print no summaries)."""
    return mpi.is_root()
