"""Array-level metrics: each recognises same-parent samples and a broken one."""

from __future__ import annotations

import numpy as np
import pytest

from crab.analysis import window_features as WF
from crab.validation import classifier as C
from crab.validation import metrics as M
from crab.validation import nearest_window as NN
from crab.validation import seams as SEAMS
from crab.validation import spectra as S
from crab.core.errors import InputError


def test_poisson_rate_and_z():
    r, e = M.poisson_rate(100, 2.0)
    assert (r, e) == (50.0, 5.0)
    assert M.poisson_rate(0, 2.0)[1] == 0.5  # zero count: error of one count
    assert M.rate_zscore(50, 3, 58, 4) == pytest.approx(8 / 5)
    with pytest.raises(InputError):
        M.poisson_rate(1, 0.0)
    assert M.dispersion_index(np.full(10, 5.0)) == 0.0
    g = np.random.default_rng(0)
    assert M.dispersion_index(g.poisson(20, 2000)) == pytest.approx(1.0, abs=0.1)


def test_powerlaw_slope_recovers_alpha():
    g = np.random.default_rng(1)
    x = (g.pareto(1.5, 4000) + 1.0) * 0.3  # dN/dx ~ x^-2.5 above 0.3
    a, e, n = M.powerlaw_slope_mle(x, 0.6)
    assert abs(a - 2.5) < 3 * e and e < 0.06 and n == np.sum(x >= 0.6)
    assert np.isnan(M.powerlaw_slope_mle(np.array([1.0]), 0.5)[0])


def test_ks_and_separation_power_null_and_shift():
    g = np.random.default_rng(2)
    null_ks, null_sp, shift_ks, shift_sp = [], [], [], []
    edges = M.quantile_edges(g.normal(size=5000), 10)
    for _ in range(200):
        a, b = g.normal(size=300), g.normal(size=500)
        c = g.normal(0.5, 1.0, size=500)
        null_ks.append(M.scaled_ks(a, b))
        shift_ks.append(M.scaled_ks(a, c))
        null_sp.append(M.scaled_separation_power(M.histogram(a, edges), M.histogram(b, edges)))
        shift_sp.append(M.scaled_separation_power(M.histogram(a, edges), M.histogram(c, edges)))
    # Kolmogorov distribution mean ~0.87; chi2(9) mean 9
    assert np.mean(null_ks) == pytest.approx(0.87, rel=0.1)
    assert np.mean(null_sp) == pytest.approx(9.0, rel=0.15)
    thr_ks = M.null_threshold(np.array(null_ks), 3.0)[0]
    thr_sp = M.null_threshold(np.array(null_sp), 3.0)[0]
    assert np.mean(np.array(shift_ks) > thr_ks) > 0.9
    assert np.mean(np.array(shift_sp) > thr_sp) > 0.9
    assert M.scaled_ks(np.zeros(0), a) == np.inf
    assert M.separation_power(np.array([1, 0]), np.array([0, 1])) == pytest.approx(1.0)
    assert M.separation_power(np.array([1, 2, 3]), np.array([2, 4, 6])) == pytest.approx(0.0)


def test_integer_edges():
    e = M.quantile_edges(np.array([0, 0, 1, 1, 2, 3, 5]), 10, integer=True)
    assert e[0] == -np.inf and e[-1] == np.inf and np.allclose(np.diff(e[1:-1]), 1.0)
    h = M.histogram(np.array([0, 1, 1, 9]), e)
    assert h.sum() == 4 and h[-1] >= 1


def test_profile_chi2_null_and_shift():
    g = np.random.default_rng(3)
    null = [M.profile_chi2(g.normal(size=(16, 5)), g.normal(size=(20, 5))) for _ in range(300)]
    assert np.mean(null) == pytest.approx(5.0 * 1.15, rel=0.2)  # chi2(5), a bit heavier (estimated errors)
    shifted = M.profile_chi2(g.normal(size=(16, 5)), g.normal(size=(20, 5)) + np.array([0, 0, 0, 0, 1.5]))
    assert shifted > M.null_threshold(np.array(null), 3.0)[0]
    with pytest.raises(InputError):
        M.profile_chi2(np.zeros((1, 3)), np.zeros((4, 3)))


def test_octave_bands_and_flat_white_psd():
    e = S.octave_bands(0.04, 9.5)
    assert e[0] == 0.04 and e[-1] <= 9.5 and np.allclose(e[1:-1] / e[:-2], 2.0)
    f = np.linspace(0, 9.5, 1000)
    lp = S.band_log_power(f, np.full_like(f, 2.0), e)
    assert np.allclose(lp, np.log(2.0))


