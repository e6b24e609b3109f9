"""`crab run` end to end on a reduced configuration (seconds of MC, a few epochs)."""

import json

from conftest import run_cli


def test_reduced_pipeline_writes_complete_report_and_resumes(tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = [
        "run", "--out", run_dir, "--no-progress", "--detectors", 2,
        "--train-duration", "300s", "--heldout-duration", "300s", "--references", 3, "--generate-duration", "300s",
        "--epochs", 2,
        "--train-option", "d_pretrain_epochs=1", "--train-option", "windows_per_epoch=64",
        "--train-option", "batch_size=16", "--train-option", "val_windows=32",
        "--train-option", "quality_windows=32", "--train-option", "bn_calibration_batches=2",
    ]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    for name in ("mc_train.h5", "mc_heldout.h5", "mc_heldout_2.h5", "mc_heldout_3.h5", "mc_selection.h5", "model/selection.json", "gan.h5", "template.h5", "template.json", "model/model.pt", "model/history.png", "report/report.md", "report/metrics.json", "pipeline.json"):
        assert (run_dir / name).exists(), name
    report = (run_dir / "report" / "report.md").read_text()
    assert "## Set `gan`" in report and "## Set `template`" in report and "classifier_auc" in report
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert set(metrics["sets"]) == {"gan", "template"}
    # validated against the 3 held-out runs (seeds 1001-1003), beside them against each other
    assert metrics["n_references"] == 3 and [r["seed"] for r in metrics["references"]] == [1001, 1002, 1003]
    assert len(metrics["sets"]["gan"]["metrics"]["classifier_auc"]["values"]) == 3
    state = json.loads((run_dir / "pipeline.json").read_text())
    assert set(state["stages"]) == {"mc_train", "mc_heldout", "mc_selection", "train", "generate", "template", "validate"}
    # the kept epoch was chosen against the selection run (seed 3001), none of the references
    assert state["stages"]["mc_selection"]["signature"]["seed"] == 3001 and "against the selection run" in state["stages"]["train"]["notes"]
    assert state["stages"]["mc_heldout"]["signature"]["seeds"] == [1001, 1002, 1003]
    assert len(state["stages"]["mc_heldout"]["outputs"]) == 3 and "against 3 references" in state["stages"]["validate"]["notes"]
    assert all(s["seconds"] >= 0 for s in state["stages"].values())
    # the terminal table names every stage and the report
    for stage in ("mc_train", "train", "generate", "template", "validate", "total"):
        assert stage in out
    assert "report:" in out and "classifier AUC" in out and "dAUC" in out and "K = 3 held-out references" in out
    assert "AUC against the training MC instead (context): gan " in out and "## Training sample" in report
    assert metrics["training"]["classifier_auc_sets_vs_training"].keys() == {"gan", "template"}

    # a second call resumes: nothing but validation runs again
    mtime = (run_dir / "model" / "model.pt").stat().st_mtime_ns
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert err.count("already done, skipped") == 6
    assert (run_dir / "model" / "model.pt").stat().st_mtime_ns == mtime


def test_pipeline_rejects_bad_options(tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", "--out", tmp_path / "r", "--train-option", "no_such_option=3", "--train-duration", "60s")
    assert code == 2 and "unknown training options" in err and len(err.strip().splitlines()) <= 2
    code, _, err = run_cli(capsys, "run", "--out", tmp_path / "r2", "--train-duration", "-5")
    assert code == 2 and err.startswith("error:") and "positive" in err
