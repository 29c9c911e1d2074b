"""Streaming ensemble statistics (ensemble_da.stats): the sort-based fair CRPS against
scoringrules' direct estimator, Chan merges of partial moments against two-pass moments, and
BlockStats against a direct computation."""

from __future__ import annotations

import numpy as np
import scoringrules as sr

from ensemble_da.stats import BlockStats, EnsembleMoments, fair_crps


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


def test_chan_merge_of_blocks_equals_two_pass_moments(rng):
    x = rng.normal(3.0, 2.0, size=(23, 3, 50))
    merged = EnsembleMoments()
    for lo, hi in ((0, 8), (8, 16), (16, 23)):
        merged = merged.merge(EnsembleMoments.of(x[lo:hi]))
    assert merged.count == 23
    np.testing.assert_allclose(merged.mean, x.mean(0), rtol=1e-13)
    np.testing.assert_allclose(merged.variance(), x.var(0, ddof=1), rtol=1e-12)


class _Pick:
    """H that reads fixed (channel, cell) points: an independent stand-in for the operator."""

    def __init__(self, idx):
        self.idx = idx

    def apply_numpy(self, x):
        return x.reshape(x.shape[0], -1)[:, self.idx]


def test_block_stats_are_moments_and_values_at_the_observations(rng):
    block = rng.normal(size=(4, 2, 12)).astype(np.float32)
    stats = BlockStats.of(block, _Pick(np.array([0, 5, 13])), 0.25)
    x = block.astype(np.float64)
    np.testing.assert_array_equal(stats.hx, np.stack([x[:, 0, 0], x[:, 0, 5], x[:, 1, 1]], axis=1))
    np.testing.assert_allclose(stats.moments.mean, x.mean(0), rtol=1e-14)
    assert stats.moments.count == 4 and stats.cg_residual_max == 0.25
