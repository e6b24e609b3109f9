"""`crab generate`: files, sinks, one-line errors, no output on failure or when killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
from conftest import make_synthetic_tod, run_cli
from test_generation import make_model_dir

from crab.io.tod import file_checksum

CRAB = [sys.executable, "-c", "from crab.cli import main; main()"]


class _Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def crab(capsysbinary):
    """Run `crab ...` in this process (fast: torch is already imported); returns code, stdout, stderr bytes."""
    def run(*args):
        return _Result(*run_cli(capsysbinary, *args))

    return run


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("cli_model"))


def test_file_checksum_slice_and_stdout(crab, model_dir, tmp_path):
    out = tmp_path / "gen.h5"
    r = crab("generate", "--model", model_dir, "--duration", "2h", "--detectors", 2, "--seed", 7, "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert b"Msamples/s" in r.stderr and out.exists()
    r = crab("generate", "--model", model_dir, "--duration", "2h", "--detectors", 2, "--seed", 7, "--checksum-only", "--chunk-samples", 4096)
    assert r.returncode == 0 and r.stdout.decode().strip() == file_checksum(out)
    r = crab("generate", "--model", model_dir, "--duration", "10min", "--start", "30min", "--detectors", 2, "--seed", 7, "--out", tmp_path / "s.h5")
    assert r.returncode == 0, r.stderr
    with h5py.File(out) as f, h5py.File(tmp_path / "s.h5") as g:
        s0 = int(round(1800 * 19.0))
        assert np.array_equal(g["tod"][()], f["tod"][:, s0 : s0 + int(600 * 19.0)])
    r = crab("generate", "--model", model_dir, "--duration", "100s", "--seed", 7, "--out", "-")
    assert r.returncode == 0
    with h5py.File(out) as f:
        assert np.array_equal(np.frombuffer(r.stdout, "<f4"), f["tod"][0, :1900])


def _one_line_error(r):
    err = r.stderr.decode().strip()
    assert r.returncode == 2 and err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_bad_models_give_one_line_errors_and_no_file(crab, model_dir, tmp_path):
    out = tmp_path / "x.h5"
    assert "not found" in _one_line_error(crab("generate", "--model", tmp_path / "missing", "--duration", "1h", "--out", out))
    assert "31 Hz" in _one_line_error(crab("generate", "--model", model_dir, "--duration", "1h", "--sampling-rate", 31, "--out", out))
    d = torch.load(f"{model_dir}/model.pt", weights_only=True)
    for name, payload in [("old", {**d, "format_version": 99, "crab_version": "0.0.1"}), ("alien", {**d, "model_config": {**d["model_config"], "kernel_size": 4}})]:
        (tmp_path / name).mkdir()
        torch.save(payload, tmp_path / name / "model.pt")
        _one_line_error(crab("generate", "--model", tmp_path / name, "--duration", "1h", "--out", out))
    assert "--out" in _one_line_error(crab("generate", "--model", model_dir, "--duration", "1h"))
    assert not out.exists() and list(tmp_path.glob(".x.h5*")) == []
    out.write_bytes(b"keep")
    assert "exists" in _one_line_error(crab("generate", "--model", model_dir, "--duration", "1h", "--out", out))
    assert out.read_bytes() == b"keep"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_leaves_nothing_under_the_final_name(model_dir, tmp_path, sig):
    out = tmp_path / "big.h5"
    p = subprocess.Popen([*CRAB, "generate", "--model", model_dir, "--duration", "3y", "--out", str(out), "--no-progress"], stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while not list(tmp_path.glob(".big.h5.tmp-*")) and time.time() < deadline:
            time.sleep(0.1)
        assert list(tmp_path.glob(".big.h5.tmp-*")), "the run never started writing"
        time.sleep(0.5)
        p.send_signal(sig)
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert not out.exists()
    if sig == signal.SIGTERM:  # a terminated run also removes its temporary file
        assert p.returncode != 0 and list(tmp_path.glob(".big.h5.tmp-*")) == []


def test_template_method_fit_save_and_reuse(crab, tmp_path):
    from crab.io.tod import EventTable, TodMetadata, default_detector_names, write_tod

    tod, truth = make_synthetic_tod(n_detectors=2, n_samples=19 * 1800, seed=2)
    n = len(truth["time_s"])
    ev = EventTable(time_s=truth["time_s"], detector=truth["detector"], charge_z=np.ones(n), energy_kev=truth["amplitude"], kind=np.zeros(n))
    mc = write_tod(tmp_path / "mc.h5", tod, TodMetadata(sampling_rate_hz=19.0, detectors=default_detector_names(2)), ev)
    tpl = tmp_path / "tpl.json"
    r = crab("generate", "--method", "template", "--fit", mc, "--save-template", tpl, "--duration", "1h", "--detectors", 2, "--seed", 1, "--out", tmp_path / "t.h5")
    assert r.returncode == 0, r.stderr
    assert tpl.exists()
    with h5py.File(tmp_path / "t.h5") as f:
        assert f.attrs["kind"] == "template" and f["tod"].shape == (2, 19 * 3600)
        assert len(f["events/time_s"]) > 0 and set(f["events/detector"][()]) <= {0, 1}  # the generated glitches' truth
    r = crab("generate", "--model", tpl, "--duration", "1h", "--detectors", 2, "--seed", 1, "--checksum-only")
    assert r.returncode == 0 and r.stdout.decode().strip() == file_checksum(tmp_path / "t.h5")
    assert "template" in _one_line_error(crab("generate", "--method", "template", "--duration", "1h", "--checksum-only"))
