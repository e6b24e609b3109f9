"""Validation against several independent references: mean +- scatter, MC-vs-MC floor, dAUC, the pass rule.

One module-scoped run validates, against K = 3 independent 10-minute Monte
Carlo runs of a 3-detector wafer (the physics MC: wafer hits make
coincidences), an independent MC run and three broken copies of it:
glitches removed (the same run without its glitch signal), amplitudes doubled
(the same run with its glitch signal twice), and detectors made independent
(each detector's row circularly shifted by a different third of the run),
with a fifth run as the training MC (memorisation test, training context).
The glitch signal is exact: the MC with ``add_noise=False`` and the same seed
is the signal alone.  Seeds are fixed; the verdicts are statistical.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from crab.cli import cli, main
from crab.core.errors import InputError
from crab.validation import ValidationConfig, tod_from_array, validate
from crab.validation.builder import MetricBuilder
from crab.validation.combine import combine_references
from crab.validation.multi_reference import floor_pairs
from crab.validation.results import SINGLE_REFERENCE_WARNING, MetricResult

DURATION_S = 600.0
N_DET = 3
K = 3
#: Fewer classifier splits and re-splits than the default: the same code, faster.
CFG = ValidationConfig(classifier_repeats=4, n_null=100)


def _mc(seed: int, **kw) -> tuple[np.ndarray, float, list[str]]:
    from crab.physics.montecarlo import simulate
    from crab.physics.montecarlo_config import MonteCarloConfig

    tod, _, info = simulate(MonteCarloConfig(n_detectors=N_DET, **kw), DURATION_S, seed)
    return tod, info.sampling_rate_hz, info.detectors


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    refs = []
    for k in range(K):
        tod, fs, det = _mc(101 + k)
        refs.append(tod_from_array(tod, fs, det, kind="montecarlo", name=f"ref{k + 1}"))
    on, fs, det = _mc(201)
    signal, _, _ = _mc(201, add_noise=False)  # the same run's glitch signal alone
    n = on.shape[1]
    sets = {
        "independent_mc": tod_from_array(on, fs, det),
        "no_glitches": tod_from_array(on - signal, fs, det),
        "amplitudes_x2": tod_from_array(on + signal, fs, det),
        "independent_detectors": tod_from_array(np.stack([np.roll(on[d], d * n // N_DET) for d in range(N_DET)]), fs, det),
    }
    train, _, _ = _mc(301)
    out = tmp_path_factory.mktemp("multi") / "report"
    return validate(refs, sets, out, training=tod_from_array(train, fs, det, name="training"), config=CFG, plots=False), out


def test_independent_mc_passes_with_small_dauc(run):
    result, _ = run
    s = result.sets["independent_mc"]
    assert s.failed() == [], {k: (m.value, m.threshold) for k, m in s.metrics.items() if m.passed is False}
    assert s.metrics["memorisation"].passed is True  # every metric ran against every reference
    auc = s.metrics["classifier_auc"]
    assert auc.passed and auc.n_references == K
    assert abs(auc.distance) < 0.1 and auc.distance_error > 0
    # the broken sets are far from the floor
    for name in ("no_glitches", "amplitudes_x2"):
        assert result.metric(name, "classifier_auc").distance > 0.3


def test_glitches_removed_fail_glitch_rate(run):
    result, _ = run
    m = result.metric("no_glitches", "glitch_rate")
    assert m.passed is False
    assert m.quantities["rate_synthetic"] < 0.2 * m.quantities["rate_reference"]


def test_amplitudes_doubled_fail_amplitude_distribution(run):
    result, _ = run
    assert "amplitude_distribution" in result.sets["amplitudes_x2"].failed()
    assert "glitch_rate" not in result.sets["amplitudes_x2"].failed()  # as many glitches, larger ones


def test_independent_detectors_fail_coincidences(run):
    result, _ = run
    failed = set(result.sets["independent_detectors"].failed())
    assert {"coincidence_rate", "detector_correlation"} <= failed
    assert not failed & {"glitch_rate", "amplitude_distribution"}  # each detector alone is still Monte Carlo


def test_training_context_against_every_reference(run):
    result, _ = run
    vs = result.training["classifier_auc_vs_reference"]
    assert len(vs["auc_per_reference"]) == K and vs["auc"] == pytest.approx(np.mean(vs["auc_per_reference"]))
    assert vs["auc"] < 0.65  # the training MC is one more independent run
    assert result.auc_vs_training("no_glitches") > 0.9
    assert f"against the {K} references (mean)" in result.summary_text()


def test_every_metric_has_spread_floor_and_distance(run):
    result, _ = run
    assert result.n_references == K and result.floor_pairs == floor_pairs(K) == [(0, 1), (0, 2), (1, 2)]
    for s in result.sets.values():
        for m in s.metrics.values():
            sp = m.spread
            assert len(sp.values) == K and len(sp.floor_values) == len(result.floor_pairs)
            if m.passed is None:
                continue
            assert m.value == pytest.approx(np.mean([v for v, p in zip(sp.values, sp.passed) if p is not None]))
            assert m.floor == pytest.approx(np.mean([v for v, p in zip(sp.floor_values, sp.floor_passed) if p is not None]))
            assert m.distance == pytest.approx(m.value - m.floor)
            assert m.threshold >= sp.threshold_per_reference
            assert m.passed == (m.value <= m.threshold)


def test_metrics_json_structure(run):
    _, out = run
    data = json.loads((out / "metrics.json").read_text())
    assert data["format_version"] == 2 and data["n_references"] == K and data["floor_kind"] == "references"
    assert len(data["references"]) == K and data["floor_pairs"] == [[0, 1], [0, 2], [1, 2]]
    m = data["sets"]["independent_mc"]["metrics"]["classifier_auc"]
    for key in ("values", "mean", "sd", "floor_mean", "floor_sd", "floor_values", "distance", "distance_error", "threshold", "passed",
                "thresholds", "passed_per_reference", "threshold_per_reference", "threshold_floor_scatter", "floor_pass_fraction", "quantities_per_reference"):
        assert key in m, key
    assert len(m["values"]) == K and m["mean"] == pytest.approx(np.mean(m["values"]))
    assert m["sd"] == pytest.approx(np.std(m["values"], ddof=1))
    assert m["distance"] == pytest.approx(m["mean"] - m["floor_mean"])
    km = data["key_metrics"]["independent_mc"]
    assert km["n_references"] == K and km["classifier_dauc"] == pytest.approx(m["distance"]) and km["classifier_auc_sd"] == pytest.approx(m["sd"])


def test_summary_and_report_show_dauc_and_k(run):
    result, out = run
    text = result.summary_text()
    assert f"over K={K} references" in text and "dAUC" in text and "MC vs MC" in text
    md = (out / "report.md").read_text()
    assert f"K = {K} independent held-out Monte Carlo runs" in md
    assert "| set | kind | duration (s) | K | classifier AUC | floor AUC | dAUC |" in md
    assert "floor: MC vs MC" in md and "Against each reference" in md and "mean +- sd" in md


def _metric(value: float, threshold: float, name: str = "glitch_rate") -> MetricResult:
    """A single-reference result as :class:`crab.validation.builder.MetricBuilder` makes it (None: not applicable)."""
    passed = None if np.isnan(value) else bool(value <= threshold)
    return MetricResult(name, "glitches", "", "target", value, float("nan"), threshold, threshold, passed, None, "|z| <= 2", {"n": 1})


def test_pass_rule():
    """mean <= max(mean single-reference threshold, floor mean + n_sigma floor sd); it can fail."""
    b = MetricBuilder(ValidationConfig())
    ns = b.nsig("glitch_rate")
    floor = [_metric(v, 2.0) for v in (0.5, 1.0, 1.5)]
    pairs = floor_pairs(3)
    ok = combine_references(b, [_metric(v, 2.0) for v in (1.0, 1.5, 2.5)], floor, pairs)
    assert ok.value == pytest.approx(5 / 3) and ok.passed and ok.threshold == pytest.approx(2.0)
    assert ok.spread.passed == [True, True, False]  # one reference alone would have failed it
    bad = combine_references(b, [_metric(v, 2.0) for v in (2.5, 3.0, 3.5)], floor, pairs)
    assert bad.passed is False and bad.distance == pytest.approx(2.0) and bad.distance_error > 0
    # independent references that scatter beyond the single-reference thresholds widen the threshold (b)
    wide = [_metric(v, 2.0) for v in (1.0, 3.0, 5.0)]
    w = combine_references(b, [_metric(v, 2.0) for v in (2.5, 3.0, 3.5)], wide, pairs)
    assert w.threshold == pytest.approx(3.0 + ns * 2.0) and w.passed and w.floor_passed is False
    assert w.spread.floor_pass_fraction == pytest.approx(1 / 3)
    # two references: one pair, no floor scatter, the threshold is (a)
    two = combine_references(b, [_metric(v, 2.0) for v in (1.0, 2.6)], [_metric(1.9, 2.0)], floor_pairs(2))
    assert np.isnan(two.floor_sd) and np.isnan(two.distance_error) and two.threshold == pytest.approx(2.0) and two.passed is True
    # not applicable against every reference: not applicable
    na = combine_references(b, [_metric(float("nan"), 2.0)] * 3, floor, pairs)
    assert na.passed is None


def test_references_must_be_independent_runs_of_one_setup(synthetic_tod):
    tod, _ = synthetic_tod(n_detectors=3, n_samples=19 * 300)
    fs, det = 19.0, ["W00_D000", "W00_D001", "W00_D002"]
    ref = tod_from_array(tod, fs, det, name="a")
    syn = tod_from_array(tod, fs, det, name="s")
    two_det = tod_from_array(tod[:2], fs, det[:2], name="b")
    with pytest.raises(InputError, match=r"independent Monte Carlo runs of one setup.*reference 2 \(b\) has 2 detectors and reference 1 \(a\) has 3"):
        validate([ref, two_det], {"x": syn}, None)
    other_rate = tod_from_array(tod, 31.0, det, name="c")
    with pytest.raises(InputError, match="reference 2 .* sampled at 31 Hz"):
        validate([ref, other_rate], {"x": syn}, None)
    with pytest.raises(InputError, match="same Monte Carlo run"):
        validate([ref, ref], {"x": syn}, None)
    with pytest.raises(InputError, match="no reference"):
        validate([], {"x": syn}, None)


def test_cli_two_references(synthetic_tod_file, tmp_path):
    n = 19 * 600
    r1 = synthetic_tod_file("ref1.h5", n_detectors=2, n_samples=n, seed=1)
    r2 = synthetic_tod_file("ref2.h5", n_detectors=2, n_samples=n, seed=2)
    gen = synthetic_tod_file("gen.h5", n_detectors=2, n_samples=n, seed=3)
    out = tmp_path / "report"
    res = CliRunner().invoke(cli, ["validate", "-r", str(r1), "-r", str(r2), "-s", f"gan={gen}", "-o", str(out), "--no-plots"])
    assert res.exit_code == 0, res.output
    assert "over K=2 references" in res.stdout and "dAUC" in res.stdout
    assert "two references give one MC-vs-MC comparison" in res.stderr and "one reference:" not in res.stderr
    data = json.loads((out / "metrics.json").read_text())
    assert data["n_references"] == 2 and [r["path"] for r in data["references"]] == [str(r1), str(r2)]
    assert data["sets"]["gan"]["metrics"]["glitch_rate"]["passed"] is True
    # one reference: as before, with the warning that it is the weaker test
    res = CliRunner().invoke(cli, ["validate", "-r", str(r1), "-s", f"gan={gen}", "-o", str(out), "--no-plots"])
    assert res.exit_code == 0, res.output
    assert f"warning: {SINGLE_REFERENCE_WARNING}" in res.stderr and "K=1" in res.stdout
    assert json.loads((out / "metrics.json").read_text())["sets"]["gan"]["metrics"]["glitch_rate"]["floor_kind"] == "halves"


def test_cli_mismatched_references_is_one_line_error(synthetic_tod_file, tmp_path, capsys):
    n = 19 * 300
    r1 = synthetic_tod_file("ref1.h5", n_detectors=2, n_samples=n, seed=1)
    r2 = synthetic_tod_file("ref2.h5", n_detectors=3, n_samples=n, seed=2)
    with pytest.raises(SystemExit) as exc:
        main(["validate", "-r", str(r1), "-r", str(r2), "-s", str(r1), "-o", str(tmp_path / "r")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "3 detectors" in err and "\n" not in err
    assert not (tmp_path / "r").exists()


def test_pipeline_held_out_references():
    from crab.pipeline import (
        PipelineConfig,
        _stage_signature,
        heldout_names,
        heldout_seeds,
    )

    cfg = PipelineConfig(seed=5, n_references=3)
    assert heldout_seeds(cfg) == [1005, 1006, 1007] and cfg.seed not in heldout_seeds(cfg)
    assert heldout_names(cfg) == ["mc_heldout", "mc_heldout_2", "mc_heldout_3"]
    assert _stage_signature(cfg, "mc_heldout") != _stage_signature(PipelineConfig(seed=5, n_references=4), "mc_heldout")
    assert _stage_signature(cfg, "train") == _stage_signature(PipelineConfig(seed=5, n_references=4), "train")
    with pytest.raises(InputError, match="n_references"):
        PipelineConfig(n_references=0)
    with pytest.raises(InputError, match="seed offset"):
        PipelineConfig(n_references=1001)
