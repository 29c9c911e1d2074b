"""The in-process API: member independence and the whole-run reduction."""

import numpy as np
import pytest

from conftest import small_config
from ensemble_da.assimilation import Assimilator, assimilate
from ensemble_da.obs.inputs import prepare_inputs


@pytest.mark.parametrize("method", ["mmps", "regression", "dps"])
def test_member_does_not_depend_on_batch_companions(method):
    cfg = small_config(sampler=dict(steps=6, batch_size=8), guidance=dict(method=method, gamma=0.1, zeta=5.0))
    a = Assimilator(cfg)
    obs = prepare_inputs(cfg, a.prior).observations[0]
    batch = a.sample(obs, 0, [3, 11, 5, 0, 7, 2, 9, 4]).analysis
    alone = a.sample(obs, 0, [5]).analysis
    other = a.sample(obs, 0, [5, 100, 101]).analysis
    np.testing.assert_array_equal(alone[0], batch[2])
    np.testing.assert_array_equal(other[0], batch[2])


def test_assimilate_reports_every_metric_name():
    cfg = small_config(sampler=dict(steps=8), ensemble=dict(members=6), times=["2020-01-01T00", "2020-01-01T06"])
    a = Assimilator(cfg)
    res = assimilate(cfg, prepare_inputs(cfg, a.prior), a)
    assert res.analysis.shape == (2, 6, 3, 768) and res.analysis.dtype == np.float32
    for name in ("oa_rmse", "oa_bias", "heldout_oa_rmse", "spread_at_obs", "spread", "rmse", "crps", "ssr",
                 "exact_mean_err", "exact_var_ratio"):
        for ch in ("T850", "T500", "T300"):
            assert np.isfinite(res.metrics[1][f"{name}/{ch}"]), name
    assert res.exact_mean.shape == (2, 3, 768)
    assert "cg_residual_max" in res.diagnostics[0]


def test_prior_is_conditioned_on_the_analysis_time():
    # 4 steps: with 2 Heun steps the last stage (σ 80 → 0.002) leaves |z| ≈ 135 prior std, a divergence
    cfg = small_config(sampler=dict(steps=4), times=["2020-01-01T00", "2020-03-01T06"], guidance=dict(method="none"))
    a = Assimilator(cfg)
    seen = []

    class Recording:
        """The Gaussian prior, recording the condition of every call."""

        grid, normalization = a.prior.grid, a.prior.normalization
        sigma_min, sigma_max = a.prior.sigma_min, a.prior.sigma_max

        def __call__(self, z, sigma, condition=None):
            seen.append(condition)
            return a.prior(z, sigma, condition)

    Assimilator(cfg, prior=Recording()).sample(None, 1, [0])
    # 2020 is a leap year: March 1 is day 61; 06 UTC is 21600 s
    assert seen and all(c == {"day_of_year": 61.25, "second_of_day": 21600.0} for c in seen)
