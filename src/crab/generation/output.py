"""Generation runs and their outputs."""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

import numpy as np

from crab.core.errors import InputError
from crab.generation.engine import DEFAULT_CHUNK_SAMPLES, TodGenerator
from crab.io.tod import TodChecksum

#: HDF5 chunk length along time for generated files.
HDF5_CHUNK_SAMPLES = 1 << 18

# --------------------------------------------------------------------------- sinks
# one implementation, owned by the file format (re-exported here for users of generation)
Checksum = TodChecksum


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB).

    ``VmHWM`` of ``/proc/self/status`` on Linux (``ru_maxrss`` there also
    counts the parent's memory at the fork of a subprocess), else ``ru_maxrss``.
    """
    import resource

    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 2**20


@dataclass
class GenerationStats:
    """What a generation run did.

    Attributes
    ----------
    n_detectors, start_sample, n_samples : int
        Rows and time range generated (samples per detector).
    sampling_rate_hz : float
    wall_s : float
        Wall time of the generation loop (s).
    samples_per_s : float
        ``n_detectors * n_samples / wall_s``.
    checksum : str
        :class:`Checksum` of the generated TOD.
    path : Path or None
        Final file, for a file sink.
    peak_rss_mb : float
        Peak resident memory of the process at the end (MiB).
    settings : dict
        :meth:`TodGenerator.describe`.
    """

    n_detectors: int
    start_sample: int
    n_samples: int
    sampling_rate_hz: float
    wall_s: float
    samples_per_s: float
    checksum: str
    path: Path | None = None
    peak_rss_mb: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        from crab.core.units import format_duration

        what = f"{self.n_detectors} x {self.n_samples} samples ({format_duration(self.n_samples / self.sampling_rate_hz)})"
        return f"{what} in {self.wall_s:.2f} s: {self.samples_per_s / 1e6:.2f} Msamples/s, peak RSS {self.peak_rss_mb:.0f} MiB, sha256 {self.checksum}"


def as_generator(model, seed: int, **kw: Any) -> TodGenerator:
    """A :class:`TodGenerator` for ``model`` (returned unchanged if it already is one)."""
    if isinstance(model, TodGenerator):
        return model
    return TodGenerator(model, seed, **kw)


def _plan(model, seed: int, duration_s: float, start_s: float, gen_kw: dict[str, Any]) -> tuple[TodGenerator, int, int]:
    """The generator and the sample range ``(start_sample, n_samples)`` of a run."""
    gen = as_generator(model, seed, **gen_kw)
    fs = gen.sampling_rate_hz
    s0, n = samples_for(start_s, fs, what="start", allow_zero=True), samples_for(duration_s, fs)
    gen.source.check_span(s0, s0 + n)  # before any output is opened
    return gen, s0, n


def samples_for(duration_s: float, sampling_rate_hz: float, *, what: str = "duration", allow_zero: bool = False) -> int:
    """Number of samples for ``duration_s`` at ``sampling_rate_hz`` (rounded to the nearest)."""
    if not (duration_s >= 0 and math.isfinite(duration_s)):
        raise InputError(f"{what} must be a finite number of seconds >= 0, got {duration_s!r}")
    n = int(round(float(duration_s) * float(sampling_rate_hz)))
    if n < 1 and not allow_zero:
        raise InputError(f"{what} of {duration_s:g} s is less than one sample at {sampling_rate_hz:g} Hz")
    return n


def _run(
    gen: TodGenerator,
    detectors: int | Sequence[int],
    start_sample: int,
    n_samples: int,
    sink: Callable[[int, np.ndarray], None],
    *,
    chunk_samples: int,
    progress: bool | None,
    desc: str,
) -> GenerationStats:
    from crab.core.progress import bar

    n_det = len(gen._rows(detectors))
    check = Checksum(n_det)
    t0 = time.perf_counter()
    with bar(total=n_det * n_samples, desc=desc, unit="sample", disable=None if progress is None else not progress, unit_scale=True) as pb:
        for c0, chunk in gen.iter_chunks(detectors, start_sample, n_samples, chunk_samples):
            sink(c0, chunk)
            check.update(chunk)
            pb.update(chunk.size)
    wall = time.perf_counter() - t0
    return GenerationStats(
        n_detectors=n_det,
        start_sample=int(start_sample),
        n_samples=int(n_samples),
        sampling_rate_hz=gen.sampling_rate_hz,
        wall_s=wall,
        samples_per_s=n_det * n_samples / wall if wall > 0 else float("inf"),
        checksum=check.hexdigest(),
        peak_rss_mb=peak_rss_mb(),
        settings=gen.describe(),
    )


def stream_checksum(
    model,
    duration_s: float,
    n_detectors: int | Sequence[int] = 1,
    seed: int = 0,
    *,
    start_s: float = 0.0,
    chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
    progress: bool | None = None,
    **gen_kw: Any,
) -> GenerationStats:
    """Generate and only checksum (no output): the benchmark sink.

    Same arguments as :func:`generate_to_file` without the output.
    """
    gen, s0, n = _plan(model, seed, duration_s, start_s, gen_kw)
    return _run(gen, n_detectors, s0, n, lambda c0, c: None, chunk_samples=chunk_samples, progress=progress, desc="generate (checksum)")


def stream_raw(
    model,
    out: BinaryIO,
    duration_s: float,
    n_detectors: int | Sequence[int] = 1,
    seed: int = 0,
    *,
    start_s: float = 0.0,
    chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
    progress: bool | None = None,
    **gen_kw: Any,
) -> GenerationStats:
    """Stream raw float32 (native little-endian) samples to a binary file object (e.g. stdout).

    Chunk by chunk, each chunk C-ordered (n_detectors, n): for one detector,
    simply the series.
    """
    gen, s0, n = _plan(model, seed, duration_s, start_s, gen_kw)

    def sink(c0: int, chunk: np.ndarray) -> None:
        out.write(np.ascontiguousarray(chunk, dtype="<f4").tobytes())

    stats = _run(gen, n_detectors, s0, n, sink, chunk_samples=chunk_samples, progress=progress, desc="generate (stream)")
    out.flush()
    return stats


def generate_to_file(
    model,
    out: str | os.PathLike,
    duration_s: float,
    n_detectors: int | Sequence[int] = 1,
    seed: int = 0,
    *,
    start_s: float = 0.0,
    chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
    overwrite: bool = False,
    progress: bool | None = None,
    detector_names: Sequence[str] | None = None,
    run_config: dict[str, Any] | None = None,
    **gen_kw: Any,
) -> GenerationStats:
    """Generate TOD into an HDF5 file (``crab.io.tod`` layout, no ``events`` group).

    Parameters
    ----------
    model : TrainedModel, TemplateModel or TodGenerator
    out : path-like
        Final file name; written under a temporary name and renamed when
        complete (a failed or killed run leaves nothing under ``out``).
    duration_s : float
        Duration to generate (s).
    n_detectors : int or sequence of int
        Number of detectors (keys 0..n-1) or explicit detector keys.
    seed : int
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
    **gen_kw
        ``cond``, ``allow_extrapolation``, ``n_workers``, ``tile_latents``, ``backend`` (:class:`TodGenerator`).
    """
    from crab import __version__
    from crab.core.provenance import run_record
    from crab.io.tod import TodMetadata, TodWriter

    path = Path(out)
    if path.exists() and not overwrite:
        raise InputError(f"output file {path} exists (use overwrite / --overwrite to replace it)")
    if not path.parent.exists():
        raise InputError(f"output folder {path.parent} does not exist")
    gen, s0, n = _plan(model, seed, duration_s, start_s, gen_kw)
    fs = gen.sampling_rate_hz
    n_det = len(gen._rows(n_detectors))
    names = list(detector_names) if detector_names is not None else gen.detector_names(n_detectors)
    if len(names) != n_det:
        raise InputError(f"{len(names)} detector names for {n_det} detectors")
    model_path = getattr(gen.model, "path", None)
    config = {
        "method": gen.kind,
        "model": None if model_path is None else str(model_path),
        "duration_s": n / fs,
        "start_s": s0 / fs,
        "start_sample": s0,
        "n_samples": n,
        "sampling_rate_hz": fs,
        "detectors": names,
        "detector_keys": n_detectors if isinstance(n_detectors, (int, np.integer)) else [int(d) for d in n_detectors],
        "generation": gen.describe(),
        **(run_config or {}),
    }
    meta = TodMetadata(
        sampling_rate_hz=fs,
        detectors=names,
        start_time_s=s0 / fs,
        units=gen.source.units,
        kind=gen.kind,
        config=run_record(config, seed, method=gen.kind, model_path=config["model"]),
        seed=seed,
        crab_version=__version__,
        description=f"CRAB {gen.kind} generation",
    )
    comm = _mpi_world()
    if comm is not None:  # launched by mpirun/srun with several ranks: split the work (crab.generation.mpi)
        from crab.generation.mpi import generate_distributed

        stats = generate_distributed(gen, path, meta, n_detectors, s0, n, comm=comm, chunk_samples=chunk_samples, overwrite=overwrite, progress=progress)
        stats.path = path
        return stats
    with TodWriter(path, meta, n_samples=n, chunk_samples=min(HDF5_CHUNK_SAMPLES, n), overwrite=overwrite) as w:
        stats = _run(gen, n_detectors, s0, n, lambda c0, c: w.write(c), chunk_samples=chunk_samples, progress=progress, desc="generate")
        w.dataset.attrs["checksum_sha256"] = stats.checksum
    stats.path = path
    return stats


def _mpi_world():
    """The MPI communicator when launched with several ranks (see :mod:`crab.generation.mpi`), else None."""
    try:
        from crab.generation.mpi import world
    except ImportError:  # pragma: no cover - crab.generation.mpi is optional
        return None
    return world()


def is_root_process() -> bool:
    """False on MPI ranks other than 0 (they print no summaries)."""
    comm = _mpi_world()
    return comm is None or comm.Get_rank() == 0
