"""Observation bias estimated jointly with the state (ensemble_da/obs/bias.py, exact.kalman_update_with_bias).

References are independent dense computations: the joint Gaussian over the augmented state
w = (z, β), prior blockdiag(Σ, B), observed through [H, P], conditioned with the textbook Kalman
formulas (tolerance 1e-9: float64 direct solves of well-conditioned systems).
"""

import dataclasses

import numpy as np
import pytest
import torch

import ensemble_da
from ensemble_da.config import GridConfig
from ensemble_da.errors import InputError
from ensemble_da.exact import kalman_update_with_bias
from ensemble_da.guidance import MMPSGuidance, RegressionGuidance, guided_denoiser
from ensemble_da.config import GuidanceConfig
from ensemble_da.obs.bias import ObservationBias, draw_bias
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators import ObservationOperator
from ensemble_da.obs.synthetic import random_locations
from ensemble_da.priors.gaussian import GaussianPrior
from guidance_cases import gaussian_case
from test_priors_gaussian import MODEL, dense_covariance

CHANNELS = np.array(["T850", "T500", "T300"])


def biased_set(prior, n_obs, rng, bias_k=(1.5, -0.8), predictors=("constant",)):
    """Observations of the first two channels with a constant physical bias per channel."""
    lat, lon = random_locations(n_obs, rng)
    ch = CHANNELS[np.arange(n_obs) % 2]
    obs = ObservationSet(time=np.datetime64("2020-01-01"), lat=lat, lon=lon, channel=ch,
                         value=rng.normal(260, 5, n_obs) + np.where(ch == "T850", *bias_k), sigma=0.7)
    op = ObservationOperator.build(obs, prior.grid, prior.normalization, "bilinear")
    return obs, op, ObservationBias.build(obs, op.sigma, prior_sigma=2.0, predictors=predictors)


def dense_joint(sigma_dense, h, p, prior_sigma, y, s):
    """The augmented Kalman update: (z mean, z var, β mean, β cov)."""
    n, k = sigma_dense.shape[0], p.shape[1]
    cw = np.zeros((n + k, n + k))
    cw[:n, :n] = sigma_dense
    cw[n:, n:] = np.diag(prior_sigma**2)
    hw = np.hstack([h, p])
    gain = cw @ hw.T @ np.linalg.inv(hw @ cw @ hw.T + np.diag(s**2))
    mean = gain @ y
    cov = cw - gain @ hw @ cw
    return mean[:n], np.diag(cov)[:n], mean[n:], cov[n:, n:]


# 20 obs: the observation-space form inside kalman_update; 600: the information form.
@pytest.mark.parametrize("n_obs,predictors", [(20, ("constant",)), (600, ("constant",)), (60, ("constant", "latitude"))])
def test_joint_state_and_bias_posterior_matches_the_augmented_kalman_update(n_obs, predictors, rng):
    prior = GaussianPrior.from_config(MODEL, GridConfig(nside=2))
    _, op, bias = biased_set(prior, n_obs, rng, predictors=predictors)
    assert bias.names == (("T850", "T500") if predictors == ("constant",) else
                          ("T850", "T850:latitude", "T500", "T500:latitude"))
    ref = dense_joint(dense_covariance(2, MODEL), op.matrix().toarray(), bias.predictors, bias.prior_sigma, op.y, op.sigma)
    mean, var, beta, cov = kalman_update_with_bias(prior.basis, op.matrix(), op.y, op.sigma, bias.predictors,
                                                   bias.prior_sigma)
    for got, want in zip((mean.reshape(-1), var.reshape(-1), beta, cov), ref):
        np.testing.assert_allclose(got, want, atol=1e-9)


def test_bias_predictors_are_in_normalised_units_per_physical_unit(rng):
    prior = GaussianPrior.from_config(MODEL, GridConfig(nside=2))
    obs, op, bias = biased_set(prior, 12, rng)
    # a physical bias β on T850 shifts the normalised T850 observations by β / scale(T850)
    scale = prior.normalization.scale[prior.normalization.index(["T850"])[0]]
    shift = bias.correction(np.array([3.0, 0.0]))
    np.testing.assert_allclose(shift, np.where(obs.channel == "T850", 3.0 / scale, 0.0), rtol=1e-12)


