"""Bad input is always a clean error, and no option ever deletes what the user did not make (issue 21).

Every case: exit status 2, one ``error:`` line on stderr, no traceback, nothing under the
final name and no temporary left beside it.  Cases that need a folder the user cannot
write use ``/sys`` (a file system where even root may not create files) and skip where
it is not so; the other causes outside CRAB (a full disk) are provoked by monkeypatching.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import make_synthetic_tod, run_cli
from test_cli_train import FAST, write_config
from test_generation import make_model_dir

from crab.cli import main
from crab.core.paths import temporary_path
from crab.io.tod import TodMetadata, default_detector_names, write_tod
from crab.models.gan.store import (
    TRAINING_RECORD_KEY,
    TRAINING_STATE_FILE,
    write_training_state,
)

BIG_SEED = str(2**64)
CRAB = [sys.executable, "-c", "from crab.cli import main; main()"]


def _sys_denied() -> bool:
    """Whether creating a file in /sys fails (it does on Linux, even for root)."""
    try:
        (Path("/sys") / f".crab-probe-{os.getpid()}").open("wb").close()
    except OSError:
        return True
    return False


SYS_DENIED = _sys_denied()


def assert_clean_error(code, err, expect=None):
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err, err
    if expect is not None:
        assert expect in lines[0], lines[0]
    return lines[0]


def no_temporaries(*folders):
    for d in folders:
        if Path(d).is_dir():
            left = [p.name for p in Path(d).iterdir() if ".tmp-" in p.name]
            assert not left, left


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Inputs shared by the cases: models, TOD files, a plain file, training data."""
    d = tmp_path_factory.mktemp("inputs")
    tod, _ = make_synthetic_tod(n_detectors=2, n_samples=19 * 120)
    meta = TodMetadata(sampling_rate_hz=19.0, detectors=default_detector_names(2), kind="montecarlo", seed=0)
    mc = write_tod(d / "mc.h5", tod, meta)
    bad = tod.copy()
    bad[1, 100] = np.nan
    nan = write_tod(d / "nan.h5", bad, meta)
    np.savez(d / "zeros.npz", tod=np.zeros((2, 19 * 100), np.float32), sampling_rate_hz=19.0)
    np.savez(d / "data.npz", tod=tod, sampling_rate_hz=19.0)
    (d / "plain.txt").write_text("not a folder\n")
    report = d / "not_a_report"
    report.mkdir()
    (report / "mine.txt").write_text("mine\n")
    unfinished = Path(make_model_dir(d / "unfinished"))
    payload = torch.load(unfinished / "model.pt", weights_only=True)
    payload["extra"] = {**payload["extra"], "epoch": 3, TRAINING_RECORD_KEY: TRAINING_STATE_FILE}
    torch.save(payload, unfinished / "model.pt")
    write_training_state(unfinished, finished=False, epoch=5, epochs=90)
    foreign_run = d / "foreign_run"
    foreign_run.mkdir()
    (foreign_run / "mc_train.h5").write_bytes(b"the user's own file")
    return {
        "M": make_model_dir(d / "model"), "PHI": make_model_dir(d / "phi_model", cond_dim=1), "UNF": str(unfinished),
        "MC": str(mc), "NAN": str(nan), "ZERO": str(d / "zeros.npz"), "NPZ": str(d / "data.npz"),
        "FILE": str(d / "plain.txt"), "NOREPORT": str(report), "FOREIGN_RUN": str(foreign_run), "IN": str(d),
    }


