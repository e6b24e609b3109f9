"""CRAB: Cosmic Rays Artificial Background.

Monte Carlo simulation of cosmic-ray glitches in the time-ordered data (TOD)
of TES bolometers, and a generative adversarial network (GAN) that extends a
small Monte Carlo sample to mission-length TOD.

The package is cut into layers along the data's path, lowest first; a module
imports only its own layer or lower ones (``tests/test_architecture.py``):

core
    errors, units, seeds (rng), provenance, progress, interrupts, robust
    statistics, output-path checks (paths) and stored-format checks (formats).
physics
    the Monte Carlo, array in, array out: spectra -> transport -> deposit ->
    tes (direct hits) + wafer_thermal (wafer hits) -> decimation, plus noise;
    montecarlo_config defines a run, montecarlo runs it and returns the TOD
    and the :class:`~crab.physics.events.EventTable` of its hits; conditions
    (phi schedules).
io
    files only: tod (the HDF5 TOD layout), montecarlo_file (a Monte Carlo run
    written to it), litebird_layout (litebird_sim-readable files).
analysis
    the glitch finder.
models
    the tile-source contract (base), the registry, the training dataset, the
    GAN (models.gan) and the template baseline (models.template).
generation
    the engine that tiles any model into TOD, its file outputs and MPI split.
validation
    metrics, reports, phi validation and file inspection plots.
integrations, pipeline, cli
    litebird_sim, ``crab run`` and the command line.
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("crab-tod")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

from crab.core.errors import CrabError

__all__ = ["__version__", "CrabError"]
