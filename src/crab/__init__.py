"""CRAB: Cosmic Rays Artificial Background.

Monte Carlo simulation of cosmic-ray glitches in the time-ordered data (TOD)
of TES bolometers, and a generative adversarial network (GAN) that extends a
small Monte Carlo sample to mission-length TOD.

The modules follow the data's path:

physics Monte Carlo
    :mod:`crab.spectra` -> :mod:`crab.transport` -> :mod:`crab.deposit`
    -> :mod:`crab.response` (+ :mod:`crab.noise`) -> :mod:`crab.montecarlo`
    -> :mod:`crab.tod_io`
generative model
    :mod:`crab.dataset` -> :mod:`crab.model` -> :mod:`crab.training`
    -> :mod:`crab.generation` (and the :mod:`crab.template` baseline)
    -> :mod:`crab.validation`
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("crab-tod")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

from .errors import CrabError

__all__ = ["__version__", "CrabError"]
