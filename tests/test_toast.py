"""The TOAST 3 operator (crab.integrations.toast_operator.CrabCosmicRays).

A small TOAST satellite simulation (a few detectors, two 10-min observations
at 19 Hz from 2023-02-23, unix time 1677110400 s): the operator adds exactly
``crab generate``'s TOD of the same detectors and absolute samples, with a GAN
(random weights) and a template model with a wafer layer, on 1 and 2 MPI
processes.  Needs the ``crab-tod[toast]`` extra (skipped without it; CI
installs it and sets ``CRAB_REQUIRE_EXTRAS=1``); the MPI test needs
``crab-tod[mpi]`` too.  The check that the core never imports TOAST runs
everywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from conftest import make_synthetic_tod, require_extra, run_cli

from crab.core.errors import InputError
from crab.core.rng import detector_key

FS = 19.0
SEED = 11
MISSION_START = datetime(2023, 2, 23, tzinfo=timezone.utc)
T0 = 1677110400  # MISSION_START in unix seconds: the first sample of the first observation
N_OBS = 2
OBS_MINUTES = 10.0
MPI_WAFERS = ("A", "B", "A", "B")  # split by detector, each process holds detectors of both wafers
HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "docs" / "examples" / "toast_satellite.py"


def test_core_does_not_import_toast():
    code = (
        "import sys, crab, crab.cli, crab.integrations.injection, crab.integrations.litebird, crab.generation\n"
        "assert 'toast' not in sys.modules, 'toast imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------- a small TOAST satellite simulation
def focalplane(rate_hz=FS, n_det=4, wafers=("A", "A", "B", "B"), keys=None, factors=None):
    """``n_det`` detectors of TOAST's fake hexagon focalplane, with optional wafer, key and factor columns."""
    from astropy import units as u
    from astropy.table import Column
    from toast.instrument import Focalplane
    from toast.instrument_sim import fake_hexagon_focalplane

    table = fake_hexagon_focalplane(n_pix=7, sample_rate=rate_hz * u.Hz).detector_data[:n_det]
    if wafers is not None:
        table.add_column(Column(name="wafer", data=list(wafers)))
    if keys is not None:
        table.add_column(Column(name="crab_key", data=np.asarray(keys, np.int64)))
    if factors is not None:
        table["k_per_pw"] = np.asarray(factors) * u.K / u.pW
    return Focalplane(detector_data=table, sample_rate=rate_hz * u.Hz)


def satellite_data(fp, comm=None, groupsize=0, distribute_time=False, units=None):
    """TOAST ``Data`` of ``N_OBS`` observations of ``OBS_MINUTES`` by ``ops.SimSatellite`` (signal zero, in ``units``)."""
    import toast
    import toast.ops
    from astropy import units as u
    from toast.instrument import SpaceSite, Telescope
    from toast.schedule_sim_satellite import create_satellite_schedule

    data = toast.Data(toast.Comm(world=comm, groupsize=groupsize))
    sch = create_satellite_schedule(
        prefix="crab_", mission_start=MISSION_START, observation_time=OBS_MINUTES * u.minute, gap_time=0 * u.minute,
        num_observations=N_OBS, prec_period=5 * u.minute, spin_period=0.5 * u.minute,
    )
    sim = toast.ops.SimSatellite(
        name="sim", telescope=Telescope("crab-sat", focalplane=fp, site=SpaceSite("L2")), schedule=sch,
        distribute_time=distribute_time, det_data_units=units if units is not None else u.pW,
    )
    sim.apply(data)
    return data


def local_rows(data, key="signal"):
    """``[(observation, detector, first sample, samples of the observation, values)]`` of this process."""
    return [(ob.name, str(d), int(ob.local_index_offset), int(ob.n_all_samples), np.array(ob.detdata[key][d])) for ob in data.obs for d in ob.local_detectors]


def assemble(parts):
    """``{(observation, detector): full row}`` from the rows of every process (each sample exactly once)."""
    out, seen = {}, {}
    for name, det, first, n_all, row in parts:
        full = out.setdefault((name, det), np.zeros(n_all, row.dtype))
        count = seen.setdefault((name, det), np.zeros(n_all, int))
        full[first : first + row.size] = row
        count[first : first + row.size] += 1
    assert all(np.all(c == 1) for c in seen.values())
    return out


