"""Noise: PSD calibration, slice exactness, power-complementary split, fitting."""

import numpy as np
import pytest

from crab.physics.noise import NoiseGenerator, NoiseParams, fit_noise_params, highpass, highpass_power, lowpass_power, welch_psd


def _band_ratio(x, y, fs, lo, nperseg=1 << 14):
    f, a = welch_psd(x, fs, nperseg, robust=False)
    _, b = welch_psd(y, fs, nperseg, robust=False)
    m = (f >= lo) & (f < 2 * lo)
    return a[m].mean() / b[m].mean()


def test_white_level_matches_psd():
    p = NoiseParams(white_asd=2.0, f_knee_hz=0.0)
    x = NoiseGenerator(p, 19.0, seed=1).generate(0, 0, 200_000)
    assert np.std(x) == pytest.approx(p.white_rms(19.0), rel=0.02)
    f, s = welch_psd(x, 19.0, 1024, robust=False)
    assert np.median(s[5:]) == pytest.approx(4.0, rel=0.05)


def test_one_over_f_slope():
    p = NoiseParams(white_asd=1.0, f_knee_hz=0.5, alpha=1.5, f_min_hz=1e-4)
    x = NoiseGenerator(p, 19.0, seed=2).generate(0, 0, 2_000_000)
    f, s = welch_psd(x, 19.0, 1 << 15, robust=False)
    band = (f > 0.003) & (f < 0.05)
    slope = np.polyfit(np.log(f[band]), np.log(s[band] - 1.0), 1)[0]
    assert slope == pytest.approx(-1.5, abs=0.15)


@pytest.mark.parametrize("lowpass", [None, 0.02])
def test_slices_are_exact_and_keys_independent(lowpass):
    p = NoiseParams(white_asd=1.0, f_knee_hz=0.05)
    full = NoiseGenerator(p, 19.0, seed=5, lowpass_hz=lowpass).generate(3, 0, 300_000)
    g = NoiseGenerator(p, 19.0, seed=5, lowpass_hz=lowpass)
    for start, n in [(123_457, 1), (200_001, 7777), (0, 64), (299_000, 1000)]:
        assert np.array_equal(g.generate(3, start, n), full[start : start + n])
    other = NoiseGenerator(p, 19.0, seed=5, lowpass_hz=lowpass).generate(4, 0, 300_000)
    assert abs(np.corrcoef(full, other)[0, 1]) < 0.05
    reseeded = NoiseGenerator(p, 19.0, seed=6, lowpass_hz=lowpass).generate(3, 0, 300_000)
    assert not np.array_equal(full, reseeded)


def test_no_seam_in_variance_at_block_joins():
    p = NoiseParams(white_asd=1.0, f_knee_hz=0.0)
    g = NoiseGenerator(p, 19.0, seed=7, block_samples=256)
    x = np.stack([NoiseGenerator(p, 19.0, seed=s, block_samples=256).generate(0, 0, 256 * 200) for s in range(20)])
    phase = np.arange(x.shape[1]) % g.hop
    var_join = x[:, phase < 4].var()
    var_mid = x[:, (phase > 60) & (phase < 68)].var()
    assert var_join == pytest.approx(var_mid, rel=0.1)


def test_highpass_plus_lowpass_noise_restores_psd():
    fs = 19.0
    p = NoiseParams(white_asd=1.0, f_knee_hz=0.05, alpha=1.0)
    full = NoiseGenerator(p, fs, seed=1).generate(0, 0, 3_000_000)
    lf = NoiseGenerator(p, fs, seed=2, lowpass_hz=0.02).generate(0, 0, 3_000_000)
    combined = highpass(full, fs, 0.02) + lf
    for lo in (0.002, 0.01, 0.05, 1.0):
        assert _band_ratio(combined, full, fs, lo) == pytest.approx(1.0, rel=0.15)
    f = np.logspace(-4, 1, 50)
    assert np.allclose(highpass_power(f, 0.02) + lowpass_power(f, 0.02), 1.0)


def test_fit_recovers_parameters():
    p = NoiseParams(white_asd=0.3, f_knee_hz=0.05, alpha=1.2)
    x = NoiseGenerator(p, 19.0, seed=3).generate(0, 0, 1_000_000)
    q = fit_noise_params(x, 19.0, nperseg=1 << 13)
    assert q.white_asd == pytest.approx(0.3, rel=0.1)
    assert q.f_knee_hz == pytest.approx(0.05, rel=0.5)
    assert q.alpha == pytest.approx(1.2, abs=0.4)


def test_bad_parameters():
    with pytest.raises(ValueError, match="white_asd"):
        NoiseParams(white_asd=-1)
    with pytest.raises(ValueError, match="lowpass_hz"):
        NoiseGenerator(NoiseParams(), 19.0, seed=1, lowpass_hz=0)