def test_autocorrelation_of_white_and_smoothed():
    g = np.random.default_rng(4)
    x = g.normal(size=20000)
    ac = S.autocorrelation(x, np.array([1, 2]))
    assert np.all(np.abs(ac) < 0.03)
    y = x[1:] + x[:-1]
    assert S.autocorrelation(y, np.array([1]))[0] == pytest.approx(0.5, abs=0.03)


def test_window_features_known_window():
    w = np.zeros((1, 100))
    w[0, 10] = 5.0
    f = WF.window_summary_features(w, 10.0, np.array([1]))
    mx, integ, ng, sk, ku = f[0]
    assert mx == 5.0 and integ == pytest.approx(0.5) and ng == 1 and sk > 5 and ku > 50
    assert WF.classifier_features(np.random.default_rng(0).normal(size=(4, 256)), 1.0).shape == (4, 33)


def test_roc_auc():
    assert C.roc_auc(np.array([2, 3.0]), np.array([0, 1.0])) == 1.0
    assert C.roc_auc(np.array([0, 1.0]), np.array([2, 3.0])) == 0.0
    assert C.roc_auc(np.ones(5), np.ones(7)) == 0.5
    g = np.random.default_rng(5)
    p, n = g.normal(0.5, 1, 40), g.normal(0, 1, 30)
    brute = np.mean((p[:, None] > n[None, :]) + 0.5 * (p[:, None] == n[None, :]))
    assert C.roc_auc(p, n) == pytest.approx(brute)
    aucs = [C.roc_auc(g.normal(size=100), g.normal(size=150)) for _ in range(400)]
    assert np.std(aucs) == pytest.approx(C.auc_null_sigma(100, 150), rel=0.15)


def test_classifier_scored_only_on_held_out_windows():
    """A network that memorises its training windows scores ~0.5 on the held-out ones.

    Both classes come from the same distribution, so any training-set skill is
    memorisation; the returned train/test indices are disjoint.
    """
    g = np.random.default_rng(6)
    a, b = g.normal(size=(300, 33)), g.normal(size=(300, 33))
    r = C.classifier_two_sample_test(a, b, steps=600, hidden=128, weight_decay=0.0, seed=1)
    assert r.train_auc > 0.9  # it did memorise the training windows
    assert abs(r.auc - 0.5) < 4 * r.auc_sigma  # but is scored on windows it never saw
    for tr, te, n in ((r.train_a, r.test_a, len(a)), (r.train_b, r.test_b, len(b))):
        assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) <= n
        assert tr.max() < n and te.max() < n
    assert len(r.scores_a) == len(r.test_a) and len(r.scores_b) == len(r.test_b)


def test_classifier_group_split_keeps_blocks_apart():
    """Windows of one time block share slow features: with groups, no block is on both sides."""
    g = np.random.default_rng(11)
    blocks_a, blocks_b = np.repeat(np.arange(20), 8), np.repeat(np.arange(30), 8)
    # every block has its own offset (a slow feature), identical in distribution for both classes
    a = g.normal(size=(160, 5)) + 3 * g.normal(size=(20, 1))[blocks_a]
    b = g.normal(size=(240, 5)) + 3 * g.normal(size=(30, 1))[blocks_b]
    r = C.classifier_two_sample_test(a, b, groups_a=blocks_a, groups_b=blocks_b, steps=400, hidden=64, weight_decay=0.0, seed=3)
    assert not set(blocks_a[r.train_a]) & set(blocks_a[r.test_a])
    assert not set(blocks_b[r.train_b]) & set(blocks_b[r.test_b])
    assert abs(r.auc - 0.5) < 4 * r.auc_sigma
    # without groups the block offsets leak the label into the test windows
    leak = C.classifier_two_sample_test(a, b, steps=400, hidden=64, weight_decay=0.0, seed=3)
    assert leak.auc > r.auc
    with pytest.raises(InputError):
        C.classifier_two_sample_test(a, b, groups_a=np.zeros(160), groups_b=blocks_b)


def test_classifier_separates_different_windows():
    g = np.random.default_rng(7)
    a, b = g.normal(size=(300, 10)), g.normal(size=(400, 10))
    b[:, 3] += 1.5
    r = C.classifier_two_sample_test(a, b, seed=2)
    assert r.auc > 0.8
    assert len(r.test_a) == len(r.test_b)  # balanced
    with pytest.raises(InputError):
        C.classifier_two_sample_test(a[:5], b[:5])


