"""`ensemble_da.sample_posterior`, the one-call Python API: what the config path computes, and
exact posteriors with a user's own denoiser."""

from __future__ import annotations

import numpy as np
import pytest

import ensemble_da
from conftest import small_config
from ensemble_da.assimilation import Assimilator
from ensemble_da.errors import InputError
from ensemble_da.obs.inputs import prepare_inputs
from ensemble_da.obs.operators import ObservationOperator
from plugin_denoiser import white_noise


def test_assimilator_is_sample_posterior_with_the_config():
    cfg = small_config(ensemble=dict(members=3), sampler=dict(steps=6, batch_size=2), grid=dict(nside=4))
    a = Assimilator(cfg)
    inputs = prepare_inputs(cfg, a.prior)
    block = a.sample(inputs.observations[0], 0, [0, 1, 2])
    direct = ensemble_da.sample_posterior(
        a.prior, inputs.observations[0], 3, cfg.seed,
        sampler=cfg.sampler.model_dump(), guidance=cfg.guidance.model_dump(),
        operator=cfg.observations.operator, time=cfg.times[0],
    )
    np.testing.assert_array_equal(block.analysis, direct)
    assert "cg_residual_max" in block.diagnostics


def test_user_denoiser_posterior_is_exact_at_observed_cells():
    """White-noise prior N(0, 1) per normalised value, cells observed directly with error s = 0.5
    (normalised): the posterior there is N(y / 1.25, 0.2). 256 members: the standard error of
    the mean is √(0.2/256) ≈ 0.028 per cell, of the variance ≈ 0.2·√(2/255) ≈ 0.018; tolerances
    are 4 standard errors (over 6 cells, a false failure has probability < 1e-3)."""
    den = white_noise(nside=1)
    cells = np.array([0, 3, 5, 7, 9, 11])
    y_norm = np.array([1.0, -0.5, 2.0, 0.0, 0.7, -1.5])
    ch = np.array(["T850", "T500"] * 3)
    center = np.where(ch == "T850", 275.0, 255.0)
    scale = np.where(ch == "T850", 6.0, 5.0)
    op = ObservationOperator.at_cells(cells, ch, center + scale * y_norm, 0.5 * scale, den.grid, den.normalization)
    x = ensemble_da.sample_posterior(den, op, 256, seed=1, sampler=dict(steps=24, batch_size=256), guidance="mmps")
    z = den.normalization.normalize(x.astype(np.float64))
    ci = den.normalization.index(ch)
    at = z[:, ci, cells]
    np.testing.assert_allclose(at.mean(0), y_norm / 1.25, atol=4 * np.sqrt(0.2 / 256))
    np.testing.assert_allclose(at.var(0, ddof=1), 0.2, atol=4 * 0.2 * np.sqrt(2 / 255))
    # unobserved values keep the prior N(0, 1)
    free = np.ones((2, 12), bool)
    free[ci, cells] = False
    assert abs(z[:, free].var() - 1.0) < 0.05


def test_bad_settings_are_input_errors():
    den = white_noise(nside=1)
    with pytest.raises(InputError, match="guidance"):
        ensemble_da.sample_posterior(den, None, 1, guidance="kalman")
    with pytest.raises(InputError, match="members"):
        ensemble_da.sample_posterior(den, None, [])
    with pytest.raises(InputError, match="outside the grid"):
        ObservationOperator.at_cells([12], ["T850"], [275.0], [1.0], den.grid, den.normalization)