def test_tabulated_psd_follows_a_non_1f_spectrum():
    """A band-limited spectrum (not white + 1/f) is reproduced through the fitted table."""
    import scipy.signal

    fs = 19.0
    white = NoiseGenerator(NoiseParams(white_asd=1.0, f_knee_hz=0.05), fs, seed=11).generate_many([0, 1], 0, 400_000)
    sos = scipy.signal.bessel(6, 0.3 * fs, fs=fs, output="sos")  # anti-alias-like roll-off
    x = scipy.signal.sosfilt(sos, white, axis=-1)
    p = fit_noise_params(x, fs, nperseg=8192)
    assert p.table_freq_hz and p.table_low_slope >= 0
    assert NoiseParams(**p.to_dict()) == p  # JSON-like round trip
    y = NoiseGenerator(p, fs, seed=12).generate(0, 0, 400_000)
    for lo in (0.005, 0.05, 0.5, 3.0, 6.0):
        assert _band_ratio(y, x[0], fs, lo) == pytest.approx(1.0, rel=0.2), lo
    # the parametric white + 1/f model alone cannot follow the roll-off at high frequency
    q = NoiseParams(white_asd=p.white_asd, f_knee_hz=p.f_knee_hz, alpha=p.alpha, f_min_hz=p.f_min_hz)
    z = NoiseGenerator(q, fs, seed=12).generate(0, 0, 400_000)
    assert _band_ratio(z, x[0], fs, 6.0) > 1.5


def test_psd_table_validation():
    with pytest.raises(ValueError, match="PSD table"):
        NoiseParams(table_freq_hz=(1.0, 0.5), table_psd=(1.0, 1.0))
    with pytest.raises(ValueError, match="2 frequencies but 1"):
        NoiseParams(table_freq_hz=(1.0, 2.0), table_psd=(1.0,))


def test_noise_fit_clips_glitches():
    """Big glitches are clipped before the fit: their power is mostly kept out of the noise model."""
    fs = 19.0
    p = NoiseParams(white_asd=1.0, f_knee_hz=0.05)
    x = NoiseGenerator(p, fs, seed=21).generate_many([0, 1], 0, 200_000).astype(np.float64)
    g = np.random.default_rng(0)
    t = np.arange(60) / fs
    for row in x:
        for i0 in g.integers(0, x.shape[1] - 60, 400):
            row[i0 : i0 + 60] += 200.0 * np.exp(-t / 0.5)
    clean = fit_noise_params(x, fs, nperseg=8192)
    dirty = fit_noise_params(x, fs, nperseg=8192, clip_sigma=None)
    f = np.array([0.01, 0.1, 1.0])
    assert np.all(dirty.psd(f) > 30 * p.psd(f))  # unclipped, the glitches dominate
    assert np.all(clean.psd(f) < dirty.psd(f) / 8)  # clipped: what is left is the sub-threshold part of the tails
    assert clean.psd(np.array([5.0]))[0] == pytest.approx(p.psd(np.array([5.0]))[0], rel=0.35)


def test_slow_noise_complement_removes_the_generators_own_low_frequency_power():
    from crab.physics.noise import measured_psd, slow_noise_complement

    fs, cut = 19.0, 0.074
    rng = np.random.default_rng(0)
    tod = NoiseGenerator(NoiseParams(white_asd=1.0, f_knee_hz=0.05, alpha=1.5), fs, seed=4).generate_many([0, 1], 0, 1 << 17)
    p = fit_noise_params(tod, fs)
    f = np.array(p.table_freq_hz)
    # a generator without power of its own: the model is unchanged (gain 1)
    same = slow_noise_complement(p, f, np.zeros_like(f), cut)
    assert np.allclose(same.table_psd, p.table_psd)
    # one with half the total power at every frequency: below the cut (low-pass ~ 1) the table halves,
    # far above it (where the low-pass power is < half) it stays
    half = slow_noise_complement(p, f, 0.5 * np.array(p.table_psd), cut)
    r = np.array(half.table_psd) / np.array(p.table_psd)
    assert np.allclose(r[f < 0.3 * cut], 0.5, rtol=0.02)
    assert np.allclose(r[f > 3 * cut], 1.0)
    # one that alone exceeds the total below the cut: nothing (min_gain) is added there
    over = slow_noise_complement(p, f, 2.0 * np.array(p.table_psd), cut, min_gain=1e-3)
    ro = np.array(over.table_psd) / np.array(p.table_psd)
    assert np.allclose(ro, 1e-3) and over.white_asd == p.white_asd
    # the total slow + own PSD reproduces the model below the cut, from a measured PSD on another grid
    own_tod = 0.6 * NoiseGenerator(NoiseParams(white_asd=1.0, f_knee_hz=0.05, alpha=1.5), fs, seed=5).generate_many([0, 1], 0, 1 << 17)
    fo, po = measured_psd(own_tod + rng.normal(0, 1e-9, own_tod.shape), fs, nperseg=8192)
    cal = slow_noise_complement(p, fo, po, cut)
    low = f < 0.5 * cut
    total = np.array(cal.table_psd)[low] * lowpass_power(f[low], cut) + np.interp(f[low], fo, po)
    assert np.allclose(total / np.array(p.table_psd)[low], 1.0, rtol=0.15)
    assert slow_noise_complement(NoiseParams(), f, np.zeros_like(f), cut) == NoiseParams()  # no table: unchanged