@pytest.mark.parametrize("s", [0.05, 0.8, 20.0])
def test_mmps_with_bias_is_the_exact_conditional_mean(s):
    """Converged MMPS with the bias model against z₀ | z ~ N(A z, s²A) conditioned on
    y = H z₀ + P β + e with β marginalised (R + P B Pᵀ)."""
    case = gaussian_case(n_obs=10)
    p = np.zeros((10, 2))
    p[np.arange(10) % 3 == 0, 0] = 0.3
    p[np.arange(10) % 3 == 1, 1] = 0.2
    bias = ObservationBias(p, np.array([1.5, 2.5]), ("T850", "T500"))
    g = MMPSGuidance(case.prior, case.op, cg_iters=30, bias=bias)
    out = g(case.z, torch.full((3,), s, dtype=torch.float64))
    a = case.a(s)
    d = case.z.reshape(3, -1).numpy() @ a.T
    cov = s**2 * a
    r_full = np.diag(case.op.sigma**2) + p @ np.diag(bias.prior_sigma**2) @ p.T
    gain = cov @ case.h.T @ np.linalg.inv(case.h @ cov @ case.h.T + r_full)
    ref = d + (case.op.y - d @ case.h.T) @ gain.T
    np.testing.assert_allclose(out.reshape(3, -1).numpy(), ref, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("s", [0.05, 0.8, 20.0])
def test_regression_with_bias_uses_the_full_error_covariance(s):
    case = gaussian_case(n_obs=10)
    p = np.zeros((10, 1))
    p[::2, 0] = 0.25
    bias = ObservationBias(p, np.array([2.0]), ("T850",))
    g = RegressionGuidance(case.prior, case.op, scale=0.7, gamma=0.05, bias=bias)
    out = g(case.z, torch.full((3,), s, dtype=torch.float64))
    a = case.a(s)
    d = case.z.reshape(3, -1).numpy() @ a.T
    r_inv = np.linalg.inv(np.diag(case.op.sigma**2 + 0.05 * s**2) + p @ np.diag(bias.prior_sigma**2) @ p.T)
    ref = d + 0.7 * s**2 * ((case.op.y - d @ case.h.T) @ r_inv) @ case.h @ a
    np.testing.assert_allclose(out.reshape(3, -1).numpy(), ref, rtol=1e-9, atol=1e-9)


def test_dps_refuses_a_bias_model():
    case = gaussian_case(n_obs=4)
    bias = ObservationBias(np.ones((4, 1)), np.array([1.0]), ("T850",))
    with pytest.raises(InputError, match="observations.bias needs guidance.method mmps or regression"):
        guided_denoiser(case.prior, case.op, GuidanceConfig(method="dps"), bias=bias)


def test_sampled_members_and_bias_draws_match_the_exact_joint_posterior(rng):
    """400 MMPS members on the nside-2 Gaussian prior with 30 biased observations (two constant
    channel biases): state mean and variance, and β's mean and variance, against the exact joint
    posterior. Monte-Carlo tolerances: mean error ≤ 4.5 standard errors √(var/N) per element
    (432 elements: a false failure < 1 %), the variance ratio averaged over elements within
    0.92–1.08 (its standard error ≈ √(2/N) = 0.07 per element, far smaller averaged), β's mean
    within 4.5 √(var_β/N) and its variance ratio within 0.75–1.3 (√(2/400) = 0.07 each)."""
    prior = GaussianPrior.from_config(MODEL, GridConfig(nside=2))
    # observations of a truth at the prior mean, plus the biases +2 K (T850) and −1.5 K (T500)
    obs, op, _ = biased_set(prior, 30, rng)
    truth = prior.normalization.denormalize(np.zeros((3, 48)))  # prior mean 0 (normalised)
    true_bias = np.where(obs.channel == "T850", 2.0, -1.5)
    obs = dataclasses.replace(obs, value=op.observe(truth[None])[0] + true_bias + rng.normal(0, 0.7, len(obs)))
    op = ObservationOperator.build(obs, prior.grid, prior.normalization, "bilinear")
    bias = ObservationBias.build(obs, op.sigma, prior_sigma=2.0)
    n = 400
    x = ensemble_da.sample_posterior(prior, op, n, seed=3, sampler=dict(steps=32, batch_size=n),
                                     guidance=dict(method="mmps", cg_iters=40), bias=bias)
    z = prior.normalization.normalize(x.astype(np.float64))
    beta = draw_bias(bias, op, z, seed=3, t_index=0, members=range(n))
    mean, var, b_mean, b_cov = kalman_update_with_bias(prior.basis, op.matrix(), op.y, op.sigma, bias.predictors,
                                                       bias.prior_sigma, prior.prior_mean())
    se = np.sqrt(var / n)
    assert np.abs(z.mean(0) - mean).max() < 4.5 * se.max()
    assert 0.92 < (z.var(0, ddof=1) / var).mean() < 1.08
    np.testing.assert_array_less(np.abs(beta.mean(0) - b_mean), 4.5 * np.sqrt(np.diag(b_cov) / n))
    ratio = beta.var(0, ddof=1) / np.diag(b_cov)
    assert np.all((ratio > 0.75) & (ratio < 1.3)), ratio
    # the estimate finds the true biases, within 4 posterior std
    np.testing.assert_array_less(np.abs(b_mean - [2.0, -1.5]), 4 * np.sqrt(np.diag(b_cov)))
    assert np.sqrt(np.diag(b_cov)).max() < 2.0  # narrower than its prior (std 2 K): the data inform it


def test_a_members_bias_draw_does_not_depend_on_its_batch(rng):
    prior = GaussianPrior.from_config(MODEL, GridConfig(nside=2))
    _, op, bias = biased_set(prior, 10, rng)
    z = rng.normal(size=(4, 3, 48))
    all4 = draw_bias(bias, op, z, seed=1, t_index=2, members=[0, 1, 2, 3])
    one = draw_bias(bias, op, z[2:3], seed=1, t_index=2, members=[2])
    np.testing.assert_array_equal(all4[2], one[0])


def test_bad_bias_settings_are_input_errors(rng):
    prior = GaussianPrior.from_config(MODEL, GridConfig(nside=2))
    obs, op, _ = biased_set(prior, 6, rng)
    with pytest.raises(InputError, match="prior_sigma must be a finite number > 0"):
        ObservationBias.build(obs, op.sigma, prior_sigma=0.0)
