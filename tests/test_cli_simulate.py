"""``crab simulate`` and ``crab inspect`` end to end (in-process, short runs)."""

from __future__ import annotations

import numpy as np
import pytest

from crab.cli import main
from crab.io.tod import read_tod


def run(argv, capsys):
    """Run the CLI; return (exit code, stdout, stderr)."""
    code = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_simulate_then_inspect_with_plots(tmp_path, capsys):
    out = tmp_path / "mc.h5"
    code, stdout, err = run(
        ["simulate", "--duration", "1min", "--detectors", "2", "--sampling-rate", "19", "--phi", "0.8", "--seed", "1", "--out", str(out), "--no-progress"],
        capsys,
    )
    assert code == 0, err
    assert "wrote" in stdout and out.exists()
    f = read_tod(out)
    assert f.tod.shape == (2, 60 * 19) and f.meta.seed == 1 and f.meta.config["phi_gv"] == 0.8
    assert f.events is not None and len(f.events) > 0
    code, stdout, err = run(["inspect", str(out), "--plot", str(tmp_path / "plots"), "--length", "30s"], capsys)
    assert code == 0, err
    for needle in ("duration:", "60 s", "detectors:", "2", "sampling rate:", "19 Hz", "direct", "wafer"):
        assert needle in stdout
    n_direct = int(np.sum(f.events.kind == 0))
    assert f"direct {n_direct}" in stdout
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == ["energy_spectrum.png", "tod_stretch.png"]
    assert all((tmp_path / "plots" / p).stat().st_size > 10_000 for p in pngs)


def test_same_seed_same_file_contents_and_config_reuse(tmp_path, capsys):
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    args = ["simulate", "--duration", "30", "--detectors", "1", "--seed", "7", "--no-progress", "--shield-g-cm2", "3"]
    assert run(args + ["--out", str(a)], capsys)[0] == 0
    assert run(args + ["--out", str(b), "--chunk", "7s"], capsys)[0] == 0
    assert read_tod(a).tod.tobytes() == read_tod(b).tod.tobytes()
    assert a.read_bytes() == b.read_bytes()  # the whole file, attributes and truth included
    # the configuration stored in a file can be reused
    assert run(["simulate", "--duration", "30", "--seed", "7", "--no-progress", "--config", str(a), "--out", str(c)], capsys)[0] == 0
    assert read_tod(c).tod.tobytes() == read_tod(a).tod.tobytes()
    assert read_tod(c).meta.config["shield"]["areal_density_g_cm2"] == 3.0


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--duration", "-10"], "duration"),
        (["--duration", "ten minutes"], "duration"),
        (["--duration", "5parsecs"], "unit"),
        (["--detectors", "0"], "--detectors"),
        (["--sampling-rate", "50000"], "sampling rate"),
        (["--sampling-rate", "0"], "--sampling-rate"),
        (["--phi", "-1"], "phi"),
        (["--seed", "-3"], "--seed"),
        (["--detectors", "500"], "do not fit"),
    ],
)
def test_simulate_bad_input_one_line_error_no_output(tmp_path, capsys, extra, needle):
    out = tmp_path / "x.h5"
    code, stdout, err = run(["simulate", "--out", str(out), "--no-progress", "--duration", "10"] + extra, capsys)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert list(tmp_path.iterdir()) == []


def test_simulate_refuses_to_overwrite_unless_asked(tmp_path, capsys):
    out = tmp_path / "x.h5"
    out.write_bytes(b"keep me")
    code, _, err = run(["simulate", "--duration", "10", "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and "exists" in err and out.read_bytes() == b"keep me"
    code, _, err = run(["simulate", "--duration", "10", "--out", str(out), "--no-progress", "--overwrite"], capsys)
    assert code == 0, err
    assert read_tod(out).tod.shape == (4, 190)
    code, _, err = run(["simulate", "--duration", "10", "--out", str(tmp_path / "nodir" / "y.h5"), "--no-progress"], capsys)
    assert code == 2 and "does not exist" in err


def test_inspect_missing_or_corrupt_file(tmp_path, capsys):
    code, _, err = run(["inspect", str(tmp_path / "missing.h5")], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "not found" in err
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x00garbage" * 100)
    code, _, err = run(["inspect", str(bad), "--plot", str(tmp_path / "p")], capsys)
    assert code == 2 and err.startswith("error:") and "HDF5" in err
    assert not (tmp_path / "p").exists()


def test_inspect_file_without_truth(tmp_path, capsys, synthetic_tod_file):
    path = synthetic_tod_file(n_detectors=1, n_samples=19 * 60)
    code, stdout, err = run(["inspect", str(path)], capsys)
    assert code == 0, err
    assert "no truth table" in stdout and "60 s" in stdout
