"""litebird_sim-readable files (crab.io.litebird_layout, ``crab export``).

The layout checks run everywhere; the round trips through
``litebird_sim.read_list_of_observations`` need the ``crab-tod[litebird]``
extra (skipped without it; CI installs it).
"""

from __future__ import annotations

import os
import json
import subprocess

import h5py
import numpy as np
import pytest

from conftest import require_extra

from crab.io import litebird_layout as export
from crab.io import tod as tod_io
from crab.core.errors import InputError

FS = 19.0
NAMES = ["W00_D000", "W00_D001", "W00_D002"]


@pytest.fixture
def crab_file(tmp_path):
    tod = np.random.default_rng(1).normal(size=(3, 1234)).astype(np.float32)
    meta = tod_io.TodMetadata(sampling_rate_hz=FS, detectors=NAMES, start_time_s=3600.0, kind="gan", config={"x": 1}, seed=4)
    ev = tod_io.EventTable(time_s=[3601.0], detector=[1], charge_z=[1], energy_kev=[50.0], kind=[0])
    path = tod_io.write_tod(tmp_path / "gen.h5", tod, meta, events=ev)
    return path, tod, meta


def test_layout_keeps_a_valid_crab_file(crab_file):
    path, tod, meta = crab_file
    export.make_litebird_readable(path)
    f = tod_io.read_tod(path)
    assert np.array_equal(f.tod, tod)
    assert f.meta.detectors == NAMES and f.meta.units == "pW" and f.meta.start_time_s == 3600.0 and f.meta.seed == 4
    assert f.events is not None and len(f.events) == 1
    with h5py.File(path) as h:
        a = h["tod"].attrs
        assert a["units"] == "ADU" and "pW" in a["description"] and not a["mjd_time"]
        assert a["sampling_rate_hz"] == FS and a["start_time"] == 3600.0
        dets = json.loads(a["detectors"])
        assert [d["name"] for d in dets] == NAMES and all(d["bandcenter_ghz"] > 0 for d in dets)
        assert json.loads(h.attrs["det_idx"]) == [0, 1, 2] and h.attrs["mpi_size"] == 1
        for i in range(3):
            assert np.array_equal(h[f"rot_quaternion_{i:04d}"][()], [[0, 0, 0, 1]])
        assert "pointing_provider_rot_quaternion" in h


def test_export_converts_units(crab_file, tmp_path):
    path, tod, meta = crab_file
    out = export.export_tod(path, tmp_path / "k.h5", conversion_factor=2.5, units="K_CMB")
    f = tod_io.read_tod(out)
    assert np.array_equal(f.tod, (tod.astype(np.float64) * 2.5).astype(np.float32))
    assert f.meta.units == "K_CMB" and f.meta.config["export"]["conversion_factor"] == 2.5
    assert f.events is not None
    with h5py.File(out) as h:
        assert h["tod"].attrs["units"] == "K_CMB"
    with pytest.raises(InputError, match="needs the unit"):
        export.export_tod(path, tmp_path / "x.h5", conversion_factor=2.0)
    with pytest.raises(InputError, match="not a litebird_sim Units"):
        export.export_tod(path, tmp_path / "x.h5", units="pW")
    with pytest.raises(InputError, match="is the input"):
        export.export_tod(path, path)
    assert not (tmp_path / "x.h5").exists()


def test_cli_export(crab_file, tmp_path, capsys):
    from crab.cli import main

    path, tod, _ = crab_file

    def crab(*args):
        with pytest.raises(SystemExit) as e:
            main([str(a) for a in args])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, e.value.code, out.out, out.err)

    r = crab("export", path, tmp_path / "out.h5")
    assert r.returncode == 0, r.stderr
    assert np.array_equal(tod_io.read_tod(tmp_path / "out.h5").tod, tod)
    r = crab("export", path, tmp_path / "out.h5")
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and "--overwrite" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = crab("export", path, tmp_path / "c.h5", "--conversion-factor", "3")
    assert r.returncode == 2 and "units" in r.stderr
    r = crab("export", path, "--in-place")
    assert r.returncode == 0, r.stderr
    with h5py.File(path) as h:
        assert "pointing_provider_rot_quaternion" in h
    r = crab("export", tmp_path / "missing.h5", tmp_path / "m.h5")
    assert r.returncode == 2 and "not found" in r.stderr
    assert not (tmp_path / "m.h5").exists()


