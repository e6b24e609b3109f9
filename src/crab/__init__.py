"""CRAB: Cosmic Rays Artificial Background.

Monte Carlo simulation of cosmic-ray glitches in the time-ordered data (TOD)
of TES bolometers, and a generative adversarial network (GAN) that extends a
small Monte Carlo sample to mission-length TOD.

The modules follow the data's path:

physics Monte Carlo
    :mod:`crab.physics.spectra` -> :mod:`crab.physics.transport` -> :mod:`crab.physics.deposit`
    -> :mod:`crab.physics.response` (+ :mod:`crab.physics.noise`) -> :mod:`crab.physics.montecarlo`
    -> :mod:`crab.io.tod`
generative model
    :mod:`crab.models.dataset` -> :mod:`crab.models.gan.network` -> :mod:`crab.models.gan.training`
    -> :mod:`crab.generation.engine` (and the :mod:`crab.models.template.template` baseline)
    -> :mod:`crab.validation.validate`
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("crab-tod")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

from crab.core.errors import CrabError

__all__ = ["__version__", "CrabError"]
