"""Streaming, seam-free, counter-seeded generation of TOD of any length.

:class:`TodGenerator` turns any tile source (:mod:`crab.models.base`) into
chunks of TOD; :mod:`crab.generation.output` runs it into a file, a raw
stream or a checksum; :mod:`crab.generation.mpi` splits a run over ranks.
"""

from crab.generation.engine import DEFAULT_CHUNK_SAMPLES, TodGenerator
from crab.generation.output import (
    GenerationStats,
    generate_to_file,
    is_root_process,
    peak_rss_mb,
    samples_for,
    stream_checksum,
    stream_raw,
)
from crab.models.registry import is_template_path, load_generation_model

__all__ = [
    "DEFAULT_CHUNK_SAMPLES",
    "GenerationStats",
    "TodGenerator",
    "generate_to_file",
    "is_root_process",
    "is_template_path",
    "load_generation_model",
    "peak_rss_mb",
    "samples_for",
    "stream_checksum",
    "stream_raw",
]
