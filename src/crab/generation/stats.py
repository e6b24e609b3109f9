"""What a generation run did: its statistics and the process's peak memory."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
        :class:`crab.io.tod.TodChecksum` of the generated TOD.
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
