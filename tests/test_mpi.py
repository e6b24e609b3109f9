"""MPI distribution (crab.generation.mpi): work split, serial path, and real runs under ``mpiexec -n 2``.

The ``mpiexec`` tests need the ``crab-tod[mpi]`` extra (mpi4py + the mpich
wheel, which puts ``mpiexec`` beside the Python interpreter); they are skipped
without it, and CI installs it so that they run there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import require_extra

from crab.generation import mpi
from crab.io import tod as tod_io
from crab.core.errors import InputError
from crab.physics.noise import NoiseGenerator, NoiseParams

FS = 19.0
N_DET = 5
N_SAMPLES = 3001  # not a multiple of anything: uneven tiles
CHUNK = 256
SEED = 7


# --------------------------------------------------------------------------- pure functions
@pytest.mark.parametrize("n_ranks", [1, 2, 3, 4, 5, 6, 7, 12])
def test_plan_tiles_cover_grid_exactly_once(n_ranks):
    tiles = mpi.plan_tiles(n_ranks, N_DET, N_SAMPLES, align_samples=CHUNK)
    assert [t.rank for t in tiles] == list(range(n_ranks))
    cover = np.zeros((N_DET, N_SAMPLES), int)
    for t in tiles:
        cover[t.det_start : t.det_stop, t.sample_start : t.sample_stop] += 1
        if not t.empty and t.sample_start:
            assert t.sample_start % CHUNK == 0
    assert np.all(cover == 1)


def test_split_grid_prefers_detectors():
    assert mpi.split_grid(4, 4500, 10**9) == (4, 1)
    assert mpi.split_grid(6, 4, 10**6) == (3, 2)  # 3 detector blocks, 2 time blocks
    assert mpi.split_grid(7, 4, 10**6) == (1, 7)
    with pytest.raises(InputError):
        mpi.split_grid(0, 4, 10)


def test_world_is_none_without_launcher(monkeypatch):
    for v in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "CRAB_MPI"):
        monkeypatch.delenv(v, raising=False)
    assert mpi.launcher_size() is None
    assert mpi.world() is None
    monkeypatch.setenv("PMI_SIZE", "4")
    assert mpi.launcher_size() == 4
    monkeypatch.setenv("CRAB_MPI", "0")
    assert mpi.world() is None


def test_world_without_mpi4py_says_how_to_install(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.delenv("CRAB_MPI", raising=False)
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails
    with pytest.raises(Exception, match=r"crab-tod\[mpi\]"):
        mpi.world()


def _tile_fn():
    gen = NoiseGenerator(NoiseParams(white_asd=0.1, f_knee_hz=0.05), FS, seed=SEED, stream="template_noise", block_samples=512)
    return lambda rows, start, n: gen.generate_many([int(r) for r in rows], start, n)


def _meta():
    return tod_io.TodMetadata(sampling_rate_hz=FS, detectors=tod_io.default_detector_names(N_DET), start_time_s=12.5, kind="template", config={"a": 1}, seed=SEED)


def test_serial_write_equals_direct_generation(tmp_path):
    out = mpi.write_distributed(tmp_path / "s.h5", _meta(), N_SAMPLES, _tile_fn(), chunk_samples=CHUNK, progress=False)
    f = tod_io.read_tod(out)
    direct = _tile_fn()(np.arange(N_DET), 0, N_SAMPLES)
    assert f.tod.tobytes() == direct.astype(np.float32).tobytes()
    assert f.meta.detectors == _meta().detectors and f.meta.start_time_s == 12.5
    with pytest.raises(InputError, match="exists"):
        mpi.write_distributed(out, _meta(), N_SAMPLES, _tile_fn(), overwrite=False)


def test_root_attrs_match_todwriter(tmp_path):
    meta = _meta()
    tod_io.write_tod(tmp_path / "a.h5", np.zeros((N_DET, 3), np.float32), meta)
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5", "w") as b:
        b.create_dataset("tod", data=np.zeros((N_DET, 3), np.float32))
        mpi.write_root_attrs(b, meta)
        assert dict(a.attrs) == dict(b.attrs)
        assert dict(a["tod"].attrs) == dict(b["tod"].attrs)


# --------------------------------------------------------------------------- under mpiexec
def _mpiexec() -> str:
    require_extra("mpi4py", "mpi")
    local = Path(sys.executable).parent / "mpiexec"
    exe = str(local) if local.exists() else shutil.which("mpiexec")
    if exe is None:
        msg = "no mpiexec (install the crab-tod[mpi] extra: mpi4py + mpich)"
        pytest.fail(msg) if os.environ.get("CRAB_REQUIRE_EXTRAS", "") not in ("", "0") else pytest.skip(msg)
    return exe


WORKER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from crab.generation import mpi
    from crab.io import tod as tod_io
    from crab.core.errors import CrabError
    from crab.physics.noise import NoiseGenerator, NoiseParams

    out, mode = sys.argv[1], sys.argv[2]
    comm = mpi.world()
    assert comm is not None and comm.Get_size() == int(sys.argv[3]), "not running under MPI"
    gen = NoiseGenerator(NoiseParams(white_asd=0.1, f_knee_hz=0.05), {fs}, seed={seed}, stream="template_noise", block_samples=512)

    def tile_fn(rows, start, n):
        if mode == "fail" and comm.Get_rank() == 1:
            raise ValueError("boom on purpose in rank " + str(comm.Get_rank()))
        return gen.generate_many([int(r) for r in rows], start, n)

    meta = tod_io.TodMetadata(sampling_rate_hz={fs}, detectors=tod_io.default_detector_names({n_det}),
                              start_time_s=12.5, kind="template", config={{"a": 1}}, seed={seed})
    try:
        mpi.write_distributed(out, meta, {n_samples}, tile_fn, comm=comm, chunk_samples={chunk},
                              consolidate=(mode == "consolidate"), litebird=({{}} if mode == "litebird" else None), checksum=True, progress=False)
    except CrabError as exc:
        print(f"error: {{exc}}", file=sys.stderr)
        sys.exit(2)
    """
).format(fs=FS, seed=SEED, n_det=N_DET, n_samples=N_SAMPLES, chunk=CHUNK)


