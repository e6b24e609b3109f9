"""Writing a physics Monte Carlo run to an HDF5 TOD file (:mod:`crab.io.tod` layout).

The simulator (:mod:`crab.physics.montecarlo`) returns arrays and an
:class:`crab.physics.events.EventTable`; this module streams them into a file,
atomically (no partial file under the final name on failure), with the run's
config, seed and package version as attributes.
"""

from __future__ import annotations

import os
from pathlib import Path

from crab.core.progress import bar
from crab.core.resources import check_memory
from crab.core.units import check_sample_span, format_duration
from crab.io.tod import EVENT_ROW_BYTES, TodMetadata, TodWriter, tod_file_bytes
from crab.physics.events import EventTable
from crab.physics.montecarlo import MonteCarloSimulator, SimulationInfo
from crab.physics.montecarlo_config import MonteCarloConfig
from crab.physics.spectra import PrimarySampler

#: ``description`` of a Monte Carlo file when the caller gives none.
DEFAULT_DESCRIPTION = "CRAB physics Monte Carlo (cosmic-ray glitches, TES response, noise)"


def tod_metadata(info: SimulationInfo, description: str = "") -> TodMetadata:
    """The :class:`TodMetadata` (kind ``"montecarlo"``, start at 0 s) of a Monte Carlo run."""
    return TodMetadata(
        sampling_rate_hz=info.sampling_rate_hz,
        detectors=info.detectors,
        start_time_s=0.0,
        units=info.units,
        kind="montecarlo",
        config=info.config,
        seed=info.seed,
        description=description or DEFAULT_DESCRIPTION,
    )


def expected_hits(config: MonteCarloConfig, duration_s: float) -> float:
    """Mean number of hits (rows of ``/events``) of a run: at most one per primary crossing the
    wafer, whose rate the spectra give (:class:`crab.physics.spectra.PrimarySampler`)."""
    cfg = config.validate()
    return PrimarySampler(cfg.spectra, cfg.phi_gv, cfg.wafer.area_cm2).rate_hz * float(duration_s)


def expected_file_bytes(config: MonteCarloConfig, duration_s: float) -> int:
    """Size of the file of a run of ``duration_s`` (bytes): the TOD exactly, the truth table for :func:`expected_hits`."""
    n = round(float(duration_s) * float(config.sampling_rate_hz))
    return tod_file_bytes(config.n_detectors, n, int(expected_hits(config, duration_s)))


def simulate_to_file(
    config: MonteCarloConfig,
    duration_s: float,
    seed: int,
    out_path: str | os.PathLike,
    *,
    chunk_s: float | None = None,
    progress: bool = True,
    overwrite: bool = False,
    description: str = "",
) -> Path:
    """Run the Monte Carlo and write an HDF5 TOD file (atomically: no partial file on failure).

    Parameters
    ----------
    config : MonteCarloConfig
        The run definition.
    duration_s : float
        Simulated time (s).
    seed : int
        Non-negative seed.
    out_path : path-like
        Output file (:mod:`crab.io.tod` layout); the full config, the seed and
        the package version are stored as attributes.
    chunk_s : float, optional
        Seconds simulated and written per step (memory bound; result unchanged).
    progress : bool
        Show a progress bar (simulated seconds) on stderr.
    overwrite : bool
        Replace an existing file.
    description : str
        Free text stored in the file (default :data:`DEFAULT_DESCRIPTION`).

    Returns
    -------
    Path
        The written file.
    """
    sim = MonteCarloSimulator(config, seed)
    n_total = sim.n_samples_for(duration_s)
    check_sample_span(n_total, sim.fs, what=f"a run of {format_duration(duration_s)}")
    hits = sim.sampler.rate_hz * n_total / sim.fs
    meta = tod_metadata(sim.info(), description)
    evs = []
    with TodWriter(out_path, meta, n_samples=n_total, overwrite=overwrite, reserve_bytes=int(EVENT_ROW_BYTES * hits)) as writer:  # checks the disk space
        # the truth table is gathered in memory and written at the end (its rows, twice while they are joined)
        check_memory(int(2 * EVENT_ROW_BYTES * hits), what=f"the truth of about {hits:.3g} hits in {format_duration(duration_s)} of Monte Carlo",
                     remedy="simulate shorter runs (other seeds give independent ones)")
        with bar(total=round(n_total / sim.fs, 3), desc="simulate", unit="s", disable=None if progress else True) as pbar:
            for tod, ev in sim.run(duration_s, chunk_s=chunk_s):
                writer.write(tod)
                evs.append(ev)
                pbar.update(round(tod.shape[1] / sim.fs, 3))
        writer.write_events(EventTable.concatenate(evs))
    return Path(out_path)
