"""``crab validate`` on files: report folder, PNG plots, one-line errors."""

from __future__ import annotations

import json

import h5py
import pytest
from click.testing import CliRunner

from crab.cli import cli, main

FS = 19.0


@pytest.fixture
def files(synthetic_tod_file):
    n = int(FS * 600)
    return {
        "ref": synthetic_tod_file("ref.h5", n_detectors=2, n_samples=n, seed=1),
        "gen": synthetic_tod_file("gen.h5", n_detectors=2, n_samples=n, seed=3),
        "tpl": synthetic_tod_file("tpl.h5", n_detectors=2, n_samples=n, seed=4, glitch_rate_hz=0.0),
        "train": synthetic_tod_file("train.h5", n_detectors=2, n_samples=n, seed=2),
    }


def test_validate_writes_report_with_plots(files, tmp_path):
    out = tmp_path / "report"
    res = CliRunner().invoke(
        cli,
        ["validate", "--reference", str(files["ref"]), "--synthetic", f"gan={files['gen']}", "--synthetic", str(files["tpl"]), "--training", str(files["train"]), "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert "gan:" in res.output and "tpl:" in res.output and "report.md" in res.output
    data = json.loads((out / "metrics.json").read_text())
    assert set(data["sets"]) == {"gan", "tpl"}
    assert data["sets"]["tpl"]["metrics"]["glitch_rate"]["passed"] is False  # no glitches
    assert data["sets"]["gan"]["metrics"]["glitch_rate"]["passed"] is True
    pngs = {p.name for p in out.glob("*.png")}
    assert {"amplitudes.png", "decay_interarrival.png", "noise.png", "window_features.png", "classifier_memorisation.png", "tod_examples.png"} <= pngs
    md = (out / "report.md").read_text()
    for png in pngs:
        assert f"({png})" in md
    # --strict: a missed target gives exit status 1; a rerun replaces the previous report
    res = CliRunner().invoke(cli, ["validate", "-r", str(files["ref"]), "-s", str(files["tpl"]), "-o", str(out), "--no-plots", "--strict"])
    assert res.exit_code == 1
    assert not list(out.glob("*.png"))  # replaced by the new report


def test_validate_errors_are_one_line(files, tmp_path, capsys):
    bad = tmp_path / "bad_rate.h5"
    with h5py.File(files["gen"], "r") as f_in, h5py.File(bad, "w") as f_out:
        f_out.create_dataset("tod", data=f_in["tod"][()])
        for k, v in f_in.attrs.items():
            f_out.attrs[k] = v
        f_out.attrs["sampling_rate_hz"] = 31.0
    with pytest.raises(SystemExit) as exc:
        main(["validate", "--reference", str(files["ref"]), "--synthetic", str(bad), "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "31 Hz" in err and "19 Hz" in err and "\n" not in err
    assert not (tmp_path / "r").exists()
    with pytest.raises(SystemExit) as exc:
        main(["validate", "--reference", str(tmp_path / "nope.h5"), "--synthetic", str(files["gen"]), "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert "not found" in capsys.readouterr().err


def test_validate_help():
    res = CliRunner().invoke(cli, ["validate", "--help"])
    assert res.exit_code == 0 and "--reference" in res.output and "floor" in res.output