def _run(tmp_path: Path, mode: str, n: int = 2) -> subprocess.CompletedProcess:
    exe = _mpiexec()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "CRAB_PROGRESS": "0"}
    env.pop("CRAB_MPI", None)
    return subprocess.run([exe, "-n", str(n), sys.executable, str(script), str(tmp_path / "out.h5"), mode, str(n)], capture_output=True, text=True, timeout=180, env=env)


def _serial(tmp_path: Path) -> Path:
    return mpi.write_distributed(tmp_path / "serial.h5", _meta(), N_SAMPLES, _tile_fn(), chunk_samples=CHUNK, checksum=True, progress=False)


def test_mpiexec_two_ranks_bitwise_identical_to_serial(tmp_path):
    r = _run(tmp_path, "ok")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out.h5"
    serial = _serial(tmp_path)
    with h5py.File(out) as a, h5py.File(serial) as b:
        assert a["tod"].is_virtual and len(a["tod"].virtual_sources()) == 2
        assert a["tod"].shape == b["tod"].shape and a["tod"].dtype == b["tod"].dtype
        assert a["tod"][()].tobytes() == b["tod"][()].tobytes()
        assert a["tod"].attrs["checksum_sha256"] == b["tod"].attrs["checksum_sha256"] == mpi.file_checksum(serial)
        attrs_a = {k: v for k, v in a.attrs.items() if k != "crab_parts"}
        assert attrs_a.keys() == dict(b.attrs).keys()
        for k in attrs_a:
            assert np.all(attrs_a[k] == b.attrs[k]), k
        parts = json.loads(a.attrs["crab_parts"])
    assert parts["n_ranks"] == 2 and len(parts["tiles"]) == 2
    # the crab reader reads the assembled file, and each part is a crab file of its tile
    whole = tod_io.read_tod(out)
    for t in parts["tiles"]:
        p = tod_io.read_tod(mpi.parts_dir(out) / mpi.part_name(t["rank"]))
        assert p.tod.tobytes() == whole.tod[t["det_start"] : t["det_stop"], t["sample_start"] : t["sample_stop"]].tobytes()
        assert np.isclose(p.meta.start_time_s, 12.5 + t["sample_start"] / FS)
    # nothing else left behind (no temporary files or folders)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out.h5", "out.h5.parts", "serial.h5", "worker.py"]
    # moved together with its parts folder, the file still reads (paths are relative)
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(str(out), moved / "out.h5")
    shutil.move(str(mpi.parts_dir(out)), moved / "out.h5.parts")
    assert tod_io.read_tod(moved / "out.h5").tod.tobytes() == whole.tod.tobytes()