def expected(model_path, data, wafers=None, keys=None, seed=SEED):
    """``TodGenerator(model, seed).generate(keys, round(t0 * f_s), n)`` of each observation (float32, pW)."""
    from crab.generation import TodGenerator
    from crab.models.glitch_layer.wafer import WaferGrouping
    from crab.models.registry import load_generation_model

    out = {}
    for ob in data.obs:
        dets = [str(d) for d in ob.all_detectors]
        k = [detector_key(d) for d in dets] if keys is None else list(keys)
        gen = TodGenerator(load_generation_model(model_path), seed, n_workers=1)
        if wafers is not None:
            gen.assign_wafers(WaferGrouping.by_name(k, list(wafers)))
        t0 = float(ob.shared["times"].data[0])
        start = int(round(t0 * FS))
        assert start == round(t0) * 19  # the satellite's start times are whole unix seconds here: exact sample indices
        out[ob.name] = (start, dets, gen.generate(k, start, ob.n_all_samples))
    return out


@pytest.fixture(scope="module")
def toast_mod():
    return require_extra("toast", "toast")


@pytest.fixture(scope="module")
def template_model_path(tmp_path_factory):
    """A template model with a wafer layer: fitted on synthetic TOD with a truth table of direct and wafer hits."""
    from test_template import _truth_table

    from crab.models.template import fit_template, save_template

    tod, truth = make_synthetic_tod(n_detectors=2, n_samples=int(FS * 1800), glitch_rate_hz=0.1, seed=3)
    wafer_t = np.sort(np.random.default_rng(9).uniform(0, 1800, 80))
    t = np.arange(tod.shape[1]) / FS
    for t0 in wafer_t:
        i0 = int(np.ceil(t0 * FS))
        seg = t[i0 : i0 + 60] - t0
        tod[:, i0 : i0 + seg.size] += (0.5 * np.exp(-seg / 0.6)).astype(np.float32)
    model = fit_template(tod, _truth_table(truth, wafer_t), FS)
    assert model.wafer is not None and model.wafer.rate_hz > 0
    return save_template(model, tmp_path_factory.mktemp("tpl") / "template.json")


def _op(model, **kw):
    from crab.integrations.toast_operator import CrabCosmicRays

    return CrabCosmicRays(model=str(model), realization=SEED, n_workers=1, **kw)


# --------------------------------------------------------------------------- one process
def test_gan_added_signal_is_crab_generate(toast_mod, gan_model_dir):
    from astropy import units as u

    data = satellite_data(focalplane())
    for ob in data.obs:
        ob.detdata["signal"].data[:] = np.random.default_rng(len(ob.name)).normal(size=ob.detdata["signal"].data.shape)
    before = {ob.name: ob.detdata["signal"].data.copy() for ob in data.obs}
    op = _op(gan_model_dir, det_data="crab", det_data_units=u.pW)  # a new key: the glitches alone
    assert op.requires()["shared"] == ["times"] and op.requires()["detdata"] == ["crab"] and op.provides()["detdata"] == ["crab"]
    op.apply(data)
    _op(gan_model_dir).apply(data)  # and added to the existing signal
    ref = expected(gan_model_dir, data)  # the random-weight GAN has no wafer layer: wafers do not matter
    assert [ref[ob.name][0] for ob in data.obs] == [T0 * 19, (T0 + 600) * 19]
    for ob in data.obs:
        start, dets, g = ref[ob.name]
        assert ob.n_all_samples == int(OBS_MINUTES * 60 * FS) and list(ob.local_detectors) == dets
        crab = ob.detdata["crab"].data
        assert crab.dtype == np.float64 and ob.detdata["crab"].units == u.pW
        assert crab.astype(np.float32).tobytes() == g.tobytes() and np.array_equal(crab, g.astype(np.float64))
        assert np.any(g != 0)
        assert np.array_equal(ob.detdata["signal"].data, before[ob.name] + g.astype(np.float64))


def test_crab_generate_cli_gives_the_same_samples(toast_mod, gan_model_dir, tmp_path, capsys):
    """Detectors keyed 0..3 by a focalplane column: `crab generate --detectors 4 --start T0` is the first observation."""
    from crab.io.tod import read_tod

    data = satellite_data(focalplane(wafers=None, keys=[0, 1, 2, 3]))
    _op(gan_model_dir, key_column="crab_key").apply(data)
    ob = data.obs[0]
    n = ob.n_all_samples
    rc, _, err = run_cli(capsys, "generate", "--model", gan_model_dir, "--duration", repr(n / FS), "--start", str(T0), "--detectors", 4,
                         "--seed", SEED, "--workers", 1, "--no-progress", "--out", tmp_path / "gen.h5")
    assert rc == 0, err
    cli = read_tod(tmp_path / "gen.h5").tod
    assert cli.shape == (4, n)
    assert ob.detdata["signal"].data.astype(np.float32).tobytes() == cli.tobytes()