def test_classifier_repeats_average_out_the_luck_of_the_split():
    """repeats: the AUC is the mean over independent splits, whose first is the single-split test."""
    g = np.random.default_rng(12)
    a, b = g.normal(size=(200, 6)), g.normal(size=(200, 6))
    b[:, 0] += 0.3
    one = C.classifier_two_sample_test(a, b, seed=4)
    rep = C.classifier_two_sample_test(a, b, seed=4, repeats=8)
    assert len(rep.auc_splits) == 8 and rep.auc == pytest.approx(rep.auc_splits.mean())
    assert rep.auc_splits[0] == pytest.approx(one.auc) and np.array_equal(rep.test_a, one.test_a)
    assert len(np.unique(rep.auc_splits)) == 8  # different splits
    # over seeds, the averaged AUC scatters less than a single split's
    singles = [C.classifier_two_sample_test(a, b, seed=s, steps=80).auc for s in range(6)]
    means = [C.classifier_two_sample_test(a, b, seed=s, steps=80, repeats=6).auc for s in range(6)]
    assert np.std(means) < 0.6 * np.std(singles)
    with pytest.raises(InputError, match="repeats"):
        C.classifier_two_sample_test(a, b, repeats=0)


def test_sliding_nn_distance_matches_brute_force_and_finds_shifted_copies():
    g = np.random.default_rng(8)
    series = [g.normal(size=700), g.normal(size=300)]
    W = 32
    q = g.normal(size=(5, W))
    q[1] = series[0][123 : 123 + W]  # copy at an arbitrary offset
    q[2] = series[1][300 - W :]  # copy at the very end of the second series
    d = NN.sliding_nn_distance(q, series, chunk_samples=100)
    brute = np.array([min(np.min(np.linalg.norm(np.lib.stride_tricks.sliding_window_view(s, W) - qi, axis=1)) for s in series) for qi in q])
    assert np.allclose(d, brute, atol=1e-3)
    assert d[1] < 1e-3 and d[2] < 1e-3
    # windows never straddle two series
    straddle = np.concatenate([series[0][-10:], series[1][: W - 10]])
    assert NN.sliding_nn_distance(straddle[None], series)[0] > 1.0


def test_seam_statistics_see_joins():
    g = np.random.default_rng(9)
    P, n = 64, 64 * 400
    y = g.normal(size=(2, n))
    peaks = np.zeros(0, int)
    clean = SEAMS.seam_statistics(y, np.zeros(0, int), peaks, P)
    assert abs(clean["step"]) < 3 and abs(clean["variance"]) < 3
    stepped = y + np.repeat(g.normal(0, 1.0, n // P), P)[None, :]  # an offset jump at every join
    assert abs(SEAMS.seam_statistics(stepped, np.zeros(0, int), peaks, P)["step"]) > 5
    damped = y.copy()
    for j in range(P, n, P):
        damped[:, j - 2 : j + 2] *= 0.5  # cross-fade dip
    assert abs(SEAMS.seam_statistics(damped, np.zeros(0, int), peaks, P)["variance"]) > 5
    near_joins = np.arange(P, n, P)
    z = SEAMS.seam_statistics(y, np.zeros(near_joins.size, int), near_joins, P)["glitch_z"]
    assert z > 5


def test_null_threshold_matches_known_quantiles():
    g = np.random.default_rng(10)
    # Kolmogorov distribution (scaled KS of same-parent samples): 99.73 % point 1.80, 95.45 % point 1.38
    ks = [M.scaled_ks(g.normal(size=400), g.normal(size=600)) for _ in range(400)]
    assert M.null_threshold(np.array(ks), 3.0)[0] == pytest.approx(1.80, rel=0.06)
    assert M.null_threshold(np.array(ks), 2.0)[0] == pytest.approx(1.38, rel=0.06)
    # 4 x chi2(1) (four fully correlated components): 99.73 % point 4 x 9.0
    v = 4 * g.normal(size=4000) ** 2
    assert M.null_threshold(v, 3.0)[0] == pytest.approx(36.0, rel=0.1)
    thr, mu, sd = M.null_threshold(np.array([1.0, 2.0, 3.0, np.nan]), 2.0)
    assert mu == 2.0 and sd == 1.0 and thr > mu + sd
    assert np.isnan(M.null_threshold(np.array([1.0]), 2.0)[0])


def test_glitch_sensitive_features_count_a_glitch():
    """The checkpoint-selection features (crab.models.gan.quality) see one glitch in one window of two."""
    w = np.random.default_rng(1).normal(size=(2, 1, 256))
    w[1, 0, 100:104] += [40.0, 20.0, 10.0, 5.0]
    f = WF.glitch_sensitive_features(w, 1.0)
    assert set(f) == {"max", "min", "std", "noise", "n_hot", "n_glitch", "diff_kurt", "lag1", "pooled"}
    assert f["n_glitch"].tolist() == [0.0, 1.0] and f["n_hot"][1] >= 3 and f["pooled"].size == 512
    assert f["noise"] == pytest.approx([1.0, 1.0], rel=0.2)