# (id, arguments with {placeholders}: {T} is the case's own empty folder, the rest are `inputs`;
#  the final name that must not appear, or None; a part of the expected message)
CASES = [
    # --- simulate
    ("simulate-disk-1e6y", "simulate --duration 1e6y --out {T}/x.h5 --no-progress", "{T}/x.h5", "of disk space"),
    ("simulate-duration-1e30y", "simulate --duration 1e30y --out {T}/x.h5 --no-progress", "{T}/x.h5", "2^53"),
    ("simulate-seed-2^64", f"simulate --duration 60 --seed {BIG_SEED} --out {{T}}/x.h5", "{T}/x.h5", "18446744073709551615"),
    ("simulate-seed-negative", "simulate --duration 60 --seed -1 --out {T}/x.h5", "{T}/x.h5", "--seed"),
    ("simulate-unwritable", "simulate --duration 60 --out /sys/crab_x.h5 --no-progress", "/sys/crab_x.h5", "/sys"),
    ("simulate-parent-is-file", "simulate --duration 60 --out {FILE}/x.h5", "{FILE}/x.h5", "not a folder"),
    ("simulate-missing-folder", "simulate --duration 60 --out {T}/no/x.h5", "{T}/no/x.h5", "does not exist"),
    ("simulate-bad-duration", "simulate --duration 3parsecs --out {T}/x.h5", "{T}/x.h5", "duration"),
    ("simulate-zero-duration", "simulate --duration 0 --out {T}/x.h5", "{T}/x.h5", "positive"),
    ("simulate-zero-detectors", "simulate --detectors 0 --out {T}/x.h5", "{T}/x.h5", "at least 1"),
    ("simulate-exists", "simulate --duration 60 --out {MC}", None, "--overwrite"),
    ("simulate-missing-config", "simulate --duration 60 --config {T}/none.json --out {T}/x.h5", "{T}/x.h5", "none.json"),
    # --- generate
    ("generate-memory-1e9-detectors", "generate --model {M} --duration 60 --detectors 1000000000 --out {T}/x.h5", "{T}/x.h5", "of memory"),
    ("generate-memory-checksum", "generate --model {M} --duration 60 --detectors 1000000000 --checksum-only", None, "of memory"),
    ("generate-disk-1e6y", "generate --model {M} --duration 1e6y --out {T}/x.h5", "{T}/x.h5", "of disk space"),
    ("generate-duration-1e30y", "generate --model {M} --duration 1e30y --out {T}/x.h5", "{T}/x.h5", "2^53"),
    ("generate-duration-1e30y-checksum", "generate --model {M} --duration 1e30y --checksum-only", None, "2^53"),
    ("generate-start-1e30y", "generate --model {M} --duration 60 --start 1e30y --checksum-only", None, "2^53"),
    ("generate-seed-2^64", f"generate --model {{M}} --duration 60 --seed {BIG_SEED} --out {{T}}/x.h5", "{T}/x.h5", "18446744073709551615"),
    ("generate-unknown-condition", "generate --model {PHI} --cond bogus=1 --duration 60 --out {T}/x.h5", "{T}/x.h5", "unknown condition 'bogus'"),
    ("generate-condition-not-number", "generate --model {PHI} --cond phi=high --duration 60 --out {T}/x.h5", "{T}/x.h5", "not a number"),
    ("generate-unwritable", "generate --model {M} --duration 60 --out /sys/crab_x.h5", "/sys/crab_x.h5", "/sys"),
    ("generate-parent-is-file", "generate --model {M} --duration 60 --out {FILE}/x.h5", "{FILE}/x.h5", "not a folder"),
    ("generate-unfinished-model", "generate --model {UNF} --duration 60 --out {T}/x.h5", "{T}/x.h5", "epoch 3"),
    ("generate-missing-model", "generate --model {T}/none --duration 60 --out {T}/x.h5", "{T}/x.h5", "not found"),
    ("generate-wrong-rate", "generate --model {M} --duration 60 --sampling-rate 31 --out {T}/x.h5", "{T}/x.h5", "31 Hz"),
    ("generate-out-and-checksum", "generate --model {M} --duration 60 --out {T}/x.h5 --checksum-only", "{T}/x.h5", "not both"),
    ("generate-missing-duration", "generate --model {M} --out {T}/x.h5", "{T}/x.h5", "--duration"),
    ("generate-unknown-option", "generate --model {M} --duration 60 --detector 4 --out {T}/x.h5", "{T}/x.h5", "--detector"),
    ("generate-zero-chunk", "generate --model {M} --duration 60 --chunk-samples 0 --out {T}/x.h5", "{T}/x.h5", "at least 1"),
    # --- export
    ("export-nan-at-100", "export {NAN} {T}/x.h5", "{T}/x.h5", "sample 100 "),
    ("export-same-file", "export {MC} {MC}", None, "--in-place"),
    ("export-same-file-overwrite", "export {MC} {MC} --overwrite", None, "--in-place"),
    ("export-unwritable", "export {MC} /sys/crab_x.h5", "/sys/crab_x.h5", "/sys"),
    ("export-parent-is-file", "export {MC} {FILE}/x.h5", "{FILE}/x.h5", "not a folder"),
    ("export-missing-input", "export {T}/none.h5 {T}/x.h5", "{T}/x.h5", "not found"),
    # --- train
    ("train-overwrite-data-folder", "train --data {IN}/data.npz --out {IN} --overwrite --epochs 1 --quiet", "{IN}/model.pt", "did not write"),
    ("train-all-zero-data", "train --data {ZERO} --out {T}/m --epochs 1 --quiet", "{T}/m", "no variance"),
    ("train-unwritable", "train --data {NPZ} --out /sys/crab_model --epochs 1 --quiet", "/sys/crab_model", "/sys"),
    ("train-parent-is-file", "train --data {NPZ} --out {FILE}/m --epochs 1 --quiet", "{FILE}/m", "not a folder"),
    ("train-seed-2^64", f"train --data {{NPZ}} --out {{T}}/m --seed {BIG_SEED}", "{T}/m", "18446744073709551615"),
    ("train-missing-data", "train --data {T}/none.h5 --out {T}/m --epochs 1 --quiet", "{T}/m", "none.h5"),
    ("train-resume-nothing", "train --data {NPZ} --out {T}/m --resume --quiet", "{T}/m", "no checkpoint"),
    # --- inspect
    ("inspect-plot-unwritable", "inspect {MC} --plot /sys/crab_plots", "/sys/crab_plots", "/sys"),
    ("inspect-plot-parent-is-file", "inspect {MC} --plot {FILE}/plots", "{FILE}/plots", "not a folder"),
    ("inspect-missing-file", "inspect {T}/none.h5", None, "not found"),
    # --- validate, validate-phi
    ("validate-into-foreign-folder", "validate -r {MC} -s {MC} -o {NOREPORT} --no-plots", "{NOREPORT}/metrics.json", "metrics.json"),
    ("validate-seed-2^64", f"validate -r {{MC}} -s {{MC}} -o {{T}}/r --seed {BIG_SEED}", "{T}/r", "18446744073709551615"),
    ("validate-missing-reference", "validate -r {T}/none.h5 -s {MC} -o {T}/r", "{T}/r", "none.h5"),
    ("validate-phi-unfinished-model", "validate-phi --model {UNF} -r {MC} -o {T}/r", "{T}/r", "--allow-unfinished"),
    # --- run
    ("run-fresh-foreign-folder", "run --fresh --out {IN}", "{IN}/pipeline.json", "did not write"),
    ("run-resume-foreign-folder", "run --out {FOREIGN_RUN}", "{FOREIGN_RUN}/pipeline.json", "no pipeline.json"),
    ("run-seed-beyond-offsets", f"run --out {{T}}/r --seed {2**64 - 1}", "{T}/r", "--seed"),
    ("run-disk-1e6y", "run --out {T}/r --generate-duration 1e6y", "{T}/r", "of disk space"),
    ("run-duration-1e30y", "run --out {T}/r --train-duration 1e30y", "{T}/r", "2^53"),
    ("run-unknown-train-option", "run --out {T}/r --train-option bogus=1", "{T}/r", "unknown training options ['bogus']"),
    ("run-unwritable", "run --out /sys/crab_run", "/sys/crab_run", "/sys"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clean_error(case, inputs, tmp_path, capsys):
    _, args, final, expect = case
    if "/sys/" in args and not SYS_DENIED:
        pytest.skip("/sys accepts files here: no folder to provoke a permission error with")
    fill = {**inputs, "T": str(tmp_path)}
    before = sorted(p.name for p in Path(inputs["IN"]).iterdir())
    final_path = None if final is None else Path(final.format(**fill))
    assert final_path is None or not final_path.exists()
    code, _, err = run_cli(capsys, *args.format(**fill).split())
    assert_clean_error(code, err, expect)
    assert final_path is None or not final_path.exists(), f"{final_path} was made"
    assert sorted(p.name for p in Path(inputs["IN"]).iterdir()) == before  # nothing of the user's removed, nothing added
    no_temporaries(tmp_path, inputs["IN"])


def test_bad_inputs_cover_every_command():
    commands = {c[1].split()[0] for c in CASES}
    assert commands == {"simulate", "generate", "export", "train", "inspect", "validate", "validate-phi", "run"}
    assert len(CASES) >= 40


def test_seed_range_is_in_help(capsys):
    for command in ("simulate", "generate", "train", "validate"):
        code, out, _ = run_cli(capsys, command, "--help")
        assert code == 0 and "0<=x<=18446744073709551615" in out.replace("\n", " ").replace(" ", ""), command


def test_largest_seed_works(inputs, tmp_path, capsys):
    out = tmp_path / "g.h5"
    code, _, err = run_cli(capsys, "generate", "--model", inputs["M"], "--duration", 60, "--seed", 2**64 - 1, "--out", out, "--no-progress")
    assert code == 0, err
    with h5py.File(out) as f:
        assert int(f.attrs["seed"]) == 2**64 - 1


# --------------------------------------------------------------------------- causes outside CRAB
@pytest.mark.parametrize("kind", ["python", "h5py"])
def test_full_disk_during_a_write_is_one_line(inputs, tmp_path, capsys, monkeypatch, kind):
    import crab.io.tod as tod_io

    def full(self, chunk):
        if kind == "python":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self._tmp))
        raise OSError(f"Can't write data (file write failed: time = now, filename = '{self._tmp}', file descriptor = 5, errno = 28, "
                      "error message = 'No space left on device', buf = 0x1, total write size = 4, bytes this sub-write = 4, offset = 0)")

    monkeypatch.setattr(tod_io.TodWriter, "write", full)
    out = tmp_path / "x.h5"
    code, _, err = run_cli(capsys, "generate", "--model", inputs["M"], "--duration", 60, "--out", out, "--no-progress")
    line = assert_clean_error(code, err, "no space left")
    assert f"{out}:" in line and ".tmp-" not in line  # the file the user asked for, not the temporary
    assert not out.exists()
    no_temporaries(tmp_path)


