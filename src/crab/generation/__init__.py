"""Streaming, seam-free, counter-seeded generation of TOD of any length.

:class:`TodGenerator` turns any generative method's tiles
(:mod:`crab.models.base`) into chunks of TOD; :func:`run` sends a run into a
sink (:mod:`crab.generation.sinks`: a file, a raw stream, a checksum;
:class:`crab.generation.mpi.MpiFileSink`: a file split over MPI ranks).
"""

from crab.generation.engine import DEFAULT_CHUNK_SAMPLES, TodGenerator
from crab.generation.output import generate_to_file, is_root_process, run, samples_for, stream_checksum, stream_raw
from crab.generation.sinks import ChecksumSink, Hdf5FileSink, RawStreamSink, Sink
from crab.generation.stats import GenerationStats, peak_rss_mb
from crab.models.registry import is_template_path, load_generation_model, method_names

__all__ = [
    "DEFAULT_CHUNK_SAMPLES",
    "ChecksumSink",
    "GenerationStats",
    "Hdf5FileSink",
    "RawStreamSink",
    "Sink",
    "TodGenerator",
    "generate_to_file",
    "is_root_process",
    "is_template_path",
    "load_generation_model",
    "method_names",
    "peak_rss_mb",
    "run",
    "samples_for",
    "stream_checksum",
    "stream_raw",
]