@pytest.mark.slow
def test_mpiexec_consolidated_single_file(tmp_path):
    r = _run(tmp_path, "consolidate")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out.h5"
    assert not mpi.parts_dir(out).exists()
    with h5py.File(out) as a, h5py.File(_serial(tmp_path)) as b:
        assert not a["tod"].is_virtual
        assert a["tod"][()].tobytes() == b["tod"][()].tobytes()


def test_mpiexec_failing_rank_leaves_nothing_and_names_rank(tmp_path):
    r = _run(tmp_path, "fail")
    assert r.returncode != 0
    assert "rank 1 of 2 failed: ValueError: boom on purpose in rank 1" in r.stderr, r.stderr
    assert "no output was written" in r.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["worker.py"], "a failed run left files behind"


@pytest.mark.slow
def test_mpiexec_failure_keeps_previous_output(tmp_path):
    assert _run(tmp_path, "ok").returncode == 0
    before = tod_io.read_tod(tmp_path / "out.h5").tod.tobytes()
    r = _run(tmp_path, "fail")
    assert r.returncode != 0 and "rank 1 of 2 failed" in r.stderr
    assert tod_io.read_tod(tmp_path / "out.h5").tod.tobytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out.h5", "out.h5.parts", "worker.py"]


# --------------------------------------------------------------------------- the real generator under mpiexec
def write_template_model(path: Path) -> Path:
    """A small template model (the TOAST-like baseline of crab.models.template), written as JSON."""
    from crab.models.template import GlitchPopulation, TemplateModel, save_template
    from crab.models.glitch_layer.shapes import QUANTILE_P

    q = len(QUANTILE_P)
    model = TemplateModel(
        sampling_rate_hz=FS,
        noise_params=NoiseParams(white_asd=0.01, f_knee_hz=0.02),
        direct=GlitchPopulation("direct", 0.05, list(np.geomspace(0.05, 5.0, q)), list(np.geomspace(0.02, 0.5, q))),
        wafer=GlitchPopulation("wafer", 0.01, list(np.geomspace(0.05, 1.0, q)), list(np.geomspace(0.05, 0.3, q))),
    )
    return save_template(model, path)


GEN_WORKER = textwrap.dedent(
    """
    import sys
    from crab.generation import mpi
    from crab.core import rng
    from crab.io import tod as tod_io
    from crab.generation import TodGenerator, load_generation_model

    model_path, out, consolidate = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    comm = mpi.world()
    assert comm is not None and comm.Get_size() == 2
    gen = TodGenerator(load_generation_model(model_path), seed=5)
    names = ["A"]  # one detector: the two ranks split time
    keys = [rng.detector_key(n) for n in names]
    s0, n = 19 * 7, 50000
    meta = tod_io.TodMetadata(sampling_rate_hz=19.0, detectors=names, start_time_s=s0 / 19.0, kind=gen.kind, seed=5)
    stats = mpi.generate_distributed(gen, out, meta, keys, s0, n, comm=comm, chunk_samples=4096, consolidate=consolidate, progress=False, truth=True)
    if comm.Get_rank() == 0:
        print("CHECKSUM", stats.checksum, stats.settings["mpi_ranks"])
    """
)


