"""``crab impact``: glitch TOD -> litebird_sim scanning -> binned maps -> healpy spectra -> bias on r.

Small runs (hours of TOD, nside 8-16).  The chain needs the ``crab-tod[litebird]``
extra (skipped without it; CI installs it and sets CRAB_REQUIRE_EXTRAS=1).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import make_synthetic_tod, require_extra, run_cli

from crab.core.errors import InputError
from crab.integrations.impact import spectra
from crab.integrations.impact.config import ImpactConfig
from crab.integrations.impact.reference import load_reference
from crab.integrations.impact.timelines import glitch_flags, white_noise

FS = 19.0
SEED = 5
HOUR = 3600.0


class ConstantSource:
    """A slice-exact generator of a constant TOD (pW): what the bridge accepts as a model."""

    def __init__(self, value_pw: float, seed: int = SEED, sampling_rate_hz: float = FS) -> None:
        self.value_pw, self.seed, self.sampling_rate_hz = float(value_pw), seed, sampling_rate_hz

    def generate(self, keys, start_sample, n_samples):
        return np.full((len(keys), int(n_samples)), self.value_pw, np.float32)


def small(**kw) -> ImpactConfig:
    """A small run: 3 h of 4 detectors at nside 8, chunks of 1 h, no deglitching, binary mask, the whole TOD mapped
    (the chain's checks inject TOD of their own: zeros, offsets, white noise)."""
    base = {"duration_s": 3 * HOUR, "n_detectors": 4, "nside": 8, "seed": SEED, "chunk_s": HOUR, "deglitch": False, "apodisation_deg": 0.0, "signal": "tod"}
    base.update(kw)
    return ImpactConfig(**base)


@pytest.fixture(scope="module")
def lbs():
    require_extra("healpy", "litebird")
    return require_extra("litebird_sim", "litebird")


@pytest.fixture(scope="module")
def template_json(tmp_path_factory):
    """A template model fitted on synthetic TOD with truth, saved as .json (the template method's stored form)."""
    from crab.io.tod import EventTable
    from crab.models.template import fit_template, save_template

    tod, truth = make_synthetic_tod(n_detectors=2, n_samples=int(FS * 3600), glitch_rate_hz=0.1, seed=3)
    n = len(truth["time_s"])
    events = EventTable(time_s=truth["time_s"], detector=truth["detector"], charge_z=np.ones(n), energy_kev=truth["amplitude"], kind=np.zeros(n))
    return save_template(fit_template(tod, events, FS), tmp_path_factory.mktemp("tpl") / "template.json")


def _seen(res, name="binned"):
    return res.accumulators[name].seen()


# --------------------------------------------------------------------------- the map-maker: one definition
@pytest.mark.parametrize("coordinates", ["ecliptic", "galactic"])
def test_accumulated_binning_equals_litebird_make_binned_map(lbs, coordinates):
    """Chunk-by-chunk normal equations (pair pointings shared) give litebird_sim's binned maps."""
    from ducc0.healpix import Healpix_Base

    from crab.integrations.impact import focalplane
    from crab.integrations.impact.mapmaking import UNSEEN, BinnedAccumulator
    from crab.integrations.impact.scanning import Scan

    cfg = small(duration_s=2 * HOUR, nside=16, coordinates=coordinates)
    imo = focalplane.load_imo(lbs)
    ch, ch_obj = focalplane.channel_info(lbs, imo, cfg)
    dets = focalplane.make_detectors(lbs, imo, ch_obj, ch, cfg, FS, 40.0)
    scan = Scan(lbs, imo, focalplane.instrument(lbs, imo, cfg), dets, cfg, FS)
    g = np.random.default_rng(1)
    obs_list = []
    for first, n in scan.chunks():
        obs = scan.observation(first, n)
        obs.tod[:] = g.normal(size=obs.tod.shape) + 3.0 * np.arange(len(dets))[:, None]
        obs_list.append(obs)
    ref = lbs.make_binned_map(cfg.nside, obs_list, output_coordinate_system=scan.coordinate_system())
    acc = BinnedAccumulator(cfg.nside, ["tod"])
    hpx = Healpix_Base(cfg.nside, "RING")
    w = 1.0 / (FS * 40.0**2)
    for obs in obs_list:
        for p in range(cfg.n_pairs):
            pix, psi = scan.pair_pointing(obs, p, hpx)
            for k in (2 * p, 2 * p + 1):
                acc.add(pix, psi + dets[k].pol_angle_rad, w, {"tod": obs.tod[k]})
    ours = acc.solve("tod")
    ref_map = np.asarray(ref.binned_map)
    seen = ref_map[0] != UNSEEN
    assert seen.sum() > 100 and np.array_equal(seen, acc.seen())
    np.testing.assert_allclose(ours[:, seen], ref_map[:, seen], rtol=1e-9, atol=1e-9)
    assert np.all(ours[:, ~seen] == UNSEEN)
    invnpp = np.asarray(ref.invnpp)[seen]
    np.testing.assert_allclose(acc.inverse()[seen], invnpp, rtol=1e-9, atol=1e-12 * np.abs(invnpp).max())


# --------------------------------------------------------------------------- the checks
def test_zero_tod_gives_zero_maps(lbs):
    res = run_impact_(ConstantSource(0.0), small(conversion_k_per_pw=1.0, deglitch=True))
    seen = _seen(res)
    assert seen.sum() > 50
    for name in ("cr", "noise", "cr_deglitched"):
        assert np.all(res.maps[name][:, seen] == 0.0), name
        assert all(np.all(c == 0.0) for c in res.spectra[name].values()), name
    assert res.summary["binned"]["r_bias"] == 0.0 and res.summary["flagged_fraction"] == 0.0
    with pytest.raises(InputError, match="no white noise"):
        run_impact_(ConstantSource(0.0), small())  # the default conversion matches a noise level: there is none


def test_constant_offset_gives_a_monopole_only(lbs):
    c = 2.5e-3  # pW; 1 K_CMB per pW
    res = run_impact_(ConstantSource(c), small(conversion_k_per_pw=1.0))
    seen = _seen(res)
    i, q, u = res.maps["cr"][:, seen]
    np.testing.assert_allclose(i, np.float32(c), rtol=1e-9)
    assert np.max(np.abs(q)) < 1e-9 * c and np.max(np.abs(u)) < 1e-9 * c
    scale = (c * 1e6) ** 2  # uK^2
    cl = res.spectra["cr"]
    for s in ("TT", "EE", "BB", "TE", "EB", "TB"):
        assert np.max(np.abs(cl[s])) < 1e-12 * scale, s  # the monopole is removed; nothing else is there


def test_white_noise_gives_the_expected_map_noise_level(lbs):
    """A known white noise injected as the TOD: each pixel's map scatter is sigma^2 w (P^T w P)^-1, within 10 %."""
    from crab.physics.noise import NoiseGenerator, NoiseParams

    sigma_pw = 0.02
    gen = NoiseGenerator(NoiseParams(white_asd=sigma_pw / np.sqrt(FS / 2), f_knee_hz=0.0), FS, seed=SEED, stream="template_noise")
    k = 0.5  # K_CMB per pW
    res = run_impact_(gen, small(nside=16, conversion_k_per_pw=k, net_uk_sqrt_s=40.0))
    acc = res.accumulators["binned"]
    seen = acc.seen() & (acc.hits >= 20)
    assert seen.sum() > 500
    w = 1.0 / (FS * 40.0**2)
    var = (sigma_pw * k) ** 2 * w * np.einsum("pii->pi", acc.inverse())[seen].T
    for name in ("cr", "noise"):  # the injected noise, and the comparison maps' own white noise at its measured level
        z = res.maps[name][:, seen] / np.sqrt(var)
        for comp, zz in zip("IQU", z):
            assert abs(np.std(zz) - 1.0) < 0.10, (name, comp, np.std(zz))
    assert res.info["calibration"]["white_sigma_pw"] == pytest.approx(sigma_pw, rel=0.05)


def test_seed_reproduces_the_maps_byte_for_byte(lbs, gan_model_dir, tmp_path):
    cfg = small(duration_s=2 * HOUR, deglitch=True)
    a = run_impact_(gan_model_dir, cfg, tmp_path / "a")
    b = run_impact_(gan_model_dir, cfg, tmp_path / "b")
    names = sorted(p.name for p in (tmp_path / "a").glob("map_*.fits"))
    assert names == ["map_cr.fits", "map_cr_deglitched.fits", "map_noise.fits", "map_noise_deglitched.fits"]
    for n in names:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes(), n
    for n in a.maps:
        assert a.maps[n].tobytes() == b.maps[n].tobytes()
    assert (tmp_path / "a" / "cl.csv").read_bytes() == (tmp_path / "b" / "cl.csv").read_bytes()
    c = run_impact_(gan_model_dir, small(duration_s=2 * HOUR, deglitch=True, seed=SEED + 1))
    assert not np.array_equal(c.maps["cr"], a.maps["cr"]) and not np.array_equal(c.maps["noise"], a.maps["noise"])


# --------------------------------------------------------------------------- methods, options, outputs
def test_gan_glitches_deglitching_and_destriper(lbs, gan_model_dir):
    """The GAN's TOD through the chain: its BB is above the white-noise maps'; flagging removes some; the destriper runs."""
    res = run_impact_(gan_model_dir, small(duration_s=2 * HOUR, deglitch=True, destriper=True, baseline_length_s=60.0))
    assert set(res.maps) == {"cr", "noise", "cr_deglitched", "noise_deglitched", "cr_destriped"}
    lo, hi = res.summary["ell_range"]
    bb = {n: np.mean(res.spectra[n]["BB"][lo : hi + 1]) for n in res.maps}
    assert bb["cr"] > bb["noise"]
    assert 0 < res.summary["flagged_fraction"] < 0.5
    assert res.info["destriper"]["baseline_samples"] == round(60 * FS)
    assert np.isfinite(res.summary["destriped"]["bb_ratio"])
    line = res.headline()
    assert line.startswith("impact: CR residual BB / BB(r=0.001)") and "deglitched" in line and "r bias" in line


def test_cli_end_to_end_with_the_template(lbs, template_json, tmp_path, capsys):
    out = tmp_path / "impact"
    args = ["impact", "--model", template_json, "--duration", "2h", "--detectors", "4", "--nside", "8", "--seed", 3, "--chunk", "1h", "--out", out, "--no-progress"]
    code, stdout, stderr = run_cli(capsys, *args)
    assert code == 0, stderr
    (line,) = stdout.strip().splitlines()
    assert line.startswith("impact: CR residual BB / BB(r=0.001), mean D_ell over ell 2-23")
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["cl.csv", "hits.fits", "impact.json", "mask.fits", "spectra.png", "map_cr.fits", "map_noise.fits", "map_cr_deglitched.fits", "map_noise_deglitched.fits"])
    header = (out / "cl.csv").read_text().splitlines()[0].split(",")
    assert header[:7] == ["ell", "TT", "EE", "BB", "TE", "EB", "TB"] and "BB_r0p001" in header and "BB_noise" in header
    rows = np.loadtxt(out / "cl.csv", delimiter=",", skiprows=1)
    assert rows.shape == (24, len(header)) and np.array_equal(rows[:, 0], np.arange(24))
    rec = json.loads((out / "impact.json").read_text())
    assert rec["seed"] == 3 and rec["config"]["nside"] == 8 and rec["info"]["model"]["kind"] == "template" and rec["headline"] == line
    code, _, stderr = run_cli(capsys, *args)  # a previous output is kept unless --overwrite
    assert code == 2 and "exists" in stderr
    code, stdout2, _ = run_cli(capsys, *args, "--overwrite")
    assert code == 0 and stdout2.strip() == line


