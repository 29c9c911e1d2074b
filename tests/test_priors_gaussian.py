"""The exact Gaussian prior against dense linear algebra built from DESIGN.md §4's formula."""

import healpy as hp
import numpy as np
import pytest
import torch

from ensemble_da.config import GridConfig, ModelConfig
from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators import ObservationOperator
from ensemble_da.obs.synthetic import random_locations
from ensemble_da.priors.gaussian import GaussianPrior

CORR = [[1, 0.6, 0.3], [0.6, 1, 0.6], [0.3, 0.6, 1]]
MODEL = ModelConfig(
    kind="gaussian", channels=["T850", "T500", "T300"], mean=dict(T850=275.0, T500=255.0, T300=230.0),
    std=dict(T850=6.0, T500=5.0, T300=4.0), length_scale_km=2500, channel_correlation=CORR, nugget=0.05,
)


def dense_covariance(nside: int, model: ModelConfig) -> np.ndarray:
    """Σ of DESIGN.md §4 element by element (NEST pixel centres from healpy)."""
    r = np.stack(hp.pix2vec(nside, np.arange(12 * nside**2), nest=True), -1)
    d2 = ((r[:, None, :] - r[None, :, :]) ** 2).sum(-1)
    k = np.exp(-d2 / (2 * (model.length_scale_km / 6371.0) ** 2))
    nu2 = model.nugget
    return (1 - nu2) * np.kron(np.asarray(model.channel_correlation), k) + nu2 * np.eye(3 * k.shape[0])


@pytest.fixture(scope="module")
def prior():
    return GaussianPrior.from_config(MODEL, GridConfig(nside=2))


@pytest.fixture(scope="module")
def sigma_dense():
    return dense_covariance(2, MODEL)


def test_unit_variance_and_denoiser_matches_dense(prior, sigma_dense):
    np.testing.assert_allclose(prior.basis.diag_covariance(), 1.0, atol=1e-10)
    z = np.random.default_rng(0).normal(size=(4, 3, 48))
    for s in (0.01, 0.7, 50.0):
        ref = z.reshape(4, -1) @ np.linalg.solve(sigma_dense + s**2 * np.eye(144), sigma_dense).T
        out = prior(torch.as_tensor(z), torch.full((4,), s, dtype=torch.float64))
        np.testing.assert_allclose(out.reshape(4, -1).numpy(), ref, atol=1e-10)


def test_exact_posterior_matches_dense_kalman(prior, sigma_dense, rng):
    lat, lon = random_locations(20, rng)
    obs = ObservationSet(time=np.datetime64("2020-01-01"), lat=lat, lon=lon, channel=["T850", "T300"] * 10,
                         value=rng.normal(260, 5, 20), sigma=0.7)
    op = ObservationOperator.build(obs, prior.grid, prior.normalization, "bilinear")
    h = op.matrix().toarray()
    s = h @ sigma_dense @ h.T + np.diag(op.sigma**2)
    gain = sigma_dense @ h.T @ np.linalg.inv(s)
    mean_ref = gain @ op.y
    var_ref = np.diag(sigma_dense - gain @ h @ sigma_dense)
    mean, var = prior.exact_posterior(op)
    np.testing.assert_allclose(mean.reshape(-1), mean_ref, atol=1e-9)
    np.testing.assert_allclose(var.reshape(-1), var_ref, atol=1e-9)


def test_truth_samples_have_the_prior_covariance(prior, sigma_dense):
    # 20000 draws: the sample covariance has Monte-Carlo error ~ sqrt(2/20000) ≈ 0.01 per entry.
    x = prior.sample_truth(np.random.default_rng(5), 20000)
    z = prior.normalization.normalize(x).reshape(20000, -1)
    np.testing.assert_allclose(np.cov(z.T), sigma_dense, atol=0.05)


def test_eigenpairs_are_cached_on_disk(tmp_path):
    from ensemble_da.priors.gaussian import gaussian_kernel_eigen

    grid = HealpixGrid(4)
    v1, u1 = gaussian_kernel_eigen(grid, 1000.0, cache_dir=str(tmp_path))
    files = list(tmp_path.glob("kernel_eigen_4_*.npz"))
    assert len(files) == 1
    v2, u2 = gaussian_kernel_eigen(grid, 1000.0, cache_dir=str(tmp_path))
    np.testing.assert_array_equal(v1, v2)


def test_lowrank_is_named_and_required_beyond_nside_16():
    with pytest.raises(InputError, match="approximation: lowrank"):
        GaussianPrior.from_config(MODEL, GridConfig(nside=32))


def test_lowrank_posterior_is_exact_for_the_approximated_covariance(rng):
    model = MODEL.model_copy(update=dict(approximation="lowrank", rank=60))
    prior = GaussianPrior.from_config(model, GridConfig(nside=4))
    # dense Σ of the approximation: U diag(λ) Uᵀ + ν²(I − U Uᵀ)
    eye = torch.eye(3 * 192, dtype=torch.float64).reshape(-1, 3, 192)
    sigma_dense = prior.covariance_apply(eye).reshape(3 * 192, -1).numpy()
    z = rng.normal(size=(2, 3, 192))
    out = prior(torch.as_tensor(z), torch.full((2,), 0.5, dtype=torch.float64)).reshape(2, -1).numpy()
    np.testing.assert_allclose(out, z.reshape(2, -1) @ np.linalg.solve(sigma_dense + 0.25 * np.eye(576), sigma_dense).T, atol=1e-9)


def test_bad_correlation_is_an_input_error():
    bad = MODEL.model_copy(update=dict(channel_correlation=[[1, 2, 0], [2, 1, 0], [0, 0, 1]]))
    with pytest.raises(InputError, match="positive definite"):
        GaussianPrior.from_config(bad, GridConfig(nside=2))
