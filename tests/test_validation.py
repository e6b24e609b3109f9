"""Validation end to end: independent MC passes, each deliberately broken set fails with the right metric.

One module-scoped run validates, against a reference, an independent
realisation of the same synthetic "Monte Carlo" (conftest.make_synthetic_tod)
and five broken sets: glitches removed, amplitudes doubled, noise PSD tilted,
windows copied from the training set, and tiles joined with steps of one
noise RMS.
The seeds are fixed; thresholds are statistical (2 or 3 sigma of the floor),
so these tests also pin how the floor behaves for this setup.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from crab.core.errors import FileFormatError, InputError
from crab.io.tod import TodMetadata, default_detector_names, write_tod
from crab.validation import ValidationConfig, check_compatible, seam_period, tod_from_array, validate

FS = 19.0
N = int(FS * 1800)
N_DET = 3


def _mc(seed: int, **kw) -> np.ndarray:
    from conftest import make_synthetic_tod

    kw.setdefault("n_detectors", N_DET)
    kw.setdefault("n_samples", N)
    return make_synthetic_tod(seed=seed, **kw)[0]


def tilt_psd(tod: np.ndarray, fs: float, exponent: float, f_ref_hz: float = 1.0) -> np.ndarray:
    """Multiply the PSD by ``(f / f_ref) ** exponent`` (a spectral tilt)."""
    n = tod.shape[1]
    f = np.fft.rfftfreq(n, 1 / fs)
    gain = np.ones_like(f)
    gain[1:] = (f[1:] / f_ref_hz) ** (exponent / 2)
    return np.fft.irfft(np.fft.rfft(tod, axis=1) * gain, n=n, axis=1).astype(np.float32)


def offset_tiles(tod: np.ndarray, tile: int, offset_rms: float, seed: int) -> np.ndarray:
    """Add a random constant to every tile of ``tile`` samples: a step at every join (a badly joined generator)."""
    n = tod.shape[1]
    steps = np.random.default_rng(seed).normal(0.0, offset_rms, (tod.shape[0], -(-n // tile)))
    return (tod + np.repeat(steps, tile, axis=1)[:, :n]).astype(np.float32)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("val") / "report"
    train = _mc(2)
    sets = {
        "independent_mc": tod_from_array(_mc(3), FS, name="independent_mc"),
        "no_glitches": tod_from_array(_mc(4, glitch_rate_hz=0.0), FS),
        "amplitudes_x2": tod_from_array(_mc(5, amplitude_scale=2.0), FS),
        "psd_tilted": tod_from_array(tilt_psd(_mc(6), FS, 0.4), FS),
        "copied_training": tod_from_array(np.roll(train, 1000, axis=1), FS),
        "tiled": tod_from_array(offset_tiles(_mc(7), 256, 0.05, 0), FS, config={"tile_samples": 256}),
    }
    ref = tod_from_array(_mc(1), FS, name="reference")
    # plots are exercised by test_cli_validate (they cost seconds, not coverage here)
    result = validate(ref, sets, out, training=tod_from_array(train, FS, name="training"), plots=False)
    return result, out


def _failed(result, name):
    return set(result.sets[name].failed())


def test_floor_passes_every_metric(run):
    result, _ = run
    for s in result.sets.values():
        for m in s.metrics.values():
            assert m.floor_passed is True, f"floor fails {m.name}: {m.floor} > {m.floor_threshold}"


def test_independent_mc_is_compatible(run):
    result, _ = run
    s = result.sets["independent_mc"]
    assert s.failed() == [], {k: (m.value, m.threshold) for k, m in s.metrics.items() if m.passed is False}
    assert s.targets_met
    assert s.metrics["classifier_auc"].value <= 0.6
    assert all(m.passed is not None for m in s.metrics.values())  # every metric ran (training given, seams known)


def test_glitches_removed_fail_glitch_metrics(run):
    result, _ = run
    f = _failed(result, "no_glitches")
    assert {"glitch_rate", "amplitude_distribution", "window_n_glitches", "classifier_auc"} <= f
    assert "memorisation" not in f  # no glitches is not copying


def test_amplitudes_doubled_fail_amplitude_distribution(run):
    result, _ = run
    f = _failed(result, "amplitudes_x2")
    assert "amplitude_distribution" in f
    assert "window_max" in f
    assert "memorisation" not in f
    m = result.metric("amplitudes_x2", "amplitude_distribution")
    assert m.quantities["median_amplitude_synthetic"] > 1.5 * m.quantities["median_amplitude_reference"]


def test_psd_tilt_fails_psd_metric(run):
    result, _ = run
    f = _failed(result, "psd_tilted")
    assert "psd_octaves" in f
    d = np.asarray(result.metric("psd_tilted", "psd_octaves").quantities["difference"])
    assert d[-1] - d[0] > 1.0  # the tilt is seen: high octaves up, low octaves down


def test_copied_windows_fail_memorisation_only(run):
    result, _ = run
    s = result.sets["copied_training"]
    assert s.failed() == ["memorisation"]
    assert s.metrics["memorisation"].quantities["exact_copy_fraction"] > 0.9
    assert result.metric("independent_mc", "memorisation").passed


def test_training_sample_context(run):
    """With the training MC given, the classifier test is also run against it (context, not pass/fail): an
    independent MC and a copy of the training data look like it, doubled amplitudes do not."""
    result, out = run
    t = result.training
    assert 0.35 < t["classifier_auc_vs_reference"]["auc"] < 0.62  # two independent realisations
    vs = {k: result.auc_vs_training(k) for k in result.sets}
    assert vs["copied_training"] < 0.56 and vs["independent_mc"] < 0.6
    assert vs["no_glitches"] > 0.75 and vs["amplitudes_x2"] > vs["independent_mc"] + 0.08
    assert result.key_metrics()["amplitudes_x2"]["classifier_auc_vs_training"] == vs["amplitudes_x2"]
    # scored on held-out windows: the same test as classifier_auc, so against the reference it agrees
    for name in ("amplitudes_x2", "independent_mc"):
        assert abs(vs[name] - result.metric(name, "classifier_auc").value) < 0.1
    assert "against the training MC instead" in result.summary_text()
    md = (out / "report.md").read_text()
    assert "## Training sample (context, not pass/fail)" in md and "| `amplitudes_x2` vs training MC |" in md
    data = json.loads((out / "metrics.json").read_text())
    assert data["training"]["classifier_auc_sets_vs_training"]["copied_training"]["auc"] == pytest.approx(vs["copied_training"])
    # without training data there is no context
    bare = validate(tod_from_array(_mc(1, n_samples=int(FS * 600)), FS), {"x": tod_from_array(_mc(3, n_samples=int(FS * 600)), FS)}, None, plots=False)
    assert bare.auc_vs_training() is None and bare.key_metrics()["x"]["classifier_auc_vs_training"] is None
    assert "training MC" not in bare.summary_text()


def test_tile_joins_fail_seam_metric(run):
    result, _ = run
    s = result.sets["tiled"]
    assert s.seam_period_samples == 256 and s.seam_period_source == "file config"
    assert "seam_step" in s.failed()
    assert result.metric("independent_mc", "seam_step").passed


def test_outputs(run):
    result, out = run
    data = json.loads((out / "metrics.json").read_text())
    assert set(data["sets"]) == set(result.sets)
    m = data["sets"]["independent_mc"]["metrics"]["glitch_rate"]
    for k in ("floor", "value", "threshold", "passed", "floor_passed", "rule", "quantities"):
        assert k in m
    assert data["key_metrics"]["psd_tilted"]["passed"] is False
    assert data["run"]["config"]["n_sigma"] == ValidationConfig().n_sigma
    md = (out / "report.md").read_text()
    assert "floor (ref A vs B)" in md and "threshold" in md
    for name in result.sets:
        assert f"## Set `{name}`" in md
    for metric in result.sets["tiled"].metrics:
        assert f"| {metric} |" in md
    assert "**FAIL**" in md and "PASS" in md
    assert not list(out.parent.glob(".report.tmp-*"))  # no temporary folder left


def test_single_reference_keys_and_warning(run):
    """One reference: the multi-reference keys of metrics.json are there (K = 1, halves floor), and a warning says
    that one reference is the weaker test."""
    from crab.validation.results import SINGLE_REFERENCE_WARNING

    result, out = run
    assert result.n_references == 1 and SINGLE_REFERENCE_WARNING in result.warnings
    data = json.loads((out / "metrics.json").read_text())
    assert data["n_references"] == 1 and data["floor_kind"] == "halves" and data["references"] == [data["reference"]]
    m = data["sets"]["amplitudes_x2"]["metrics"]["amplitude_distribution"]
    assert m["n_references"] == 1 and m["values"] == [m["value"]] and m["mean"] == m["value"] and m["sd"] is None
    assert m["floor_mean"] == m["floor"] and m["floor_values"] == [m["floor"]] and m["floor_pairs"] is None
    assert m["distance"] == pytest.approx(m["value"] - m["floor"]) and m["distance_error"] is None
    assert m["thresholds"] == [m["threshold"]] and m["passed_per_reference"] == [m["passed"]]
    km = data["key_metrics"]["independent_mc"]
    assert km["n_references"] == 1 and km["classifier_dauc"] == pytest.approx(km["classifier_auc"] - km["classifier_auc_floor"])
    assert "K=1" in result.summary_text() and "weaker test" in (out / "report.md").read_text()


def test_summary_api(run):
    result, _ = run
    rows = result.summary_rows()
    assert len(rows) == sum(len(s.metrics) for s in result.sets.values())
    km = result.key_metrics()["independent_mc"]
    assert km["targets_met"] and 0.3 < km["classifier_auc"] < 0.7
    assert "independent_mc: PASS" in result.summary_text()


def test_mismatched_sampling_rate_or_detectors_is_a_clear_error(tmp_path):
    ref = tod_from_array(_mc(1, n_samples=int(FS * 400)), FS)
    other_rate = tod_from_array(_mc(1, n_samples=int(31 * 400), sampling_rate_hz=31.0), 31.0)
    with pytest.raises(InputError, match=r"sampled at 31 Hz but the reference .* at 19 Hz"):
        validate(ref, {"x": other_rate}, tmp_path / "r")
    other_dets = tod_from_array(_mc(1, n_samples=int(FS * 400), n_detectors=2), FS)
    with pytest.raises(InputError, match=r"has 2 detectors but the reference .* has 3"):
        validate(ref, {"x": other_dets}, tmp_path / "r")
    assert not (tmp_path / "r").exists()  # nothing written on error
    units = tod_from_array(_mc(1, n_samples=int(FS * 400)), FS)
    units.meta.units = "K"
    with pytest.raises(InputError, match="units|'K'"):
        check_compatible(ref, units, "synthetic")


def test_missing_or_corrupt_files(tmp_path):
    ref_path = write_tod(tmp_path / "ref.h5", _mc(1, n_samples=int(FS * 400)), TodMetadata(sampling_rate_hz=FS, detectors=default_detector_names(N_DET)))
    with pytest.raises(FileFormatError, match="not found"):
        validate(ref_path, {"x": tmp_path / "missing.h5"}, tmp_path / "r")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(FileFormatError):
        validate(ref_path, [bad], tmp_path / "r")


def test_too_short_reference_and_foreign_out_dir(tmp_path):
    short = tod_from_array(_mc(1, n_samples=int(FS * 100)), FS)
    with pytest.raises(InputError, match="too short"):
        validate(short, {"x": short}, None)
    foreign = tmp_path / "somefolder"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep")
    ok = tod_from_array(_mc(1, n_samples=int(FS * 400)), FS)
    with pytest.raises(InputError, match="refusing"):
        validate(ok, {"x": ok}, foreign)
    assert (foreign / "precious.txt").exists()


def test_seam_period_lookup():
    cfg = ValidationConfig()
    meta = TodMetadata(sampling_rate_hz=FS, detectors=["a"], config={"model": {"tile_latents": 8, "upsample_factor": 16}})
    assert seam_period(meta, cfg) == (128, 0, "file config (tile_latents x upsample_factor)")
    assert seam_period(TodMetadata(sampling_rate_hz=FS, detectors=["a"]), cfg)[0] == cfg.window_samples
    assert seam_period(meta, ValidationConfig(seam_period_samples=100))[0] == 100
    # windows joined by a cross-fade (the paper's generator), generation started at sample 10
    paper = {"start_sample": 10, "generation": {"tile_samples": 16320, "window_samples": 256, "overlap_samples": 64}}
    assert seam_period(TodMetadata(sampling_rate_hz=FS, detectors=["a"], config=paper), cfg)[:2] == (192, (32 - 10) % 192)


def test_check_output_dir(tmp_path):
    """The one output-folder check (validate and validate-phi): a folder is replaced only if CRAB wrote it."""
    from crab.core.paths import check_output_dir

    assert check_output_dir(tmp_path / "new", overwrite=False, marker="metrics.json") == tmp_path / "new"
    empty = tmp_path / "empty"
    empty.mkdir()
    check_output_dir(empty, overwrite=False, marker="metrics.json")
    report = tmp_path / "report"
    report.mkdir()
    (report / "metrics.json").write_text("{}")
    check_output_dir(report, overwrite=True, marker="metrics.json")
    with pytest.raises(InputError, match="pass overwrite"):
        check_output_dir(report, overwrite=False, marker="metrics.json")
    with pytest.raises(InputError, match="does not hold phi.json"):
        check_output_dir(report, overwrite=True, marker="phi.json")
    with pytest.raises(InputError, match="not a folder"):
        check_output_dir(report / "metrics.json", overwrite=True, marker="metrics.json")
    with pytest.raises(InputError, match="parent folder"):
        check_output_dir(tmp_path / "missing" / "out", overwrite=True, marker="metrics.json")