def test_template_wafer_grouping_from_the_focalplane(toast_mod, template_model_path):
    wafers = ("A", "A", "B", "B")
    data = satellite_data(focalplane(wafers=wafers))
    _op(template_model_path).apply(data)
    ref = expected(template_model_path, data, wafers=wafers)
    alone = satellite_data(focalplane(wafers=None))  # no wafer column: each detector keyed on its name is alone
    _op(template_model_path).apply(alone)
    ref_alone = expected(template_model_path, alone)
    for ob, ob_alone in zip(data.obs, alone.obs):
        g = ref[ob.name][2]
        assert ob.detdata["signal"].data.astype(np.float32).tobytes() == g.tobytes()
        assert ob_alone.detdata["signal"].data.astype(np.float32).tobytes() == ref_alone[ob.name][2].tobytes()
        assert not np.array_equal(g, ref_alone[ob.name][2])  # the grouping is used
    # an explicit wafer column that is not there is an error; the default one may be absent
    with pytest.raises(InputError, match="no column 'slot'"):
        _op(template_model_path, wafer_column="slot").apply(alone)


def test_units_views_and_errors(toast_mod, gan_model_dir):
    from astropy import units as u
    from toast.intervals import IntervalList

    from crab.integrations.toast_operator import CrabCosmicRays

    # K data: conversion_factor in K / pW, or per detector from a focalplane column
    data = satellite_data(focalplane(factors=[1.0, 2.0, 3.0, 4.0]), units=u.K)
    _op(gan_model_dir, conversion_factor=2.5 * u.K / u.pW).apply(data)
    ref = expected(gan_model_dir, data)
    for ob in data.obs:
        assert np.array_equal(ob.detdata["signal"].data, ref[ob.name][2].astype(np.float64) * 2.5)
    _op(gan_model_dir, conversion_factor=1 * u.K / u.pW, det_data="percol", det_data_units=u.mK, conversion_column="k_per_pw").apply(data)
    for ob in data.obs:
        np.testing.assert_allclose(ob.detdata["percol"].data, ref[ob.name][2] * np.array([1.0, 2.0, 3.0, 4.0])[:, None] * 1e3, rtol=1e-12)
    # W data with the default (dimensionless) factor: pW converted to W
    _op(gan_model_dir, det_data="watts", det_data_units=u.W).apply(data)
    np.testing.assert_allclose(data.obs[0].detdata["watts"].data, ref[data.obs[0].name][2].astype(np.float64) * 1e-12, rtol=1e-12)
    # units that do not convert, a wrong sampling rate: one-line errors
    with pytest.raises(InputError, match=r"det_data 'signal' is in K, but conversion_factor .* give it in K / pW"):
        _op(gan_model_dir).apply(data)
    with pytest.raises(InputError, match="generates 19 Hz TOD, but the TOD is sampled at 31 Hz"):
        _op(gan_model_dir, det_data_units=u.pW, det_data="x").apply(satellite_data(focalplane(rate_hz=31.0)))
    with pytest.raises(InputError, match="needs a model"):
        CrabCosmicRays(det_data_units=u.pW, det_data="x").apply(data)
    # a view: only its intervals change, with the values they get without a view
    for ob in data.obs:
        ob.intervals["some"] = IntervalList(ob.shared["times"].data, samplespans=[(100, 5000), (7000, 9000)])
    _op(gan_model_dir, det_data="viewed", det_data_units=u.pW, view="some", chunk_samples=1000).apply(data)
    inside = np.zeros(data.obs[0].n_all_samples, bool)
    inside[100:5000] = inside[7000:9000] = True
    for ob in data.obs:
        v, g = ob.detdata["viewed"].data, ref[ob.name][2].astype(np.float64)
        assert np.array_equal(v[:, inside], g[:, inside]) and np.all(v[:, ~inside] == 0)
    with pytest.raises(InputError, match="view 'nope'"):
        _op(gan_model_dir, view="nope").apply(data)


