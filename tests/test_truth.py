"""OSSE truths of a prior without a closed form (`ensemble_da/truth.py`): `sample_posterior` with
no observations, on the truth stream, so the run's sampler settings, bf16 policy and divergence
message are the posterior's own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import small_config

from ensemble_da.channels import Normalization
from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.synthetic import TRUTH_STREAM
from ensemble_da.priors.base import time_condition
from ensemble_da.sampling import DivergenceError, KarrasSchedule, edm_sample, member_generator
from ensemble_da.truth import draw_truth, draw_truths


class SampledOnly:
    """The N(0, I) prior (normalised units) without `sample_truth`: its truth must be sampled."""

    def __init__(self):
        self.grid = HealpixGrid(2)
        self.normalization = Normalization(("T850", "T500"), [275.0, 255.0], [6.0, 5.0])
        self.sigma_min, self.sigma_max = 0.002, 80.0

    def __call__(self, z, sigma, condition=None):
        return z / (1.0 + sigma.reshape(-1, 1, 1).to(z.dtype) ** 2)


class NoAutocast(SampledOnly):
    """Records whether its forward ever ran under CUDA autocast (it says it must not)."""

    allows_autocast = False

    def __call__(self, z, sigma, condition=None):
        self.autocast_seen = getattr(self, "autocast_seen", False) or torch.is_autocast_enabled("cuda")
        return super().__call__(z, sigma, condition)


def test_sampled_truth_is_the_unguided_sampler_draw_on_the_truth_stream():
    cfg = small_config(seed=5, times=["2020-01-01T00:00", "2020-01-02T00:00"], sampler=dict(steps=8))
    prior = SampledOnly()
    assert not hasattr(prior, "sample_truth")
    truths = draw_truths(prior, cfg)
    for t in range(2):
        z = edm_sample(prior, [member_generator(5, t, TRUTH_STREAM)], KarrasSchedule.from_config(cfg.sampler),
                       solver=cfg.sampler.solver, churn=cfg.sampler.churn,
                       condition=time_condition(cfg.analysis_times()[t]), autocast=False)
        ref = prior.normalization.denormalize(z[0].double().numpy())
        np.testing.assert_array_equal(truths[t], ref.astype(np.float32))
        np.testing.assert_array_equal(draw_truth(prior, cfg, t), truths[t].astype(np.float64))
    assert not np.allclose(truths[0], truths[1])  # one truth per time, from its own stream


def test_sampled_truth_divergence_is_restated_as_the_unguided_prior_with_a_fix():
    class Diverging(SampledOnly):
        def __call__(self, z, sigma, condition=None):
            return z * float("nan")

    cfg = small_config(sampler=dict(steps=8))
    with pytest.raises(DivergenceError, match=r"guidance\.method=none.*drawing the OSSE truth.*the unguided prior diverges") as info:
        draw_truth(Diverging(), cfg, 0)
    assert str(TRUTH_STREAM) not in str(info.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="autocast applies on CUDA only")
def test_sampled_truth_respects_a_prior_that_refuses_autocast():
    prior = NoAutocast()
    prior.device = torch.device("cuda")
    draw_truth(prior, small_config(sampler=dict(steps=4, autocast="bf16")), 0)
    assert prior.autocast_seen is False
