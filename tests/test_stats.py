"""Every score of DESIGN.md §7 (ensemble_da/stats.py) against an independent computation on
known inputs: direct formulas written out here on small arrays, and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import scoringrules as sr
from scipy import stats as sps

from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.stats import BlockStats, EnsembleMoments, ObsFit, OrderedReduction, fair_crps, rank_counts, \
    spread_skill_ratio, time_metrics


def _crps_fair_direct(members: list[float], y: float) -> float:
    """Fair CRPS written out (Ferro 2014): mean|x_i − y| − Σ_i Σ_j |x_i − x_j| / (2 M (M − 1))."""
    m = len(members)
    first = sum(abs(x - y) for x in members) / m
    second = sum(abs(a - b) for a in members for b in members) / (2 * m * (m - 1))
    return first - second


def test_moments_merge_equals_whole_ensemble(rng):
    x = rng.normal(3.0, 2.0, size=(13, 2, 5))
    merged = EnsembleMoments().update(x[:4]).update(x[4:5]).merge(EnsembleMoments.of(x[5:]))
    assert merged.count == 13
    np.testing.assert_allclose(merged.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged.variance(), x.var(0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(merged.std(ddof=0), x.std(0), rtol=1e-12)


def test_fair_crps_small_array_by_hand():
    # 4 members, y = 1: mean|x−y| = (1+0+1+3)/4 = 1.25; Σ|xi−xj| over ordered pairs = 2·(1+2+4+1+3+2) = 26
    # → 26 / (2·4·3) = 13/12; fair CRPS = 1.25 − 13/12 = 1/6.
    assert fair_crps(np.array([0.0, 1.0, 2.0, 4.0]), np.array(1.0)) == pytest.approx(1 / 6, abs=1e-12)
    rng = np.random.default_rng(5)
    ens, y = rng.normal(size=(7, 3)), rng.normal(size=3)
    np.testing.assert_allclose(fair_crps(ens, y), [_crps_fair_direct(list(ens[:, i]), y[i]) for i in range(3)],
                               rtol=1e-12)


def test_fair_crps_matches_gaussian_closed_form(rng):
    """Fair CRPS is unbiased for the CRPS of the distribution the members are drawn from;
    for N(μ, s²): s·[z(2Φ(z) − 1) + 2φ(z) − 1/√π], z = (y − μ)/s (Gneiting & Raftery 2007)."""
    n, m, mu, s = 4000, 8, 1.0, 2.0
    y = rng.normal(0.0, 3.0, size=n)
    ens = rng.normal(mu, s, size=(m, n))
    z = (y - mu) / s
    closed = s * (z * (2 * sps.norm.cdf(z) - 1) + 2 * sps.norm.pdf(z) - 1 / np.sqrt(np.pi))
    diff = fair_crps(ens, y) - closed
    # Mean of n independent differences: the tolerance is 4 standard errors of that mean.
    assert abs(diff.mean()) < 4 * diff.std(ddof=1) / np.sqrt(n)


def test_rank_counts_by_hand_and_random_ties():
    ens = np.array([[0.0, 5.0], [1.0, 6.0], [2.0, 7.0]])  # 3 members at 2 points
    truth = np.array([1.5, 9.0])  # ranks 2 and 3
    np.testing.assert_array_equal(rank_counts(ens, truth), [0, 0, 1, 1])
    # Every member equal to the truth: without tie-breaking all ranks would be 0; with random
    # tie-breaking they are uniform over 0..M. χ² goodness of fit at the 0.1% level.
    m, n = 5, 6000
    counts = rank_counts(np.zeros((m, n)), np.zeros(n), np.random.default_rng(1))
    assert counts.sum() == n
    assert sps.chisquare(counts).pvalue > 1e-3
    # A truth below some tied members keeps the members below it: ranks 1..3 only.
    counts = rank_counts(np.array([[0.0], [1.0], [1.0], [2.0]]).repeat(3000, 1), np.ones(3000),
                         np.random.default_rng(2))
    assert counts[0] == 0 and counts[4] == 0 and sps.chisquare(counts[1:4]).pvalue > 1e-3


def test_rank_counts_flat_for_exchangeable_truth(rng):
    m, n = 9, 20000
    draws = rng.normal(size=(m + 1, n))
    counts = rank_counts(draws[1:], draws[0])
    assert sps.chisquare(counts).pvalue > 1e-3  # truth exchangeable with the members: uniform ranks


def test_spread_skill_ratio_formula():
    assert spread_skill_ratio(2.0, 4.0, 8) == pytest.approx(np.sqrt(9 / 8) * 0.5)
    assert np.isnan(spread_skill_ratio(1.0, 0.0, 8))


def test_time_metrics_every_score_against_direct_formulas(rng):
    m, nc, npix = 6, 2, 12
    channels = ["T850", "T500"]
    x = rng.normal(250.0, 3.0, size=(m, nc, npix))
    truth = rng.normal(250.0, 3.0, size=(nc, npix))
    e_mean, e_spread = rng.normal(250.0, 1.0, size=(nc, npix)), rng.uniform(1.0, 2.0, size=(nc, npix))
    # Observations: the value at a cell of each channel (nearest operator written by hand).
    cells = np.array([0, 3, 5, 7, 2, 9, 11, 4])
    chan = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    assim = np.array([True, True, True, False, True, True, False, False])
    obs = ObservationSet(time=np.datetime64("2020-01-01", "ns"), lat=np.linspace(-40, 40, 8), lon=np.arange(8) * 10.0,
                         channel=np.array(channels)[chan], value=rng.normal(250.0, 3.0, size=8),
                         sigma=np.full(8, 0.5), assimilated=assim)
    hx = x[:, chan, cells]
    out = time_metrics(channels, EnsembleMoments.of(x), ObsFit(obs, hx), truth, fair_crps(x, truth),
                       (e_mean, e_spread), np.random.default_rng(3))

    noise_stream = np.random.default_rng(3)  # the same stream, drawn in the same order (channels in turn)
    for c, name in enumerate(channels):
        xs = x[:, c]  # (member, cell)
        mean = [sum(xs[i, p] for i in range(m)) / m for p in range(npix)]
        var = [sum((xs[i, p] - mean[p]) ** 2 for i in range(m)) / (m - 1) for p in range(npix)]
        rmse = np.sqrt(sum((mean[p] - truth[c, p]) ** 2 for p in range(npix)) / npix)
        assert out[f"spread/{name}"] == pytest.approx(np.mean(np.sqrt(var)))
        assert out[f"rmse/{name}"] == pytest.approx(rmse)
        assert out[f"ssr/{name}"] == pytest.approx(np.sqrt((m + 1) / m) * np.sqrt(np.mean(var)) / rmse)
        assert out[f"crps/{name}"] == pytest.approx(
            np.mean([_crps_fair_direct(list(xs[:, p]), truth[c, p]) for p in range(npix)]))
        assert out[f"exact_mean_err/{name}"] == pytest.approx(
            np.sqrt(np.mean([((mean[p] - e_mean[c, p]) / e_spread[c, p]) ** 2 for p in range(npix)])))
        assert out[f"exact_var_ratio/{name}"] == pytest.approx(np.mean(var) / np.mean(e_spread[c] ** 2))
        a_idx = [i for i in range(8) if chan[i] == c and assim[i]]
        h_idx = [i for i in range(8) if chan[i] == c and not assim[i]]
        resid = {i: obs.value[i] - np.mean(x[:, c, cells[i]]) for i in range(8)}
        assert out[f"oa_rmse/{name}"] == pytest.approx(np.sqrt(np.mean([resid[i] ** 2 for i in a_idx])))
        assert out[f"oa_bias/{name}"] == pytest.approx(np.mean([resid[i] for i in a_idx]))
        assert out[f"heldout_oa_rmse/{name}"] == pytest.approx(np.sqrt(np.mean([resid[i] ** 2 for i in h_idx])))
        assert out[f"spread_at_obs/{name}"] == pytest.approx(np.mean([np.std(x[:, c, cells[i]], ddof=1) for i in a_idx]))
        # held-out spread-skill: √mean(σ_o² + (M+1)/M·σ_a²) / rms(O − mean)
        spread2 = [np.var(x[:, c, cells[i]], ddof=1) for i in h_idx]
        assert out[f"heldout_ssr/{name}"] == pytest.approx(
            np.sqrt(np.mean([0.25 + (m + 1) / m * v for v in spread2])) / np.sqrt(np.mean([resid[i] ** 2 for i in h_idx])))
        noisy = x[:, c, cells[h_idx]] + noise_stream.standard_normal((m, len(h_idx))) * obs.sigma[h_idx]
        assert out[f"heldout_crps/{name}"] == pytest.approx(
            np.mean([_crps_fair_direct(list(noisy[:, j]), obs.value[i]) for j, i in enumerate(h_idx)]))


# The sort-based fair CRPS (O(M log M)) against scoringrules' pairwise estimator; BlockStats.
def test_fair_crps_equals_the_pairwise_estimator(rng):
    for m in (2, 3, 16, 51):
        ens = rng.normal(size=(m, 4, 37))
        ens[:, 0, :5] = ens[0, 0, :5]  # ties among members
        truth = rng.normal(size=(4, 37))
        ref = sr.crps_ensemble(truth, ens, m_axis=0, estimator="fair")
        np.testing.assert_allclose(fair_crps(ens, truth), ref, rtol=1e-12, atol=1e-12)


def test_fair_crps_never_builds_a_member_by_member_array(rng):
    # 4096 members at 64 points: an (M, M, points) float64 array would need 8 GiB.
    import tracemalloc

    ens, truth = rng.normal(size=(4096, 64)), rng.normal(size=64)
    tracemalloc.start()
    fair_crps(ens, truth)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * ens.nbytes


class _Pick:
    """H that reads fixed (channel, cell) points: an independent stand-in for the operator."""

    def __init__(self, idx):
        self.idx = idx

    def observe(self, x):
        return x.reshape(x.shape[0], -1)[:, self.idx]


def test_block_stats_are_moments_and_values_at_the_observations(rng):
    block = rng.normal(size=(4, 2, 12)).astype(np.float32)
    stats = BlockStats.of(block, _Pick(np.array([0, 5, 13])), 0.25)
    x = block.astype(np.float64)
    np.testing.assert_array_equal(stats.hx, np.stack([x[:, 0, 0], x[:, 0, 5], x[:, 1, 1]], axis=1))
    np.testing.assert_allclose(stats.moments.mean, x.mean(0), rtol=1e-14)
    assert stats.moments.count == 4 and stats.cg_residual_max == 0.25


def test_ordered_reduction_is_the_two_pass_result_in_any_arrival_order_and_counts_a_block_once(rng):
    members = rng.normal(size=(7, 2, 12))
    blocks = [(0, 3), (3, 5), (5, 7)]
    stats = [BlockStats(EnsembleMoments.of(members[lo:hi]), members[lo:hi, 0, :4], r)
             for (lo, hi), r in zip(blocks, (float("nan"), 0.5, 0.25))]
    results = []
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        red = OrderedReduction(3)
        for k, i in enumerate(order):
            assert red.add(i, stats[i]) and red.complete == (k == 2)
            assert not red.add(i, stats[i])  # a unit run twice counts once
        results.append(red)
        np.testing.assert_allclose(red.moments.mean, members.mean(0), rtol=1e-13)
        np.testing.assert_allclose(red.moments.variance(), members.var(0, ddof=1), rtol=1e-12)
        np.testing.assert_array_equal(red.fit(None).hx, members[:, 0, :4])  # member order
        assert red.cg_residual_max == 0.5 and red.moments.count == 7
    for red in results[1:]:  # bit for bit: merged in block order whatever the arrival
        np.testing.assert_array_equal(red.moments.m2, results[0].moments.m2)
    one = EnsembleMoments.of(members[:1])
    np.testing.assert_array_equal(one.spread(), np.zeros((2, 12)))
    np.testing.assert_allclose(EnsembleMoments.of(members).spread(), members.std(0, ddof=1), rtol=1e-12)
