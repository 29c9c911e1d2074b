"""Way (b) of entering the background (ensemble_da/background_observation.py): the forecast as a
dense observation on top of the single-time prior, against independent computations."""

import numpy as np
import pytest

from ensemble_da.background_observation import background_operator, cycle_with_background_observation
from ensemble_da.config import GridConfig, GuidanceConfig, model_config, SamplerConfig
from ensemble_da.dynamics.markov import MarkovForecast
from ensemble_da.kalman import dense_covariance, kalman_filter
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators import ObservationOperator
from ensemble_da.obs.synthetic import random_locations
from ensemble_da.priors.gaussian_markov import GaussianMarkovPrior

MODEL = model_config(kind="gaussian_markov", rho=0.8, channels=["T850", "T500"], mean=dict(T850=275.0, T500=255.0),
                    std=dict(T850=6.0, T500=5.0), length_scale_km=2500)


@pytest.fixture(scope="module")
def prior():
    return GaussianMarkovPrior.from_config(MODEL, GridConfig(nside=2))


def point_operator(prior, rng, n=12):
    lat, lon = random_locations(n, rng)
    obs = ObservationSet(time=np.datetime64("2020-01-01"), lat=lat, lon=lon,
                         channel=np.array(["T850", "T500"])[np.arange(n) % 2], value=rng.normal(265, 6, n), sigma=1.0)
    return ObservationOperator.build(obs, prior.grid, prior.normalization, "bilinear")


def test_background_operator_observes_the_ensemble_mean_with_its_variance(prior, rng):
    forecast = rng.normal(270, 3, size=(5, 2, 48))
    op = background_operator(forecast, prior.grid, prior.normalization, inflation=2.0)
    z = (forecast - np.array([275.0, 255.0])[:, None]) / np.array([6.0, 5.0])[:, None]
    np.testing.assert_allclose(op.matrix().toarray(), np.eye(96))
    np.testing.assert_allclose(op.y, z.mean(0).reshape(-1), rtol=1e-12)
    np.testing.assert_allclose(op.sigma**2, 2.0 * z.var(0, ddof=1).reshape(-1), rtol=1e-12)
    with pytest.raises(ValueError, match="at least 2 members"):
        background_operator(forecast[:1], prior.grid, prior.normalization)


def test_concatenated_operators_read_both_sets(prior, rng):
    a, b = point_operator(prior, rng), background_operator(rng.normal(265, 3, (4, 2, 48)), prior.grid,
                                                            prior.normalization)
    joint = ObservationOperator.concatenate([a, b])
    np.testing.assert_allclose(joint.matrix().toarray(), np.vstack([a.matrix().toarray(), b.matrix().toarray()]))
    x = rng.normal(size=(3, 2, 48))
    np.testing.assert_allclose(joint.apply_numpy(x), np.hstack([a.apply_numpy(x), b.apply_numpy(x)]))
    np.testing.assert_array_equal(joint.sigma, np.concatenate([a.sigma, b.sigma]))


def test_way_b_counts_the_climate_twice_and_the_sampler_reproduces_its_posterior(prior, rng):
    """Each time's exact (b) posterior is conditioning N(0, Σ) on the observations and the
    forecast mean (dense, computed here independently); it is narrower than the Kalman filter's
    (the climate counted twice) from the first forecast on. The sampled members match it:
    64 members, mean error ≤ 4.5 standard errors per element, variance ratio (averaged over the
    96 elements, standard error ≈ √(2/63)/√(96/10) ≈ 0.06 with correlated cells) 0.85–1.15."""
    ops = [point_operator(prior, rng) for _ in range(4)]
    sampler = SamplerConfig(steps=24, batch_size=64)
    guidance = GuidanceConfig(method="mmps", solver="cg", cg_iters=40)
    forecast = MarkovForecast(prior)
    x, mean, std = cycle_with_background_observation(prior, forecast, ops, 64, 3, sampler, guidance)
    sigma = dense_covariance(prior)
    norm = prior.normalization
    kf_std = kalman_filter(prior, ops).physical(prior)[1]
    for k in range(4):
        parts = [ops[k]] + ([background_operator(forecast.forecast(x[k - 1], k, range(64), 3), prior.grid, norm)]
                            if k else [])
        h = np.vstack([p.matrix().toarray() for p in parts])
        y = np.concatenate([p.y for p in parts])
        r = np.diag(np.concatenate([p.sigma for p in parts]) ** 2)
        gain = sigma @ h.T @ np.linalg.inv(h @ sigma @ h.T + r)
        ref_mean = norm.denormalize((gain @ y).reshape(2, 48))
        ref_std = norm.scale[:, None] * np.sqrt(np.diag(sigma - gain @ h @ sigma)).reshape(2, 48)
        np.testing.assert_allclose(mean[k], ref_mean, atol=1e-8)
        np.testing.assert_allclose(std[k], ref_std, atol=1e-8)
        z_err = (x[k].astype(np.float64).mean(0) - ref_mean) / ref_std
        assert np.abs(z_err).max() < 4.5 / np.sqrt(64), (k, np.abs(z_err).max())
        assert 0.85 < (x[k].astype(np.float64).var(0, ddof=1) / ref_std**2).mean() < 1.15
        if k:
            assert (std[k] / kf_std[k]).mean() < 0.9  # over-confident against the exact filter
        else:
            np.testing.assert_allclose(std[0], kf_std[0], rtol=1e-6)  # no forecast yet: the same update