def test_permission_denied_check_names_the_folder(inputs, tmp_path, capsys, monkeypatch):
    """Where chmod works (not root) the check before any work refuses the folder; as root it is provoked here."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == tmp_path else real(p, mode, *a, **k))
    for args in (["simulate", "--duration", 60, "--out", tmp_path / "x.h5"],
                 ["generate", "--model", inputs["M"], "--duration", 60, "--out", tmp_path / "x.h5"],
                 ["export", inputs["MC"], tmp_path / "x.h5"],
                 ["train", "--data", inputs["NPZ"], "--out", tmp_path / "m", "--quiet"],
                 ["inspect", inputs["MC"], "--plot", tmp_path / "plots"]):
        code, _, err = run_cli(capsys, *args)
        assert_clean_error(code, err, f"cannot write in folder {tmp_path}")
    assert list(tmp_path.iterdir()) == []


def test_an_oserror_that_is_a_bug_still_shows_its_traceback(inputs, tmp_path, monkeypatch):
    import crab.io.tod as tod_io

    monkeypatch.setattr(tod_io.TodWriter, "write", lambda self, chunk: (_ for _ in ()).throw(OSError("an internal failure")))
    with pytest.raises(OSError, match="internal failure"):
        main(["generate", "--model", inputs["M"], "--duration", "60", "--out", str(tmp_path / "x.h5"), "--no-progress"])


# --------------------------------------------------------------------------- --overwrite and --fresh
def _train(capsys, data, out, *extra):
    fast = write_config(Path(out).parent / "fast.toml")
    return run_cli(capsys, "train", "--data", data, "--out", out, "--epochs", 1, "--seed", 1, "--config", fast, *FAST, *extra)


def test_overwrite_keeps_what_crab_did_not_write(inputs, tmp_path, capsys):
    data = tmp_path / "data.npz"
    shutil.copy(inputs["NPZ"], data)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    # the probe: --data DIR/data.h5 --out DIR --overwrite
    code, _, err = _train(capsys, data, tmp_path, "--overwrite")
    assert_clean_error(code, err, "did not write (data.npz, notes.txt)")
    assert data.exists() and notes.read_text() == "my notes\n" and not (tmp_path / "model.pt").exists()

    # a model folder that CRAB wrote is replaced; a file the user added to it stops that
    model = tmp_path / "model"
    code, _, err = _train(capsys, data, model)
    assert code == 0, err
    (model / "snapshots" / "epoch_0001").mkdir(parents=True)
    (model / "snapshots" / "epoch_0001" / "model.pt").write_bytes((model / "model.pt").read_bytes())
    stale = temporary_path(model / "checkpoint.pt").with_name(".checkpoint.pt.tmp-999999999-deadbeef")
    stale.write_bytes(b"left by a killed run")
    mine = model / "snapshots" / "mine.txt"
    mine.write_text("mine\n")
    code, _, err = _train(capsys, data, model, "--overwrite")
    assert_clean_error(code, err, "snapshots/mine.txt")
    assert mine.exists() and (model / "model.pt").exists()
    mine.unlink()
    code, _, err = _train(capsys, data, model, "--overwrite")
    assert code == 0, err
    assert not stale.exists() and not (model / "snapshots").exists()  # an earlier run's snapshots and leftovers are gone
    assert data.exists() and notes.exists()

    # a folder of files named like a model's but without its run record is not CRAB's
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "model.pt").write_bytes(b"someone else's model")
    code, _, err = _train(capsys, data, fake, "--overwrite")
    assert_clean_error(code, err, "no config.json run record")
    assert (fake / "model.pt").read_bytes() == b"someone else's model"


def test_fresh_keeps_what_crab_did_not_write(tmp_path, capsys):
    from crab.core.provenance import run_record, write_json
    from crab.pipeline import check_run_dir, run_pipeline

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    data = run_dir / "data.h5"
    data.write_bytes(b"training data")
    notes = run_dir / "notes.txt"
    notes.write_text("mine\n")
    # the probe: crab run --fresh --out DIR on a folder that holds no pipeline output
    code, _, err = run_cli(capsys, "run", "--fresh", "--out", run_dir, "--no-progress")
    assert_clean_error(code, err, "did not write (data.h5, notes.txt)")
    with pytest.raises(Exception, match="did not write"):
        run_pipeline(run_dir=run_dir, fresh=True, progress=False, log=lambda s: None)
    assert data.read_bytes() == b"training data" and notes.exists()

    # a run folder of CRAB's outputs only: --fresh removes them all (and only them)
    done = tmp_path / "done"
    (done / "model" / "snapshots" / "epoch_0010").mkdir(parents=True)
    (done / "report").mkdir()
    write_json(done / "pipeline.json", run_record({}, 1))
    write_json(done / "model" / "config.json", run_record({}, 1))
    for f in ("mc_train.h5", "mc_heldout.h5", "mc_heldout_2.h5", "gan.h5", "template.json", "model/model.pt",
              "model/snapshots/epoch_0010/model.pt", "report/metrics.json", "report/report.md", "report/rate.png"):
        (done / f).write_bytes(b"x")
    assert sorted(p.name for p in check_run_dir(done, fresh=True) if p.is_file())[:3] == ["config.json", "gan.h5", "mc_heldout.h5"]
    (done / "report" / "mine.md").write_text("mine\n")
    with pytest.raises(Exception, match="report/mine.md"):
        check_run_dir(done, fresh=True)
    (done / "report" / "mine.md").unlink()
    from crab.core.paths import remove_contents

    remove_contents(check_run_dir(done, fresh=True))
    assert list(done.iterdir()) == []


# --------------------------------------------------------------------------- leftovers
def test_killed_generation_leaves_nothing_a_rerun_keeps(inputs, tmp_path):
    out = tmp_path / "gen.h5"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([*CRAB, "generate", "--model", inputs["M"], "--duration", "30d", "--detectors", "4", "--workers", "1",
                          "--out", str(out), "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not any(".gen.h5.tmp-" in q.name for q in tmp_path.iterdir()):
            time.sleep(0.05)
        left = [q.name for q in tmp_path.iterdir()]
        assert any(".gen.h5.tmp-" in n for n in left), "the run never started writing"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert not out.exists() and any(".gen.h5.tmp-" in q.name for q in tmp_path.iterdir())  # kill -9 leaves the temporary
    r = subprocess.run([*CRAB, "generate", "--model", inputs["M"], "--duration", "60", "--out", str(out), "--no-progress"],
                       check=False, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert [q.name for q in tmp_path.iterdir()] == ["gen.h5"]  # the rerun removed it


def test_live_temporaries_are_kept(tmp_path):
    from crab.core.paths import clean_stale_temporaries

    mine = temporary_path(tmp_path / "x.h5")
    mine.write_bytes(b"being written by this process")
    dead = tmp_path / ".x.h5.tmp-999999999-h000000-0123abcd"
    dead.write_bytes(b"another host's")
    gone = tmp_path / ".x.h5.tmp-999999999-0123abcd"
    gone.write_bytes(b"a killed run's (a name without the host tag)")
    other = tmp_path / ".y.h5.tmp-999999999-0123abcd"
    other.write_bytes(b"another output's")
    assert clean_stale_temporaries(tmp_path, "x.h5") == [gone]
    assert mine.exists() and dead.exists() and other.exists()


def test_unfinished_training_is_refused_until_finished(inputs, tmp_path, capsys, monkeypatch):
    from crab.models.gan.history import History

    out = tmp_path / "m"
    orig = History.save

    def killed(self, out_dir, plot=True):
        orig(self, out_dir, plot=plot)
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as mp:
        mp.setattr(History, "save", killed)
        code, _, _ = _train(capsys, inputs["NPZ"], out, "--epochs", 2)
    assert code == 130 and (out / "model.pt").exists()
    state = json.loads((out / TRAINING_STATE_FILE).read_text())
    assert state == {"finished": False, "epoch": 1, "epochs": 2}
    gen = tmp_path / "g.h5"
    code, _, err = run_cli(capsys, "generate", "--model", out, "--duration", 60, "--out", gen)
    assert_clean_error(code, err, "holds epoch 1 of a training that did not finish (it stopped after epoch 1 of 2)")
    assert not gen.exists()
    code, _, err = run_cli(capsys, "generate", "--model", out, "--duration", 60, "--out", gen, "--allow-unfinished", "--no-progress")
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "--data", inputs["NPZ"], "--out", out, "--resume", "--quiet")
    assert code == 0, err
    assert json.loads((out / TRAINING_STATE_FILE).read_text())["finished"] is True
    code, _, err = run_cli(capsys, "generate", "--model", out, "--duration", 60, "--out", gen, "--overwrite", "--no-progress")
    assert code == 0, err


def test_snapshots_and_selected_models_of_a_finished_training_are_usable(inputs, tmp_path, capsys):
    from crab.models.gan.store import load_model

    out = tmp_path / "m"
    code, _, err = _train(capsys, inputs["NPZ"], out, "--epochs", 2, "--snapshot-every", 1)
    assert code == 0, err
    for snap in sorted((out / "snapshots").iterdir()):
        assert load_model(snap).extra[TRAINING_RECORD_KEY] == TRAINING_STATE_FILE
    shutil.copyfile(out / "snapshots" / "epoch_0001" / "model.pt", out / "model.pt")  # what --select-with does
    assert load_model(out).extra["epoch"] == 1
    write_training_state(out, finished=False, epoch=2, epochs=3)  # resumed to more epochs, then killed
    with pytest.raises(Exception, match="did not finish"):
        load_model(out / "snapshots" / "epoch_0001")


# --------------------------------------------------------------------------- sizes are computed
def test_plan_memory_per_detector_is_an_upper_bound(inputs):
    import tracemalloc

    from crab.generation import TodGenerator, load_generation_model
    from crab.generation.engine import PLAN_BYTES_PER_DETECTOR
    from crab.io.tod import TodChecksum

    g = TodGenerator(load_generation_model(inputs["M"]), 1, n_workers=1)
    n = 20000
    tracemalloc.start()
    try:
        rows = g._rows(n)
        keys = list(dict.fromkeys(k for k, _ in rows))
        row_of: dict = {k: [] for k in keys}
        for i, (k, r) in enumerate(rows):
            row_of[k].append((i, r))
        names = g.detector_names(n)
        meta = TodMetadata(sampling_rate_hz=19.0, detectors=names)
        text = json.dumps(meta.detectors)
        check = TodChecksum(n)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert row_of and text and check
    assert peak / n < PLAN_BYTES_PER_DETECTOR


def test_file_size_is_computed(tmp_path):
    from crab.io.tod import tod_file_bytes

    tod, _ = make_synthetic_tod(n_detectors=3, n_samples=50000)
    p = write_tod(tmp_path / "x.h5", tod, TodMetadata(sampling_rate_hz=19.0, detectors=default_detector_names(3)))
    size = p.stat().st_size
    assert 3 * 50000 * 4 <= size <= tod_file_bytes(3, 50000)


def test_validate_keeps_a_report_folder_that_holds_a_users_file(tmp_path):
    """A report folder is replaced only when it holds nothing but a report (metrics.json, report.md, PNGs)."""
    from crab.cli import main

    out = tmp_path / "report"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    (out / "my_notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as e:
        main(["validate", "-r", str(tmp_path / "ref.h5"), "-s", str(tmp_path / "syn.h5"), "-o", str(out)])
    assert e.value.code == 2
    assert (out / "my_notes.txt").read_text() == "mine" and (out / "metrics.json").exists()
