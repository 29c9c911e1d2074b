"""The Kalman filter and RTS smoother (ensemble_da.kalman) against the joint Gaussian over all
times conditioned at once (an independent dense computation, DESIGN.md §10)."""

import numpy as np
import pytest
import torch

from ensemble_da.config import GridConfig, model_config
from ensemble_da.exact import exact_posterior
from ensemble_da.kalman import kalman_filter, rts_smoother
from ensemble_da.obs.operators import ObservationOperator
from ensemble_da.priors import load_prior

RHO, TIMES = 0.75, 5


@pytest.fixture(scope="module")
def problem():
    model = model_config(kind="gaussian_markov", rho=RHO, channels=["T850", "T500"], mean={"T850": 275.0, "T500": 255.0},
                        std={"T850": 6.0, "T500": 5.0}, channel_correlation=[[1, 0.5], [0.5, 1]], length_scale_km=2500)
    prior = load_prior(model, GridConfig(nside=2))
    rng = np.random.default_rng(3)
    ops = []
    for k in range(TIMES):
        n = 0 if k == 2 else 15  # one time without observations: the filter only forecasts there
        if n == 0:
            ops.append(None)
            continue
        ops.append(ObservationOperator.at_cells(rng.integers(0, 48, n), rng.choice(["T850", "T500"], n),
                                                rng.normal(270, 5, n), rng.uniform(0.5, 3.0, n),
                                                prior.grid, prior.normalization))
    # Σ column by column through the prior's own covariance product (not the module under test).
    eye = np.eye(96).reshape(96, 2, 48)
    sigma = prior.covariance_apply(torch.as_tensor(eye)).numpy().reshape(96, 96)
    return prior, ops, sigma


def joint_posterior(sigma, ops, upto):
    """Condition N(0, T ⊗ Σ) over times 0..upto on all their observations at once."""
    k = upto + 1
    lag = np.abs(np.subtract.outer(np.arange(k), np.arange(k)))
    cov = np.kron(RHO**lag, sigma)
    rows, ys, s2 = [], [], []
    for t in range(k):
        if ops[t] is None:
            continue
        h = ops[t].matrix().toarray()
        full = np.zeros((h.shape[0], k * 96))
        full[:, t * 96:(t + 1) * 96] = h
        rows.append(full)
        ys.append(ops[t].y)
        s2.append(ops[t].sigma**2)
    h, y, r = np.vstack(rows), np.concatenate(ys), np.diag(np.concatenate(s2))
    gain = cov @ h.T @ np.linalg.inv(h @ cov @ h.T + r)
    return gain @ y, cov - gain @ h @ cov


def test_filter_equals_joint_conditioning_on_past_observations(problem):
    prior, ops, sigma = problem
    kf = kalman_filter(prior, ops)
    for k in range(TIMES):
        mean, cov = joint_posterior(sigma, ops, k)
        np.testing.assert_allclose(kf.mean[k].reshape(-1), mean[k * 96:(k + 1) * 96], atol=1e-9)
        np.testing.assert_allclose(kf.var[k].reshape(-1), np.diag(cov)[k * 96:(k + 1) * 96], atol=1e-9)


def test_filter_first_step_is_the_single_time_posterior(problem):
    prior, ops, _ = problem
    mean, var = exact_posterior(prior, ops[0])
    kf = kalman_filter(prior, ops[:1])
    np.testing.assert_allclose(kf.mean[0], mean, atol=1e-9)
    np.testing.assert_allclose(kf.var[0], var, atol=1e-9)


def test_smoother_equals_joint_conditioning_on_all_observations(problem):
    prior, ops, sigma = problem
    rts = rts_smoother(prior, ops)
    mean, cov = joint_posterior(sigma, ops, TIMES - 1)
    for k in range(TIMES):
        sl = slice(k * 96, (k + 1) * 96)
        np.testing.assert_allclose(rts.mean[k].reshape(-1), mean[sl], atol=1e-9)
        np.testing.assert_allclose(rts.var[k].reshape(-1), np.diag(cov)[sl], atol=1e-9)
    for k in range(TIMES - 1):
        lag = np.diag(cov[k * 96:(k + 1) * 96, (k + 1) * 96:(k + 2) * 96])
        np.testing.assert_allclose(rts.lag_one[k].reshape(-1), lag, atol=1e-9)
    # The last time's smoothed state is its filtered state.
    kf = kalman_filter(prior, ops)
    np.testing.assert_allclose(rts.mean[-1], kf.mean[-1], atol=1e-12)