def test_example_runs(toast_mod, gan_model_dir):
    """docs/examples/toast_satellite.py, shortened: it must keep working."""
    env = {**os.environ, "CRAB_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(EXAMPLE), str(gan_model_dir), "--minutes", "5", "--realization", "3"],
                       capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "glitches added" in r.stdout


# --------------------------------------------------------------------------- MPI
MPI_WORKER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from mpi4py import MPI
    sys.path.insert(0, {here!r})
    from test_toast import MPI_WAFERS, _op, focalplane, local_rows, satellite_data

    world = MPI.COMM_WORLD
    assert world.size == 2
    out = {{}}
    for layout, groupsize, by_time in (("by_det", 2, False), ("by_time", 2, True), ("two_groups", 1, False)):
        data = satellite_data(focalplane(wafers=MPI_WAFERS), comm=world, groupsize=groupsize, distribute_time=by_time)
        _op({model!r}).apply(data)
        parts = world.gather(local_rows(data), root=0)
        if world.rank == 0:
            for rows in parts:
                out.setdefault(layout, []).extend(rows)
            assert len({{(r[0], r[1]) for r in out[layout]}}) == 8, out[layout]
    if world.rank == 0:
        import pickle
        with open(sys.argv[1], "wb") as f:
            pickle.dump(out, f)
    """
)


def test_mpi_two_processes_give_the_same_bytes(toast_mod, template_model_path, tmp_path):
    """2 MPI processes (detectors split, time split, one observation per process group) = 1 process."""
    import pickle

    from test_mpi import _mpiexec

    exe = _mpiexec()
    script = tmp_path / "worker.py"
    script.write_text(MPI_WORKER.format(here=str(HERE), model=str(template_model_path)))
    env = {**os.environ, "CRAB_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(exe), "-n", "2", sys.executable, str(script), str(tmp_path / "out.pkl")], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(tmp_path / "out.pkl", "rb") as f:
        layouts = pickle.load(f)
    serial_data = satellite_data(focalplane(wafers=MPI_WAFERS))
    _op(template_model_path).apply(serial_data)
    serial = assemble(local_rows(serial_data))
    assert len(serial) == N_OBS * 4
    ref = expected(template_model_path, serial_data, wafers=MPI_WAFERS)
    for name, (_, dets, g) in ref.items():
        for i, d in enumerate(dets):
            assert serial[(name, d)].astype(np.float32).tobytes() == g[i].tobytes()
    assert sorted(layouts) == ["by_det", "by_time", "two_groups"]
    assert {p[2] for p in layouts["by_time"]} == {0, serial_data.obs[0].n_all_samples // 2}  # really split in time
    for layout, parts in layouts.items():
        got = assemble(parts)
        assert got.keys() == serial.keys(), layout
        for k in serial:
            assert got[k].tobytes() == serial[k].tobytes(), (layout, k)


def test_flags_mark_the_generated_glitches_above_threshold(toast_mod, template_model_path):
    """det_flags gets det_flag_mask exactly where the glitch signal of the truth table exceeds flag_threshold
    (det_data units, here K with 2 K/pW), other bits untouched; a threshold in other units is an error."""
    from astropy import units as u

    from crab.generation import TodGenerator
    from crab.generation.truth import glitch_flags
    from crab.models.glitch_layer.wafer import WaferGrouping
    from crab.models.registry import load_generation_model

    wafers = ("A", "A", "B", "B")
    data = satellite_data(focalplane(wafers=wafers), units=u.K)
    for ob in data.obs:
        ob.detdata.ensure("flags", dtype=np.uint8)
        ob.detdata["flags"].data[:] = 2  # another bit, set before
    _op(template_model_path, conversion_factor=2.0 * u.K / u.pW, det_flags="flags", det_flag_mask=4, flag_threshold=0.6 * u.K).apply(data)
    for ob in data.obs:
        dets = [str(d) for d in ob.local_detectors]
        keys = [detector_key(d) for d in dets]
        gen = TodGenerator(load_generation_model(template_model_path), SEED, n_workers=1)
        gen.assign_wafers(WaferGrouping.by_name(keys, list(wafers)))
        start = int(round(float(ob.shared["times"].data[0]) * FS))
        want = glitch_flags(gen, keys, start, ob.n_local_samples, 0.3)  # 0.6 K at 2 K/pW
        got = ob.detdata["flags"].data
        assert want.any() and np.array_equal(got & 4 > 0, want) and np.all(got & 2)
    with pytest.raises(InputError, match="does not convert"):
        _op(template_model_path, det_flags="flags", flag_threshold=0.3 * u.s).apply(data)
    with pytest.raises(InputError, match="flag_threshold"):
        _op(template_model_path, det_flags="flags").apply(data)
