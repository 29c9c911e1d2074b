"""The closed-form posterior (ensemble_da/exact.py) against the dense Kalman update.

Reference: S = H Σ Hᵀ + R, gain Σ Hᵀ S⁻¹, mean μ + gain (y − H μ), var diag(Σ − gain H Σ), with
Σ written out densely (DESIGN.md §4's formula, or the approximated covariance through the prior's
own Σ·v on the identity). Tolerances 1e-9: both are float64 direct solves of well-conditioned
systems.
"""

import numpy as np
import pytest
import torch

from ensemble_da.channels import Normalization
from ensemble_da.config import GridConfig
from ensemble_da.errors import InputError
from ensemble_da.exact import _check_memory, exact_posterior, kalman_update
from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators import ObservationOperator
from ensemble_da.obs.synthetic import random_locations
from ensemble_da.priors.climatology import ClimatologyPrior, fit_climatology
from ensemble_da.priors.gaussian import GaussianPrior
from test_priors_gaussian import MODEL, dense_covariance


def dense_kalman(sigma_dense, h, y, s, mu=None):
    mu = np.zeros(sigma_dense.shape[0]) if mu is None else mu
    cov = h @ sigma_dense @ h.T + np.diag(s**2)
    gain = sigma_dense @ h.T @ np.linalg.inv(cov)
    return mu + gain @ (y - h @ mu), np.diag(sigma_dense - gain @ h @ sigma_dense)


def dense_sigma_of(prior) -> np.ndarray:
    c, n = len(prior.normalization.channels), prior.grid.npix
    eye = torch.eye(c * n, dtype=torch.float64).reshape(-1, c, n)
    return prior.covariance_apply(eye).reshape(c * n, -1).numpy()


def operator(prior, n_obs, rng, kind="bilinear"):
    lat, lon = random_locations(n_obs, rng)
    channels = list(prior.normalization.channels)
    obs = ObservationSet(time=np.datetime64("2020-01-01"), lat=lat, lon=lon,
                         channel=[channels[i % len(channels)] for i in range(n_obs)],
                         value=rng.normal(260, 5, n_obs), sigma=0.7)
    return ObservationOperator.build(obs, prior.grid, prior.normalization, kind)


# 20 obs: fewer than the 144 state elements (small linked groups); 600: four times more, every
# element observed and the groups merged into one per channel (the information-form regime).
@pytest.mark.parametrize("n_obs", [20, 600])
def test_exact_prior_matches_dense_kalman(n_obs, rng):
    prior = GaussianPrior.from_config(MODEL, GridConfig(nside=2))
    op = operator(prior, n_obs, rng)
    mean_ref, var_ref = dense_kalman(dense_covariance(2, MODEL), op.matrix().toarray(), op.y, op.sigma)
    mean, var = exact_posterior(prior, op)
    np.testing.assert_allclose(mean.reshape(-1), mean_ref, atol=1e-9)
    np.testing.assert_allclose(var.reshape(-1), var_ref, atol=1e-9)


@pytest.mark.parametrize("approximation,kind", [("lowrank", "bilinear"), ("spherical_harmonics", "nearest")])
def test_approximated_prior_posterior_is_exact_for_its_covariance(approximation, kind, rng):
    prior = GaussianPrior.from_config(MODEL.model_copy(update=dict(approximation=approximation, rank=49)), GridConfig(nside=4))
    sigma_dense = dense_sigma_of(prior)
    for n_obs in (30, 900):
        op = operator(prior, n_obs, rng, kind)
        mean_ref, var_ref = dense_kalman(sigma_dense, op.matrix().toarray(), op.y, op.sigma)
        mean, var = exact_posterior(prior, op)
        np.testing.assert_allclose(mean.reshape(-1), mean_ref, atol=1e-9)
        np.testing.assert_allclose(var.reshape(-1), var_ref, atol=1e-9)


def test_climatology_posterior_includes_the_prior_mean():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(40, 2, 48)) @ np.diag(np.linspace(2, 0.5, 48)) + rng.normal(size=(2, 48))
    mean0, basis = fit_climatology(z, 6)
    prior = ClimatologyPrior(HealpixGrid(2), Normalization(("T850", "Z500"), np.zeros(2), np.ones(2)), basis, mean=mean0)
    flat = rng.choice(96, size=(15, 1), replace=False)
    op = ObservationOperator(flat, np.ones((15, 1)), rng.normal(size=15), np.full(15, 0.3), 2, 48)
    mean_ref, var_ref = dense_kalman(dense_sigma_of(prior), op.matrix().toarray(), op.y, op.sigma, mean0.reshape(-1))
    mean, var = exact_posterior(prior, op)
    np.testing.assert_allclose(mean.reshape(-1), mean_ref, atol=1e-9)
    np.testing.assert_allclose(var.reshape(-1), var_ref, atol=1e-9)


def test_no_observations_leave_the_prior():
    prior = GaussianPrior.from_config(MODEL, GridConfig(nside=2))
    empty = np.zeros((0, 144))
    mean, var = kalman_update(prior.basis, empty, np.zeros(0), np.zeros(0))
    np.testing.assert_array_equal(mean, 0.0)
    np.testing.assert_allclose(var, prior.basis.diag_covariance(), atol=1e-12)


def test_an_update_too_big_for_the_machine_is_refused_with_its_size():
    with pytest.raises(InputError, match=r"400000 observed state elements .* GiB"):
        _check_memory(observed=400_000, modes=60_000, largest_block=100_000, state=400_000)


def test_priors_and_observation_readers_do_not_import_each_other():
    """The layering of DESIGN.md §2: a prior knows nothing of observations (their sets, operators,
    inputs, OSSEs), a reader nothing of priors; exact.py and truth.py sit above both. Checked on
    the import statements of the sources. (The cBottle adapter reads its SST boundary file with
    the gridded-file reader `obs.era5`: a file format, not observations.)"""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "ensemble_da"

    def imported(package: str) -> set[str]:
        names = set()
        for path in (root / package).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    names.add(node.module)
                elif isinstance(node, ast.Import):
                    names.update(a.name for a in node.names)
        return names

    observation_modules = ("operators", "observation_set", "inputs", "osse", "qc", "strategies", "synthetic")
    assert not {m for m in imported("priors") if m.removeprefix("ensemble_da.obs.") in observation_modules}
    assert not {m for m in imported("obs") if m.startswith("ensemble_da.priors")}
