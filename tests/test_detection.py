"""The glitch finder's efficiency against a truth table (crab.validation.detection)."""

from __future__ import annotations

import json

import numpy as np
from conftest import make_synthetic_tod

from crab.io.tod import EventTable, TodMetadata, default_detector_names, write_tod
from crab.validation import ValidationConfig
from crab.validation.detection import HEIGHT_EDGES_SIGMA, detection_efficiency, mean_efficiency

FS = 19.0


def _truth(truth: dict, shift_s: float = 0.0, amplitude: bool = False) -> EventTable:
    n = len(truth["time_s"])
    return EventTable(time_s=truth["time_s"] + shift_s, detector=truth["detector"], charge_z=np.ones(n), energy_kev=np.ones(n), kind=np.zeros(n),
                      amplitude=truth["amplitude"] if amplitude else None)


def test_efficiency_rises_with_height_and_wrong_truth_is_not_found():
    tod, truth = make_synthetic_tod(n_detectors=3, n_samples=int(FS * 3 * 3600), glitch_rate_hz=0.05, amplitude_scale=0.4, seed=4)
    cfg = ValidationConfig().detector
    c = detection_efficiency(tod, _truth(truth), FS, 0.0, cfg)
    eff, listed = np.asarray(c["efficiency"]), np.asarray(c["listed"])
    edges = np.asarray(HEIGHT_EDGES_SIGMA)
    high = (edges[:-1] >= 8) & (listed > 20)
    low = (edges[1:] <= 3) & (listed > 20)
    assert high.any() and low.any()
    assert np.all(eff[high] > 0.9) and np.all(eff[low] < 0.1)
    assert c["n_hits"] == listed.sum() > 0.9 * len(truth["time_s"])
    # the truth of another time (hits placed 40 s late): nothing of it is where a glitch was found
    wrong = detection_efficiency(tod, _truth(truth, shift_s=40.0), FS, 0.0, cfg)
    assert np.nansum(np.asarray(wrong["found"])) < 0.1 * np.nansum(np.asarray(c["found"]))
    # a table recording heights: hits whose measured height belongs to another glitch are left out
    rec = detection_efficiency(tod, _truth(truth, amplitude=True), FS, 0.0, cfg)
    assert rec["n_hits"] + rec["left_out_not_own"] == c["n_hits"] and rec["left_out_not_own"] < 0.1 * c["n_hits"]
    pooled = mean_efficiency([c, c])
    assert pooled["listed"] == [2 * v for v in c["listed"]] and np.allclose(pooled["efficiency"], c["efficiency"], equal_nan=True)
    assert detection_efficiency(tod, None, FS, 0.0, cfg) is None


def test_validate_reports_the_efficiency_of_sets_with_truth(tmp_path):
    from crab.validation import validate

    paths = []
    for i, seed in enumerate((1, 2, 3)):
        tod, truth = make_synthetic_tod(n_detectors=2, n_samples=int(FS * 1800), seed=seed)
        ev = _truth(truth) if i != 2 else None  # the last set has no truth table
        paths.append(write_tod(tmp_path / f"s{i}.h5", tod, TodMetadata(sampling_rate_hz=FS, detectors=default_detector_names(2)), ev))
    res = validate(paths[0], {"with": paths[1], "without": paths[2]}, tmp_path / "rep", plots=True)
    assert set(res.detection["sets"]) == {"with"} and res.detection["reference"]["n_hits"] > 0
    m = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert m["detection_efficiency"]["sets"]["with"]["listed"] == res.detection["sets"]["with"]["listed"]
    assert "Detection efficiency against the truth" in (tmp_path / "rep" / "report.md").read_text()
    assert (tmp_path / "rep" / "detection_efficiency.png").exists()
