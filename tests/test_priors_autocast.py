"""A prior says whether its forward may run under bf16 autocast (issue 11): the exact Gaussian
prior never does (it is the reference the sampler is checked against); a prior that does not
say is allowed to."""

from __future__ import annotations

from conftest import small_config

from ensemble_da.priors import load_prior
from ensemble_da.priors.base import allows_autocast


def test_the_exact_gaussian_prior_refuses_autocast_and_others_default_to_allowing_it():
    cfg = small_config(grid=dict(nside=2))
    assert allows_autocast(load_prior(cfg.model, cfg.grid)) is False
    assert allows_autocast(object()) is True
