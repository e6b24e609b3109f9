"""The primordial BB spectrum for r = 0.001 shipped with CRAB (no download at run time).

``data/primordial_bb_r0p001.csv`` holds, for ell = 0 .. 1500, the tensor BB
power spectrum C_ell for r = 0.001 and the lensing BB of the same cosmology
(uK_CMB^2), computed once with CAMB 2.0.5 for the Planck 2018 best-fit
cosmology by ``docs/scripts/primordial_bb_table.py`` (its header says how;
``docs/impact.md`` too).  CAMB is not a dependency of CRAB.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np

from crab.core.errors import InputError

#: The tensor-to-scalar ratio of the shipped table.
R_TABLE = 0.001
TABLE = "primordial_bb_r0p001.csv"


@dataclass(frozen=True)
class ReferenceSpectra:
    """C_ell (uK_CMB^2) from ell = 0.

    Attributes
    ----------
    ell : ndarray of int
    bb_r0p001 : ndarray
        Tensor BB for r = 0.001.
    bb_lensing : ndarray
        Lensing BB (context only: the r fit of ``crab impact`` assumes none).
    source : str
        The table's header (how it was made).
    """

    ell: np.ndarray
    bb_r0p001: np.ndarray
    bb_lensing: np.ndarray
    source: str

    def bb_primordial(self, r: float, lmax: int) -> np.ndarray:
        """Tensor BB for ``r`` (the table scaled linearly), ell = 0 .. ``lmax``."""
        if lmax >= self.ell.size:
            raise InputError(f"the shipped primordial BB table stops at ell = {self.ell.size - 1}, below lmax = {lmax}")
        return self.bb_r0p001[: lmax + 1] * (float(r) / R_TABLE)


def load_reference() -> ReferenceSpectra:
    """Read the shipped table (see the module docstring)."""
    text = resources.files("crab.integrations.impact").joinpath("data", TABLE).read_text()
    header = "\n".join(line[1:].strip() for line in text.splitlines() if line.startswith("#"))
    rows = [line for line in text.splitlines() if line and not line.startswith("#")]
    names = rows[0].split(",")
    data = np.array([[float(v) for v in line.split(",")] for line in rows[1:]])
    col = {n: data[:, i] for i, n in enumerate(names)}
    ell = col["ell"].astype(np.int64)
    if not np.array_equal(ell, np.arange(ell.size)):
        raise InputError(f"{TABLE}: ell must run 0, 1, 2 ... without gaps")
    return ReferenceSpectra(ell=ell, bb_r0p001=col["BB_r0p001"], bb_lensing=col["BB_lensing"], source=header)
