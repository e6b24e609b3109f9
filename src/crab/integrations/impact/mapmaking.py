"""Binned map-making accumulated chunk by chunk, and litebird_sim's destriper for short runs.

The binned map-maker of litebird_sim (``make_binned_map``, Kurki-Suonio et
al. 2009) solves, in every pixel ``p``, the 3x3 system

    sum_t w_t P_t^T P_t  m_p = sum_t w_t P_t^T d_t,    P_t = (1, g cos 2psi_t, g sin 2psi_t),

with ``w_t = 1 / (f_s NET^2)`` the detector's weight, ``g`` its polarisation
efficiency and ``psi_t`` the angle of its polarisation on the sky.  It needs
every observation in memory at once.  :class:`BinnedAccumulator` builds the
same sums one chunk at a time (``numpy.bincount`` over the chunk's pixels), so
that a month of TOD never is in memory, and :meth:`BinnedAccumulator.solve`
solves them as litebird_sim does: pixels whose matrix has a condition number
above :data:`COND_THRESHOLD` (litebird_sim's) are ``UNSEEN``.
``tests/test_impact.py`` checks that the result equals ``make_binned_map``
on observations it can hold.

One accumulator holds one pointing matrix (a set of samples) and several TOD
components binned with it (the glitch TOD, the white noise of the comparison
maps); the deglitched maps use a second one, whose samples exclude the flagged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Pixels whose 3x3 matrix has a larger condition number are not solved (litebird_sim's value).
COND_THRESHOLD = 1e10
#: healpy's mark of an unobserved pixel.
UNSEEN = -1.6375e30
#: The six independent entries of the symmetric 3x3 matrix, as (row, column).
_UPPER = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


class BinnedAccumulator:
    """Normal equations of the binned map-maker, summed over samples given chunk by chunk.

    Parameters
    ----------
    nside : int
        HEALPix resolution (RING ordering).
    components : sequence of str
        Names of the TOD components binned with this pointing matrix.
    """

    def __init__(self, nside: int, components: Sequence[str]) -> None:
        self.nside = int(nside)
        self.npix = 12 * self.nside * self.nside
        self.components = list(components)
        self.matrix = np.zeros((6, self.npix))  # II IQ IU QQ QU UU
        self.rhs = {c: np.zeros((3, self.npix)) for c in self.components}
        self.hits = np.zeros(self.npix, np.int64)
        self.n_samples = 0

    def add(
        self,
        pixels: np.ndarray,
        psi_rad: np.ndarray,
        weight: float,
        tods: Mapping[str, np.ndarray],
        *,
        pol_efficiency: float = 1.0,
        keep: np.ndarray | None = None,
    ) -> None:
        """Add the samples of one detector.

        Parameters
        ----------
        pixels : ndarray of int, shape (n,)
            Pixel of each sample.
        psi_rad : ndarray, shape (n,)
            Polarisation angle of each sample on the sky (rad): the detector's angle plus
            the pointing's orientation.
        weight : float
            The detector's weight, ``1 / (f_s NET^2)`` in litebird_sim's units (the maps do
            not depend on a common factor).
        tods : mapping of str to ndarray, shape (n,)
            One timeline per component of this accumulator.
        pol_efficiency : float
            The detector's polarisation efficiency ``g``.
        keep : ndarray of bool, shape (n,), optional
            Samples to use (default: all).
        """
        pix = np.asarray(pixels)
        c = np.cos(2 * psi_rad) * pol_efficiency
        s = np.sin(2 * psi_rad) * pol_efficiency
        w = np.full(pix.shape, float(weight))
        if keep is not None:
            w = w * keep
        wc, ws = w * c, w * s
        cols = (w, wc, ws, wc * c, wc * s, ws * s)
        for k, col in enumerate(cols):
            self.matrix[k] += np.bincount(pix, weights=col, minlength=self.npix)
        missing = set(self.components) - set(tods)
        if missing:
            raise KeyError(f"no TOD for component(s) {sorted(missing)}")
        for name in self.components:
            d = np.asarray(tods[name], dtype=np.float64)
            r = self.rhs[name]
            for k, col in enumerate((w, wc, ws)):
                r[k] += np.bincount(pix, weights=col * d, minlength=self.npix)
        used = pix if keep is None else pix[np.asarray(keep, bool)]
        self.hits += np.bincount(used, minlength=self.npix)
        self.n_samples += int(used.size)

    def full_matrix(self) -> np.ndarray:
        """The (npix, 3, 3) matrices."""
        m = np.empty((self.npix, 3, 3))
        for k, (i, j) in enumerate(_UPPER):
            m[:, i, j] = m[:, j, i] = self.matrix[k]
        return m

    def condition_number(self) -> np.ndarray:
        """Condition number of each pixel's matrix (largest over smallest eigenvalue; inf when singular)."""
        ev = np.linalg.eigvalsh(self.full_matrix())
        with np.errstate(divide="ignore", invalid="ignore"):
            cond = ev[:, 2] / ev[:, 0]
        cond[~(ev[:, 0] > 0)] = np.inf
        return cond

    def seen(self) -> np.ndarray:
        """Pixels whose system is solved (condition number below :data:`COND_THRESHOLD`, as litebird_sim)."""
        ev = np.linalg.eigvalsh(self.full_matrix())
        return ev[:, 2] < COND_THRESHOLD * ev[:, 0]

    def inverse(self) -> np.ndarray:
        """``(npix, 3, 3)`` inverse matrices (the white-noise covariance of each pixel in units of the
        sample variance times the weight); zeros where not :meth:`seen`."""
        m = self.full_matrix()
        ok = self.seen()
        inv = np.zeros_like(m)
        inv[ok] = np.linalg.inv(m[ok])
        return inv

    def solve(self, component: str) -> np.ndarray:
        """I, Q, U maps ``(3, npix)`` of ``component`` (TOD units); ``UNSEEN`` where not :meth:`seen`."""
        m = self.full_matrix()
        ok = self.seen()
        out = np.full((3, self.npix), UNSEEN)
        if ok.any():
            out[:, ok] = np.linalg.solve(m[ok], self.rhs[component][:, ok].T[..., None])[..., 0].T
        return out


def destripe(lbs: Any, observations: list, nside: int, coordinate_system: Any, baseline_samples: int) -> tuple[np.ndarray, dict[str, Any]]:
    """litebird_sim's destriper (``make_destriped_map``) on ``observations``' ``tod``.

    Every observation's TOD must be in memory, and the destriper keeps a pixel index
    and an angle per sample (about 20 bytes per sample in all): for short runs.

    Returns
    -------
    maps : ndarray (3, npix)
        The destriped I, Q, U maps (``UNSEEN`` where unobserved).
    info : dict
        Convergence and memory of the run.
    """
    params = lbs.DestriperParameters(output_coordinate_system=coordinate_system, samples_per_baseline=int(baseline_samples))
    res = lbs.make_destriped_map(nside, observations, params=params, callback=None)
    maps = np.array(res.destriped_map, dtype=np.float64)
    bad = ~np.isfinite(maps) | (maps == UNSEEN) | (res.hit_map[None, :] == 0)
    maps[bad] = UNSEEN
    info = {
        "converged": bool(res.converged) if not isinstance(res.converged, str) else res.converged,
        "stopping_factor": None if res.stopping_factor is None else float(res.stopping_factor),
        "baseline_samples": int(baseline_samples),
        "bytes_in_temporary_buffers": int(res.bytes_in_temporary_buffers),
    }
    return maps, info