def test_bad_input_is_one_error_line(lbs, template_json, tmp_path, capsys):
    base = ["impact", "--model", template_json, "--duration", "1h", "--nside", "8", "--out", tmp_path / "x", "--no-progress"]
    for extra, msg in ((["--detectors", "5"], "even number"), (["--nside", "12"], "power of two"), (["--channel", "Q9-999"], "channel")):
        code, _, stderr = run_cli(capsys, *base, *extra)
        assert code == 2 and stderr.startswith("error:") and msg in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_missing_extra_is_named(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "litebird_sim", None)  # import litebird_sim now raises ImportError
    code, _, stderr = run_cli(capsys, "impact", "--model", tmp_path, "--duration", "1h", "--out", tmp_path / "o")
    assert code == 2 and stderr.startswith("error:") and "install crab-tod[litebird]" in stderr


def test_impact_does_not_import_the_extras_at_import_time():
    code = (
        "import sys, crab.integrations.impact, crab.cli.impact_cmd\n"
        "bad = [m for m in ('litebird_sim', 'healpy', 'toast', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------- pieces
def test_white_noise_is_slice_exact_and_seeded():
    names = ["A", "B"]
    full = white_noise(7, names, 1000, 200_000, 2.0)
    assert np.array_equal(white_noise(7, names, 1000 + 70_000, 50_000, 2.0), full[:, 70_000:120_000])
    assert np.array_equal(white_noise(7, names[::-1], 1000, 10, 2.0), full[::-1, :10])
    assert not np.array_equal(white_noise(8, names, 1000, 10, 2.0), full[:, :10])
    assert np.std(full) == pytest.approx(2.0, rel=0.01)


def test_glitch_flags_cover_a_glitch_and_spare_noise():
    g = np.random.default_rng(0)
    tod = g.normal(size=(2, 20_000))
    tod[1, 5000:5040] += 50 * np.exp(-np.arange(40) / 8.0)
    flags = glitch_flags(tod, FS, 5.0)
    assert flags[1, 5000:5015].all() and flags[1].sum() < 80
    assert flags[0].sum() < 10


def test_r_fit_and_band_ratio_recover_a_scaled_template():
    ref = load_reference()
    t1 = ref.bb_primordial(1.0, 200)
    r, sr = spectra.fit_r(0.0123 * t1, t1, (2, 200), variance=np.full(201, 1e-20))
    assert r == pytest.approx(0.0123, rel=1e-12) and sr > 0
    assert spectra.band_ratio(ref.bb_primordial(0.003, 200), ref.bb_primordial(0.001, 200), (2, 200)) == pytest.approx(3.0, rel=1e-12)
    # the shipped table: D_ell^BB(r = 0.001) at the recombination bump, ~6.5e-5 uK^2 (CAMB, Planck 2018)
    assert spectra.d_ell(ref.bb_primordial(0.001, 200))[80] == pytest.approx(6.5e-5, rel=0.05)


def test_config_checks():
    with pytest.raises(InputError, match="even"):
        ImpactConfig(n_detectors=7)
    with pytest.raises(InputError, match="power of two"):
        ImpactConfig(nside=48)
    with pytest.raises(InputError, match="ell_min"):
        ImpactConfig(nside=2, ell_min=10)
    assert ImpactConfig(nside=32).ell_range == (2, 95)


def run_impact_(model, cfg, out=None):
    from crab.integrations.impact import run_impact

    return run_impact(model, cfg, out, progress=False, n_workers=1)


def test_glitches_alone_are_the_truth_rendered_and_need_a_listing_method(lbs, template_json):
    """signal 'glitches' (the default) maps the glitches rendered from their truth rows, with nothing subtracted;
    the deglitching finder sees them with white noise; a generator that lists no glitch is refused with one line."""
    from crab.integrations.impact.mapmaking import UNSEEN

    g = run_impact_(template_json, small(signal="glitches", deglitch=True))
    t = run_impact_(template_json, small(signal="tod", deglitch=True))
    lo, hi = g.summary["ell_range"]
    bb = np.mean(g.spectra["cr"]["BB"][lo : hi + 1])
    assert bb > 0 and g.summary["signal"] == "glitches" and "the glitches alone" in g.headline()
    assert np.isclose(g.summary["binned"]["bb_ratio"], g.summary["binned"]["bb_ratio_map"])  # nothing subtracted
    assert 0 < g.summary["flagged_fraction"] < 0.5
    # the whole TOD's map is the glitch map plus the map of the model's noise: not the same map
    seen = g.maps["cr"][0] != UNSEEN
    assert not np.allclose(t.maps["cr"][:, seen], g.maps["cr"][:, seen])
    with pytest.raises(InputError, match="does not list its glitches"):
        run_impact_(ConstantSource(0.0), small(signal="glitches", conversion_k_per_pw=1.0))
