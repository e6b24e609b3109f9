"""A small TOAST 3 satellite simulation with CRAB cosmic-ray glitches.

Builds a 14-detector focalplane (TOAST's fake hexagon, 7 pixels) sampled at
19 Hz on two wafers, scans it from L2 with ``toast.ops.SimSatellite``, adds
instrumental noise in K_CMB (``DefaultNoiseModel`` + ``SimNoise``), then the
glitches of a CRAB model with :class:`crab.integrations.toast_operator.CrabCosmicRays`,
converted to K_CMB with a top-hat estimate of the detectors' responsivity.

Usage (a model trained at 19 Hz, e.g. by ``crab run``)::

    python docs/examples/toast_satellite.py crab_run/model --minutes 60 --realization 7
    mpirun -n 2 python docs/examples/toast_satellite.py crab_run/model   # the same glitches

Needs ``pip install 'crab-tod[toast]'``.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone

import numpy as np
import toast
import toast.ops
from astropy import units as u
from astropy.table import Column
from toast.instrument import Focalplane, SpaceSite, Telescope
from toast.instrument_sim import fake_hexagon_focalplane
from toast.schedule_sim_satellite import create_satellite_schedule

from crab.integrations.litebird import kcmb_per_pw
from crab.integrations.toast_operator import CrabCosmicRays

SAMPLE_RATE = 19.0 * u.Hz  # the rate the CRAB model was trained at


def make_telescope() -> Telescope:
    """14 detectors (7 pixels x 2 polarisations) at 150 GHz, pixels 0-3 on wafer W0 and 4-6 on W1."""
    fp = fake_hexagon_focalplane(n_pix=7, sample_rate=SAMPLE_RATE, psd_net=50e-6 * u.K * np.sqrt(1 * u.s), psd_fknee=20 * u.mHz)
    table = fp.detector_data
    table.add_column(Column(name="wafer", data=["W0" if int(p[1:]) < 4 else "W1" for p in table["pixel"]]))
    return Telescope("crab-sat", focalplane=Focalplane(detector_data=table, sample_rate=SAMPLE_RATE), site=SpaceSite("L2"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="CRAB model: a `crab train` directory or a template .json (19 Hz)")
    ap.add_argument("--minutes", type=float, default=60.0, help="length of each of the two observations (min)")
    ap.add_argument("--realization", type=int, default=0, help="the CRAB seed (`crab generate --seed`)")
    args = ap.parse_args()

    data = toast.Data(toast.Comm())  # every process of MPI_COMM_WORLD, when run under MPI
    schedule = create_satellite_schedule(
        prefix="crab_",
        mission_start=datetime(2025, 6, 1, tzinfo=timezone.utc),
        observation_time=args.minutes * u.minute,
        gap_time=0 * u.minute,
        num_observations=2,
        prec_period=10 * u.minute,
        spin_period=1 * u.minute,
    )
    toast.ops.SimSatellite(name="sim", telescope=make_telescope(), schedule=schedule).apply(data)  # det_data "signal" in K
    toast.ops.DefaultNoiseModel(name="noise_model").apply(data)
    toast.ops.SimNoise(name="noise", realization=args.realization).apply(data)

    before = {ob.name: ob.detdata["signal"].data.copy() for ob in data.obs}
    k_per_pw = kcmb_per_pw(150.0, 20.0, optical_efficiency=0.3)  # K_CMB per pW: use the instrument's calibration if known
    crab = CrabCosmicRays(name="crab", model=args.model, realization=args.realization, conversion_factor=k_per_pw * u.K / u.pW, n_workers=1)
    crab.apply(data)

    rank = data.comm.world_rank
    for ob in data.obs:
        added = ob.detdata["signal"].data - before[ob.name]
        t0 = float(ob.shared["times"].data[0]) if ob.n_local_samples else float("nan")
        print(
            f"rank {rank}: {ob.name}: glitches added to {len(ob.local_detectors)} detectors x {ob.n_local_samples} samples "
            f"from t = {t0:.1f} s (CRAB absolute sample {round(t0 * SAMPLE_RATE.to_value(u.Hz))}), "
            f"largest {float(np.max(added)) if added.size else 0.0:.3g} K_CMB"
        )


if __name__ == "__main__":
    main()