# --------------------------------------------------------------------------- litebird_sim reads it
@pytest.fixture(scope="module")
def lbs():
    return require_extra("litebird_sim", "litebird")


def test_litebird_reads_exported_file(lbs, crab_file, tmp_path):
    path, tod, meta = crab_file
    out = export.export_tod(path, tmp_path / "lbs.h5")
    (obs,) = lbs.read_list_of_observations([out])
    assert obs.tod.dtype == np.float32 and obs.tod.tobytes() == tod.tobytes()
    assert list(obs.name) == NAMES
    assert obs.sampling_rate_hz == FS and obs.start_time == 3600.0 and obs.n_samples == tod.shape[1]
    assert obs.tod_list[0].units == lbs.Units.ADU
    k = export.export_tod(path, tmp_path / "k.h5", conversion_factor=9.0, units="K_CMB")
    (obs,) = lbs.read_list_of_observations([k])
    assert obs.tod_list[0].units == lbs.Units.K_CMB
    assert np.array_equal(obs.tod, (tod.astype(np.float64) * 9.0).astype(np.float32))


def test_litebird_round_trip_of_simulated_observation(lbs, tmp_path):
    """A litebird_sim observation -> CRAB glitches -> CRAB file -> litebird_sim reader: the same TOD."""
    from crab.integrations import litebird as cl
    from crab.physics.noise import NoiseGenerator, NoiseParams

    imo = lbs.Imo(flatfile_location=lbs.PTEP_IMO_LOCATION)
    sim = lbs.Simulation(imo=imo, base_path=str(tmp_path / "sim"), start_time=0.0, duration_s=120.0, random_seed=3)
    dets = [lbs.DetectorInfo(name=n, sampling_rate_hz=FS, bandcenter_ghz=140.0, bandwidth_ghz=42.0) for n in NAMES[:2]]
    (obs,) = sim.create_observations(detectors=dets)
    gen = NoiseGenerator(NoiseParams(), FS, seed=3, stream="template_noise", block_samples=256)
    cl.apply_cosmic_rays_to_observations(obs, gen, user_seed=3)
    meta = tod_io.TodMetadata(sampling_rate_hz=FS, detectors=list(obs.name), start_time_s=float(obs.start_time), kind="gan")
    path = tod_io.write_tod(tmp_path / "crab.h5", obs.tod, meta)
    export.make_litebird_readable(path, detectors_info=[{**d.__dict__, "quat": None} for d in dets])
    (back,) = lbs.read_list_of_observations([path])
    assert back.tod.tobytes() == obs.tod.tobytes()
    assert list(back.name) == NAMES[:2] and back.bandcenter_ghz[0] == 140.0


def test_litebird_reads_mpi_output_and_parts(lbs, tmp_path):
    """The virtual file of an MPI run reads as one observation; its parts as one observation per rank."""
    require_extra("mpi4py", "mpi")
    from test_mpi import N_DET, N_SAMPLES, _run, _serial

    r = _run(tmp_path, "litebird")
    assert r.returncode == 0, r.stderr
    ref = tod_io.read_tod(_serial(tmp_path)).tod
    (whole,) = lbs.read_list_of_observations([tmp_path / "out.h5"])
    assert whole.tod.shape == (N_DET, N_SAMPLES) and whole.tod.tobytes() == ref.tobytes()
    parts = sorted((tmp_path / "out.h5.parts").glob("part-*.h5"))
    obs = lbs.read_list_of_observations(parts, limit_mpi_rank=False)
    assert len(obs) == 2
    for o in obs:
        rows = o.det_idx
        start = int(round((o.start_time - 12.5) * 19.0))
        assert np.array_equal(o.tod, ref[rows, start : start + o.n_samples])