def test_mpiexec_generation_matches_single_process_generate_to_file(tmp_path):
    """mpiexec -n 2 with the real generator (template baseline), one detector split in time between the ranks,
    equals crab.generation.generate_to_file in one process (bytes and checksum)."""
    gen_mod = pytest.importorskip("crab.generation")
    exe = _mpiexec()
    from crab.core import rng

    model = write_template_model(tmp_path / "template.json")
    script = tmp_path / "gen_worker.py"
    script.write_text(GEN_WORKER)
    out = tmp_path / "mpi.h5"
    env = {**os.environ, "CRAB_PROGRESS": "0"}
    r = subprocess.run([exe, "-n", "2", sys.executable, str(script), str(model), str(out), "0"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    names = ["A"]
    stats = gen_mod.generate_to_file(
        gen_mod.TodGenerator(gen_mod.load_generation_model(model), 5), tmp_path / "serial.h5", 50000 / FS, [rng.detector_key(n) for n in names],
        start_s=7.0, detector_names=names, progress=False,
    )
    with h5py.File(out) as a, h5py.File(stats.path) as b:
        assert a["tod"].is_virtual
        assert a["tod"].shape == b["tod"].shape == (1, 50000)
        tiles = json.loads(a.attrs["crab_parts"])["tiles"]
        assert [(t["sample_start"], t["sample_stop"]) for t in tiles] == [(0, 24576), (24576, 50000)]
        assert a["tod"][()].tobytes() == b["tod"][()].tobytes()
        assert a["tod"].attrs["checksum_sha256"] == b["tod"].attrs["checksum_sha256"] == stats.checksum
        # the truth of the generated glitches: the same rows on 2 ranks as in one process
        assert len(b["events/time_s"]) > 0 and sorted(a["events"]) == sorted(b["events"])
        for k in b["events"]:
            assert np.array_equal(a["events"][k][()], b["events"][k][()], equal_nan=True), k
    assert f"CHECKSUM {stats.checksum} 2" in r.stdout
    assert tod_io.file_checksum(out) == stats.checksum


def test_mpiexec_crab_generate_cli_matches_single_process(tmp_path):
    """``mpiexec -n 2 crab generate`` == ``crab generate`` (generate_to_file's MPI file sink)."""
    exe = _mpiexec()
    crab_exe = Path(sys.executable).parent / "crab"
    model = write_template_model(tmp_path / "template.json")
    args = ["generate", "--model", str(model), "--duration", "1h", "--start", "10s", "--detectors", "3", "--seed", "5", "--chunk-samples", "8192", "--no-progress"]
    env = {**os.environ, "CRAB_PROGRESS": "0"}
    r1 = subprocess.run([str(crab_exe), *args, "--out", str(tmp_path / "one.h5")], capture_output=True, text=True, timeout=300, env=env)
    assert r1.returncode == 0, r1.stderr
    r2 = subprocess.run([exe, "-n", "2", str(crab_exe), *args, "--out", str(tmp_path / "two.h5")], capture_output=True, text=True, timeout=300, env=env)
    assert r2.returncode == 0, r2.stderr
    assert r2.stderr.count("->") == 1, "the summary should be printed by rank 0 only:\n" + r2.stderr
    with h5py.File(tmp_path / "one.h5") as a, h5py.File(tmp_path / "two.h5") as b:
        assert b["tod"].is_virtual and len(b["tod"].virtual_sources()) == 2
        assert a["tod"][()].tobytes() == b["tod"][()].tobytes()
        assert a["tod"].attrs["checksum_sha256"] == b["tod"].attrs["checksum_sha256"]
        assert a.attrs["detectors"] == b.attrs["detectors"] and a.attrs["start_time_s"] == b.attrs["start_time_s"]
