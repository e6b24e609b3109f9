"""Invertible amplitude transform with global constants.

Glitches span orders of magnitude above the noise (a heavy ion can give
1000x the noise RMS), which a network with bounded activations handles
badly in linear units.  CRAB compresses amplitudes with a scaled inverse
hyperbolic sine

.. math::

    y = \\frac{\\operatorname{asinh}\\left((x - x_0) / s\\right)}{k}

linear for ``|x - x0| << s`` (the noise keeps its Gaussian shape) and
logarithmic far above (glitch heights compressed).  The constants ``x0``
(baseline, pW), ``s`` (linear scale, pW, a multiple of the robust noise
RMS) and ``k`` (output scale making ``y`` of unit spread) are fitted once,
on the training set, and stored with the model: no per-window
normalisation, so a glitch keeps its absolute height.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from crab.core.errors import InputError
from crab.core.stats import robust_sigma


@dataclass(frozen=True)
class AmplitudeTransform:
    """``y = asinh((x - offset) / scale) / out_scale`` and its inverse.

    Attributes
    ----------
    offset : float
        Baseline subtracted first (TOD units).
    scale : float
        Linear scale (TOD units), > 0.
    out_scale : float
        Divides the asinh so transformed training data have unit spread, > 0.
    """

    offset: float = 0.0
    scale: float = 1.0
    out_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("offset", "scale", "out_scale"):
            if not np.isfinite(getattr(self, name)):
                raise InputError(f"transform constant {name} must be finite")
        if self.scale <= 0 or self.out_scale <= 0:
            raise InputError("transform scales must be positive")

    @classmethod
    def fit(cls, tod: np.ndarray, noise_multiple: float = 2.0) -> "AmplitudeTransform":
        """Fit the constants on training TOD (any shape; all samples pooled).

        Parameters
        ----------
        tod : ndarray
            Training samples (TOD units).
        noise_multiple : float
            ``scale`` = this many robust noise RMS: below it the transform is linear.
        """
        x = np.asarray(tod, dtype=np.float64)
        if x.size < 2 or not np.all(np.isfinite(x)):
            raise InputError("cannot fit the amplitude transform: need >= 2 finite samples")
        rows = x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x[None]
        sigma = float(np.median([robust_sigma(r) for r in rows]))
        if not sigma > 0:
            sigma = float(np.std(x)) or 1.0
        offset = float(np.median(x))
        scale = noise_multiple * sigma
        y = np.arcsinh((x - offset) / scale)
        out_scale = float(np.std(y)) or 1.0
        return cls(offset=offset, scale=scale, out_scale=out_scale)

    def forward(self, x):
        """TOD units -> transformed (works on numpy arrays and torch tensors)."""
        if isinstance(x, np.ndarray):
            return (np.arcsinh((x - self.offset) / self.scale) / self.out_scale).astype(x.dtype if x.dtype.kind == "f" else np.float64)
        import torch

        return torch.asinh((x - self.offset) / self.scale) / self.out_scale

    def inverse(self, y):
        """Transformed -> TOD units (numpy or torch)."""
        if isinstance(y, np.ndarray):
            return (np.sinh(y * self.out_scale) * self.scale + self.offset).astype(y.dtype if y.dtype.kind == "f" else np.float64)
        import torch

        return torch.sinh(y * self.out_scale) * self.scale + self.offset

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AmplitudeTransform":
        return cls(**d)
