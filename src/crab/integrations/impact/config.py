"""What ``crab impact`` does: one typed configuration with defaults and units in the names.

No litebird_sim here: the configuration is plain data, checked on construction
and written to the run record (:meth:`ImpactConfig.to_dict`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from crab.core import rng
from crab.core.errors import InputError

#: Ways to convert CRAB TOD (pW) to K_CMB (see :class:`ImpactConfig`).
CONVERSIONS = ("noise", "band")
#: Output coordinate systems of the maps.
COORDINATES = ("ecliptic", "galactic")
DAY_S = 86400.0


@dataclass(frozen=True)
class ImpactConfig:
    """Parameters of a ``crab impact`` run: from generated glitches to BB spectra.

    Attributes
    ----------
    duration_s : float
        Length of the simulated observation (s); default 30 days.
    n_detectors : int
        Detectors simulated: ``n_detectors / 2`` pairs, each pair two detectors on one
        focal-plane pixel with orthogonal polarisation angles, pairs alternating between
        0/90 deg and 45/135 deg (so that Q and U are solved without a HWP).  Even, >= 4.
    nside : int
        HEALPix resolution of the maps (power of two).
    seed : int
        The run's only seed: glitches (through the litebird_sim bridge, keyed on detector
        name and absolute sample) and the white noise of the comparison maps.
    start_s : float
        Mission time of the first sample (s, >= 0): the scanning strategy's clock and the
        absolute sample index of the glitches.
    chunk_s : float
        Time covered by one litebird_sim observation (s): the TOD of one chunk is all that
        is ever in memory (default one day).
    channel : str
        Frequency channel of the IMO shipped with litebird_sim (``M1-140``: MFT, 140 GHz):
        the detectors' focal-plane pixels, band (for ``conversion="band"``) and NET.
    imo_release : str
        Release of that IMO (``vPTEP``).
    net_uk_sqrt_s : float, optional
        Noise-equivalent temperature of one detector (uK_CMB sqrt(s)); default: the
        channel's ``net_detector_ukrts`` in the IMO (54 uK sqrt(s) for M1-140).
    conversion : str
        How pW become K_CMB.  ``"noise"`` (default): the white-noise level of the generated
        TOD (robust sigma of its first hour) is set equal to the NET, i.e.
        ``K/pW = NET sqrt(f_s) / sigma_white``; the glitch-to-noise ratio of the model is
        kept.  ``"band"``: :func:`crab.integrations.litebird.kcmb_per_pw` of the channel's
        band with ``optical_efficiency`` (a single-mode top-hat estimate).
    optical_efficiency : float
        Optical efficiency for ``conversion="band"`` (0 < eta <= 1).
    conversion_k_per_pw : float, optional
        An explicit K_CMB per pW; overrides ``conversion``.
    detectors_per_wafer : int, optional
        Detectors per wafer (they share the wafer hits of a wafer-aware model); default:
        all the detectors on one wafer, the IMO wafer of the channel's first pixel.
    phi_gv : float, optional
        Solar modulation potential for a phi-conditioned model (GV).
    signal : str
        What is mapped as the cosmic rays: ``"glitches"`` (default), the glitches the
        generator placed, rendered from their truth rows (:func:`crab.generation.truth.glitch_signal`:
        the GAN's additive glitches and the wafer layer's hits, the template's hits), without
        the model's noise, so the residual is the glitch map's own spectrum; ``"tod"``, the
        whole generated TOD (glitches and the model's white and 1/f noise), the residual then
        being its spectrum minus that of white noise at the same level (the model's 1/f noise
        stays in it).
    deglitch : bool
        Also make maps with the samples flagged by CRAB's glitch finder
        (:func:`crab.analysis.glitches.detect_glitches`, each glitch's extent) left out.
    deglitch_threshold_sigma : float
        Threshold of that finder (robust noise sigmas).
    destriper : bool
        Also run litebird_sim's destriper on the glitch TOD (all of it in memory: about
        20 bytes per sample; short runs only).
    baseline_length_s : float
        Destriper baseline length (s).
    coordinates : str
        Coordinates of the maps: ``"ecliptic"`` (the scan's own, default) or ``"galactic"``.
    scan_quaternion_step_s : float
        Step of the spacecraft attitude quaternions (s); litebird_sim's default.
    ell_min, ell_max : int
        Multipole range of the headline averages and of the r fit (``ell_max`` is cut to
        ``3 * nside - 1``).
    mask_cond_max : float
        Pixels whose 3x3 map-making system has a larger condition number are left out of the
        spectra (their Q and U are poorly determined; 2 is the ideal of this detector set,
        litebird_sim solves up to 1e10).
    apodisation_deg : float
        Apodisation of the mask of observed pixels (deg, C2 taper on the distance to the
        nearest unobserved pixel); 0: a binary mask.
    beam_fwhm_arcmin : float
        Gaussian beam deconvolved from the spectra (arcmin); 0 (default): none (the
        residual is compared with the sky spectrum as it lands in the map).
    """

    duration_s: float = 30 * DAY_S
    n_detectors: int = 8
    nside: int = 64
    seed: int = 0
    start_s: float = 0.0
    chunk_s: float = DAY_S
    channel: str = "M1-140"
    imo_release: str = "vPTEP"
    net_uk_sqrt_s: float | None = None
    conversion: str = "noise"
    optical_efficiency: float = 1.0
    conversion_k_per_pw: float | None = None
    detectors_per_wafer: int | None = None
    phi_gv: float | None = None
    signal: str = "glitches"
    deglitch: bool = True
    deglitch_threshold_sigma: float = 5.0
    destriper: bool = False
    baseline_length_s: float = 60.0
    coordinates: str = "ecliptic"
    scan_quaternion_step_s: float = 2.0
    ell_min: int = 2
    ell_max: int = 200
    mask_cond_max: float = 100.0
    apodisation_deg: float = 5.0
    beam_fwhm_arcmin: float = 0.0

    def __post_init__(self) -> None:
        rng.check_seed(self.seed)
        _positive("duration_s", self.duration_s)
        _positive("chunk_s", self.chunk_s)
        _positive("baseline_length_s", self.baseline_length_s)
        _positive("scan_quaternion_step_s", self.scan_quaternion_step_s)
        _positive("deglitch_threshold_sigma", self.deglitch_threshold_sigma)
        _positive("mask_cond_max", self.mask_cond_max)
        if not (math.isfinite(self.start_s) and self.start_s >= 0):
            raise InputError(f"start_s must be a finite time >= 0 s, got {self.start_s!r}")
        if int(self.n_detectors) != self.n_detectors or self.n_detectors < 4 or self.n_detectors % 2:
            raise InputError(f"n_detectors must be an even number >= 4 (pairs of orthogonal detectors, 0/90 and 45/135 deg), got {self.n_detectors!r}")
        n = int(self.nside)
        if n != self.nside or n < 1 or n & (n - 1) or n > 8192:
            raise InputError(f"nside must be a power of two from 1 to 8192, got {self.nside!r}")
        if self.signal not in ("glitches", "tod"):
            raise InputError(f"signal must be 'glitches' or 'tod', got {self.signal!r}")
        if self.conversion not in CONVERSIONS:
            raise InputError(f"conversion must be one of {', '.join(CONVERSIONS)}, got {self.conversion!r}")
        if self.coordinates not in COORDINATES:
            raise InputError(f"coordinates must be one of {', '.join(COORDINATES)}, got {self.coordinates!r}")
        if not 0 < self.optical_efficiency <= 1:
            raise InputError(f"optical_efficiency must be in (0, 1], got {self.optical_efficiency!r}")
        for name in ("net_uk_sqrt_s", "conversion_k_per_pw", "phi_gv"):
            v = getattr(self, name)
            if v is not None:
                _positive(name, v)
        if self.detectors_per_wafer is not None and (int(self.detectors_per_wafer) != self.detectors_per_wafer or self.detectors_per_wafer < 1):
            raise InputError(f"detectors_per_wafer must be an integer >= 1, got {self.detectors_per_wafer!r}")
        if not (0 <= self.ell_min < self.ell_max):
            raise InputError(f"need 0 <= ell_min < ell_max, got {self.ell_min}, {self.ell_max}")
        if self.ell_min > self.lmax:
            raise InputError(f"ell_min {self.ell_min} is above the largest multipole of nside {self.nside} maps ({self.lmax})")
        if not (math.isfinite(self.apodisation_deg) and self.apodisation_deg >= 0):
            raise InputError(f"apodisation_deg must be >= 0, got {self.apodisation_deg!r}")
        if not (math.isfinite(self.beam_fwhm_arcmin) and self.beam_fwhm_arcmin >= 0):
            raise InputError(f"beam_fwhm_arcmin must be >= 0, got {self.beam_fwhm_arcmin!r}")

    @property
    def lmax(self) -> int:
        """Largest multipole of the spectra: ``3 * nside - 1``."""
        return 3 * int(self.nside) - 1

    @property
    def ell_range(self) -> tuple[int, int]:
        """``(ell_min, min(ell_max, lmax))``: the multipoles of the headline and the r fit."""
        return int(self.ell_min), min(int(self.ell_max), self.lmax)

    @property
    def n_pairs(self) -> int:
        return int(self.n_detectors) // 2

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of every field."""
        return asdict(self)


def _positive(name: str, value: Any) -> None:
    try:
        ok = math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"{name} must be a positive number, got {value!r}")
