"""The exact Gaussian prior against dense linear algebra built from DESIGN.md §4's formula."""

import healpy as hp
import numpy as np
import pytest
import torch

from ensemble_da.config import GridConfig, ModelConfig, model_config
from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid
from ensemble_da.priors.gaussian import GaussianPrior, spherical_harmonic_kernel_eigen

CORR = [[1, 0.6, 0.3], [0.6, 1, 0.6], [0.3, 0.6, 1]]
MODEL = model_config(
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


def test_spherical_harmonics_are_the_kernel_eigenpairs(sigma_dense):
    """Against the dense kernel at nside 8 (ℓ = 2500 km): the analytic spectrum matches the top
    eigenvalues to 0.5 % of the largest (HEALPix quadrature error at degree ≤ 2·nside), the
    basis is orthonormal to round-off, and U diag(λ) Uᵀ is within 2 % of K in operator norm."""
    grid = HealpixGrid(8)
    values, vectors = spherical_harmonic_kernel_eigen(grid, MODEL.length_scale_km, rank=17**2)
    assert vectors.shape == (768, 289) and np.all(np.diff(values) <= 0)
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(289), atol=1e-12)
    r = grid.unit_vectors
    k = np.exp(-np.clip(2 - 2 * r @ r.T, 0, None) / (2 * (MODEL.length_scale_km / 6371.0) ** 2))
    top = np.linalg.eigvalsh(k)[::-1]
    assert np.abs(values[:100] - top[:100]).max() < 0.005 * top[0]
    assert np.linalg.norm(k - (vectors * values) @ vectors.T, 2) < 0.02 * top[0]


def test_lowrank_beyond_nside_16_uses_whole_spherical_harmonic_degrees():
    model = MODEL.model_copy(update=dict(approximation="lowrank", rank=30))
    prior = GaussianPrior.from_config(model, GridConfig(nside=32))
    assert prior.basis.eigenvalues.shape == (3, 25)  # degrees 0..4: (4+1)² = 25 ≤ 30 modes per channel
    # ℓ = 2500 km: degrees ≤ 4 hold most of the variance, the nugget the rest (unit variance ± 25 %)
    assert 0.75 < prior.basis.diag_covariance().mean() < 1.0


def test_a_prior_too_big_for_the_machine_is_refused_before_work():
    model = MODEL.model_copy(update=dict(approximation="lowrank", rank=512))
    with pytest.raises(InputError, match=r"nside 4096 \(201326592 cells\) needs ~\d+\.\d GiB"):
        GaussianPrior.from_config(model, GridConfig(nside=4096))
    with pytest.raises(InputError, match="resolves degrees 0..8"):
        GaussianPrior.from_config(model.model_copy(update=dict(approximation="spherical_harmonics")), GridConfig(nside=4))


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
