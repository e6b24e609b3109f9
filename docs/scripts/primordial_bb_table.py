"""Make the primordial BB table that ``crab impact`` ships (run once, at development time).

Writes ``src/crab/integrations/impact/data/primordial_bb_r0p001.csv``: the
tensor (primordial) BB power spectrum for r = 0.001, and the lensing BB of the
same cosmology for context, both as C_ell in uK_CMB^2 for ell = 0 .. 1500.

CAMB is *not* a dependency of CRAB: run this script in a scratch environment::

    python3 -m venv /tmp/cambenv && /tmp/cambenv/bin/pip install camb==2.0.5
    /tmp/cambenv/bin/python docs/scripts/primordial_bb_table.py

Cosmology: Planck 2018 best fit (TT,TE,EE+lowE+lensing, Planck 2018 results
VI, Table 2): ombh2 = 0.02237, omch2 = 0.1200, H0 = 67.36 km/s/Mpc,
tau = 0.0544, ln(10^10 A_s) = 3.044, n_s = 0.9649, one massive neutrino of
0.06 eV (CAMB's default).  Tensors: r = 0.001 at the pivot 0.05 / Mpc,
n_t from the consistency relation (n_t = -r / 8, CAMB's default), no
tensor running.  The r = 1 template of the fit in ``crab impact`` is this
table times 1000 (linear in r to 1e-4 at this n_t).
"""

from __future__ import annotations

import sys
from pathlib import Path

import camb
import numpy as np

LMAX = 1500
R = 0.001
OUT = Path(__file__).resolve().parents[2] / "src" / "crab" / "integrations" / "impact" / "data" / "primordial_bb_r0p001.csv"


def main() -> None:
    pars = camb.CAMBparams()
    pars.set_cosmology(H0=67.36, ombh2=0.02237, omch2=0.1200, tau=0.0544, mnu=0.06)
    pars.InitPower.set_params(As=np.exp(3.044) * 1e-10, ns=0.9649, r=R)
    pars.WantTensors = True
    pars.set_for_lmax(LMAX, lens_potential_accuracy=1)
    pars.max_l_tensor = LMAX
    pars.max_eta_k_tensor = 2.5 * LMAX
    res = camb.get_results(pars)
    cls = res.get_cmb_power_spectra(pars, CMB_unit="muK", raw_cl=True, lmax=LMAX)
    bb_tensor = cls["tensor"][: LMAX + 1, 2]
    bb_lensing = cls["lensed_scalar"][: LMAX + 1, 2]
    ell = np.arange(LMAX + 1)
    header = (
        f"# Primordial (tensor) BB for r = {R}, and lensing BB, C_ell in uK_CMB^2.\n"
        f"# CAMB {camb.__version__}, docs/scripts/primordial_bb_table.py: Planck 2018 best fit (TT,TE,EE+lowE+lensing),\n"
        "# ombh2 0.02237, omch2 0.1200, H0 67.36, tau 0.0544, ln(1e10 As) 3.044, ns 0.9649, mnu 0.06 eV;\n"
        "# r at k = 0.05/Mpc, nt = -r/8 (consistency), lens_potential_accuracy 1.\n"
        "ell,BB_r0p001,BB_lensing\n"
    )
    rows = "".join(f"{l},{t:.6e},{s:.6e}\n" for l, t, s in zip(ell, bb_tensor, bb_lensing))
    OUT.write_text(header + rows)
    d = lambda c, l: l * (l + 1) * c[l] / (2 * np.pi)  # noqa: E731
    print(f"wrote {OUT} with CAMB {camb.__version__}; D_ell^BB(r={R}) at ell 2, 80: {d(bb_tensor, 2):.3e}, {d(bb_tensor, 80):.3e} uK^2", file=sys.stderr)


if __name__ == "__main__":
    main()
