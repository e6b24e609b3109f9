"""Angular power spectra of the maps (healpy), the headline ratio and the bias on r.

Mask: the pixels observed in every map with a well-conditioned 3x3 system
(condition number below ``ImpactConfig.mask_cond_max``), apodised
with a C2 taper ``w = (1 - cos(pi d / a)) / 2`` of the angular distance ``d``
to the nearest unobserved pixel centre over ``a = apodisation_deg`` (``w = 1``
beyond).  Full sky when every pixel is observed (then no mask at all).

Spectra (:func:`map_spectra`): the I monopole over the mask (mask-weighted
mean) is removed, unobserved pixels set to 0, the maps multiplied by the mask
and ``healpy.anafast(pol=True)`` gives TT, EE, BB, TE, EB, TB, divided by
``f_sky = mean(mask^2)`` (pseudo-C_ell with the f_sky correction only: no
mode-coupling deconvolution, no E/B purification, so a partial sky leaks some
E into B), optionally by a Gaussian beam window squared; in uK_CMB^2.

Headline (:func:`band_ratio`): ``<D_ell^res> / <D_ell^BB(r=0.001)>`` over
``ell_min..ell_max``, ``D_ell = ell (ell + 1) C_ell / 2 pi``.  Bias on r
(:func:`fit_r`): least squares of the residual BB on the r = 1 tensor template
``T_ell`` with weights ``2 ell + 1``: ``r = sum w T C / sum w T^2``; no lensing,
no delensing, no foregrounds; its error is the Gaussian scatter of the residual
estimate, ``var C_ell = 2 (C_ell^map^2 + C_ell^noise^2) / ((2 ell + 1) f_sky)``
(the glitch residual is not Gaussian: an indication only).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from crab.core.errors import InputError

#: Column names of :func:`map_spectra` (healpy's order with ``pol=True``).
SPECTRA = ("TT", "EE", "BB", "TE", "EB", "TB")
K2_TO_UK2 = 1e12


def analysis_mask(seen: np.ndarray, apodisation_deg: float) -> np.ndarray:
    """Mask weights (npix,) in [0, 1] for the observed pixels ``seen`` (see the module docstring)."""
    import healpy as hp  # noqa: PLC0415
    from scipy.spatial import cKDTree  # noqa: PLC0415

    seen = np.asarray(seen, bool)
    if not seen.any():
        raise InputError("no pixel of the maps was observed: make a longer run or a lower nside")
    mask = seen.astype(np.float64)
    if seen.all() or apodisation_deg <= 0:
        return mask
    nside = hp.npix2nside(seen.size)
    vec = np.array(hp.pix2vec(nside, np.arange(seen.size))).T
    chord, _ = cKDTree(vec[~seen]).query(vec[seen])
    dist = 2 * np.arcsin(np.clip(chord / 2, 0, 1))
    a = np.radians(apodisation_deg)
    mask[seen] = np.where(dist < a, 0.5 * (1 - np.cos(np.pi * dist / a)), 1.0)
    return mask


def map_spectra(maps: np.ndarray, mask: np.ndarray, lmax: int, beam_fwhm_arcmin: float = 0.0) -> dict[str, np.ndarray]:
    """TT, EE, BB, TE, EB, TB (uK_CMB^2, ell = 0 .. lmax) of I, Q, U ``maps`` in K_CMB (see the module docstring)."""
    import healpy as hp  # noqa: PLC0415

    m = np.array(maps, dtype=np.float64)
    w = np.asarray(mask, dtype=np.float64)
    on = w > 0
    bad = ~np.isfinite(m) | (np.abs(m) > 1e29)
    if np.any(bad[:, on]):
        raise InputError("a masked-in pixel of a map is not observed")
    m[:, ~on] = 0.0
    m[0, on] -= np.sum(w[on] * m[0, on]) / np.sum(w[on])  # the monopole of I over the mask
    fsky = float(np.mean(w**2))
    cl = np.atleast_2d(hp.anafast(m * w, lmax=int(lmax), pol=True)) / fsky * K2_TO_UK2
    if beam_fwhm_arcmin > 0:
        b = hp.gauss_beam(np.radians(beam_fwhm_arcmin / 60.0), lmax=int(lmax), pol=True)
        bt, be, bb = b[:, 0], b[:, 1], b[:, 2]
        windows = (bt * bt, be * be, bb * bb, bt * be, be * bb, bt * bb)
        cl = cl / np.array(windows)
    return {name: cl[i] for i, name in enumerate(SPECTRA)}


def d_ell(cl: np.ndarray) -> np.ndarray:
    """``ell (ell + 1) C_ell / 2 pi`` for ``cl`` from ell = 0."""
    ell = np.arange(len(cl))
    return ell * (ell + 1) * np.asarray(cl) / (2 * np.pi)


def band_ratio(cl: np.ndarray, reference_cl: np.ndarray, ell_range: tuple[int, int]) -> float:
    """``<D_ell(cl)> / <D_ell(reference_cl)>`` over ``ell_range`` (inclusive)."""
    lo, hi = ell_range
    return float(np.mean(d_ell(cl)[lo : hi + 1]) / np.mean(d_ell(reference_cl)[lo : hi + 1]))


def fit_r(residual_bb: np.ndarray, template_r1: np.ndarray, ell_range: tuple[int, int], variance: np.ndarray | None = None) -> tuple[float, float | None]:
    """Least-squares amplitude of the r = 1 template in ``residual_bb`` over ``ell_range``, weights ``2 ell + 1``.

    Returns ``(r, sigma_r)``; ``sigma_r`` from ``variance`` (per-ell variance of the residual), None without it.
    """
    lo, hi = ell_range
    ell = np.arange(lo, hi + 1)
    t = np.asarray(template_r1)[lo : hi + 1]
    c = np.asarray(residual_bb)[lo : hi + 1]
    w = 2 * ell + 1.0
    norm = float(np.sum(w * t * t))
    if norm <= 0:
        raise InputError(f"the r template is zero over ell {lo}-{hi}")
    r = float(np.sum(w * t * c) / norm)
    if variance is None:
        return r, None
    v = np.asarray(variance)[lo : hi + 1]
    return r, float(np.sqrt(np.sum(w * w * t * t * v)) / norm)


def gaussian_variance(cls: Sequence[np.ndarray], fsky: float) -> np.ndarray:
    """``2 sum_i C_i^2 / ((2 ell + 1) f_sky)``: variance of the difference of independent spectra estimates."""
    ell = np.arange(len(cls[0]))
    return 2 * sum(np.asarray(c) ** 2 for c in cls) / ((2 * ell + 1) * max(fsky, 1e-12))
