"""The climatological Gaussian prior (priors/climatology.py) against dense linear algebra."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ensemble_da.channels import Normalization
from ensemble_da.config import GridConfig, model_config
from ensemble_da.data.speedy import write_dataset
from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid
from ensemble_da.priors import load_prior
from ensemble_da.priors.climatology import ClimatologyPrior, fit_climatology

NSIDE, C = 2, 2
D = C * 12 * NSIDE**2


def _states(t: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(D, 8)) * np.linspace(2.0, 0.3, 8)
    mean = rng.normal(size=D)
    return (mean + rng.normal(size=(t, 8)) @ mix.T + 0.1 * rng.normal(size=(t, D))).reshape(t, C, -1)


def _dense_reference(z: np.ndarray, rank: int):
    """μ and Σ = top-`rank` eigenpairs of the sample covariance + ν² I, by eigh (not SVD)."""
    flat = z.reshape(z.shape[0], -1)
    mu = flat.mean(0)
    cov = np.cov(flat, rowvar=False)
    w, v = np.linalg.eigh(cov)
    w, v = w[::-1][:rank], v[:, ::-1][:, :rank]
    nu2 = (np.trace(cov) - w.sum()) / cov.shape[0]
    return mu, v @ np.diag(w) @ v.T + nu2 * np.eye(cov.shape[0]), nu2


def _prior(z: np.ndarray, rank: int) -> ClimatologyPrior:
    mean, basis = fit_climatology(z, rank)
    norm = Normalization(("T850", "Z500"), np.zeros(C), np.ones(C))
    return ClimatologyPrior(HealpixGrid(NSIDE), norm, basis, mean=mean)


def test_fit_matches_dense_covariance_and_keeps_total_variance():
    z = _states()
    mu, sigma, nu2 = _dense_reference(z, rank=6)
    prior = _prior(z, rank=6)
    assert prior.basis.nugget == pytest.approx(nu2, rel=1e-10)
    np.testing.assert_allclose(prior.mean.reshape(-1), mu, atol=1e-12)
    np.testing.assert_allclose(prior.basis.diag_covariance().reshape(-1), np.diag(sigma), atol=1e-10)
    assert np.trace(sigma) == pytest.approx(np.trace(np.cov(z.reshape(40, -1), rowvar=False)), rel=1e-10)


@pytest.mark.parametrize("sigma", [0.01, 0.7, 30.0])
def test_denoiser_is_the_exact_conditional_mean(sigma):
    z0 = _states()
    mu, cov, _ = _dense_reference(z0, rank=6)
    prior = _prior(z0, rank=6)
    z = np.random.default_rng(1).normal(size=(3, D)) * 2 + mu
    expected = mu + (cov @ np.linalg.solve(cov + sigma**2 * np.eye(D), (z - mu).T)).T
    got = prior(torch.as_tensor(z.reshape(3, C, -1)), torch.full((3,), sigma, dtype=torch.float64))
    np.testing.assert_allclose(got.numpy().reshape(3, -1), expected, atol=1e-9)


def test_truth_samples_have_the_fitted_mean_and_variance():
    z0 = _states()
    prior = _prior(z0, rank=6)
    draws = prior.normalization.normalize(prior.sample_truth(np.random.default_rng(3), 4000))
    # 4000 independent draws: the standard error of a mean is sd/63 and of a variance ~2.2% of it;
    # 5 standard errors keeps this test from flaking while catching a missing mean or a wrong root.
    sd = np.sqrt(prior.basis.diag_covariance())
    assert np.all(np.abs(draws.mean(0) - prior.mean) < 5 * sd / np.sqrt(4000))
    np.testing.assert_allclose(draws.var(0).mean(), (sd**2).mean(), rtol=0.05)


def test_load_prior_fits_from_a_dataset_and_holds_out_the_tail(tmp_path):
    grid = HealpixGrid(NSIDE)
    state = (_states(t=30) * np.array([3.0, 900.0])[None, :, None] + np.array([280.0, 55000.0])[None, :, None])
    times = np.datetime64("2001-01-01", "ns") + np.arange(30) * np.timedelta64(1, "D")
    write_dataset(tmp_path / "d.zarr", state.astype(np.float32), times, ["T850", "Z500"], grid)
    cfg = model_config(kind="gaussian_climatology", path=str(tmp_path / "d.zarr"), channels=["Z500"], rank=4, holdout_days=10)
    prior = load_prior(cfg, GridConfig(nside=NSIDE))
    assert prior.normalization.channels == ("Z500",)
    assert prior.meta["fit_states"] == 20
    fitted = prior.prior_mean_physical()[0]
    np.testing.assert_allclose(fitted, state[:20, 1].astype(np.float32).mean(0), rtol=1e-6)
    out = prior(torch.zeros(2, 1, grid.npix, dtype=torch.float64), torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert out.shape == (2, 1, grid.npix)

    with pytest.raises(InputError, match="model.path"):
        load_prior(model_config(kind="gaussian_climatology"), GridConfig(nside=NSIDE))
    with pytest.raises(InputError, match="nside"):
        load_prior(cfg, GridConfig(nside=4))
    with pytest.raises(InputError, match="not a channel"):
        load_prior(cfg.model_copy(update={"channels": ["T500"]}), GridConfig(nside=NSIDE))


def test_resolved_config_rebuilds_the_same_prior(tmp_path):
    """A run's config.yaml lists every key; reloading it (what --resume does) must fit the same
    nugget, not the Gaussian prior's 0.05 default, and a fitted nugget must differ from 0.05 here."""
    from ensemble_da.config import load_config

    grid = HealpixGrid(NSIDE)
    state = _states(t=30) * 3.0 + 280.0
    times = np.datetime64("2001-01-01", "ns") + np.arange(30) * np.timedelta64(1, "D")
    write_dataset(tmp_path / "d.zarr", state.astype(np.float32), times, ["T850", "Z500"], grid)
    cfg = load_config(None, ["model.kind=gaussian_climatology", f"model.path={tmp_path / 'd.zarr'}", "model.rank=4",
                             "model.channels=[T850, Z500]", f"grid.nside={NSIDE}"])
    first = load_prior(cfg.model, cfg.grid)
    (tmp_path / "config.yaml").write_text(cfg.to_yaml())
    again = load_prior(load_config(tmp_path / "config.yaml").model, cfg.grid)
    _, _, nu2 = _dense_reference(first.normalization.normalize(state[:30].astype(np.float32).astype(np.float64)), 4)
    assert first.basis.nugget == pytest.approx(nu2, rel=1e-6)
    assert abs(nu2 - 0.05) > 0.01
    assert again.basis.nugget == first.basis.nugget
