"""Cycled EnKF and LETKF (ensemble_da.baselines.cycled) against the Kalman filter: with the
Gaussian Markov prior, its exact `markov` forecast and no localisation, both converge to the
filter as the ensemble grows (DESIGN.md §10)."""

import numpy as np
import pytest

from ensemble_da.baselines.cycled import EnsembleFilter, cycle_ensemble_filter
from ensemble_da.config import GridConfig, model_config
from ensemble_da.dynamics.markov import MarkovForecast
from ensemble_da.kalman import kalman_filter
from ensemble_da.obs.operators import ObservationOperator
from ensemble_da.priors import load_prior

TIMES = 8


@pytest.fixture(scope="module")
def problem():
    model = model_config(kind="gaussian_markov", rho=0.8, channels=["T850", "T500"], mean={"T850": 275.0, "T500": 255.0},
                        std={"T850": 6.0, "T500": 5.0}, channel_correlation=[[1, 0.5], [0.5, 1]], length_scale_km=2500)
    prior = load_prior(model, GridConfig(nside=2))
    rng = np.random.default_rng(3)
    ops = [None if k == 3 else  # a time without observations: the analysis is the forecast
           ObservationOperator.at_cells(rng.integers(0, 48, 15), rng.choice(["T850", "T500"], 15),
                                        rng.normal(270, 5, 15), rng.uniform(0.5, 3.0, 15), prior.grid, prior.normalization)
           for k in range(TIMES)]
    return prior, ops, kalman_filter(prior, ops)


def _against_filter(prior, ops, kf, method, members):
    res = cycle_ensemble_filter(MarkovForecast(prior), prior.normalization, ops, members, 1, EnsembleFilter(method))
    z = prior.normalization.normalize(res.analysis.astype(np.float64))  # (time, member, channel, cell)
    err = np.sqrt((((z.mean(1) - kf.mean) ** 2) / kf.var).mean())  # RMS over times and cells, filter std
    ratio = z.var(1, ddof=1).mean((1, 2)) / kf.var.mean((1, 2))  # per time
    return res, err, ratio


@pytest.mark.parametrize("method, small, large", [("enkf", 500, 2000), ("letkf", 250, 1000)])
def test_cycled_filter_converges_to_the_kalman_filter(problem, method, small, large):
    prior, ops, kf = problem
    _, err_small, _ = _against_filter(prior, ops, kf, method, small)
    res, err_large, ratio = _against_filter(prior, ops, kf, method, large)
    # Sampling error of the mean (and of the gain) falls as 1/√M: 4× the members halves it
    # (Monte-Carlo: each error is one draw of an RMS over 8 times × 96 values, ±~10 %).
    assert 0.35 < err_large / err_small < 0.7, (err_small, err_large)
    # The ensemble variance is biased low by O(state/M) = O(96/M) relative: ≤ 6 % at M ≥ 1000,
    # at every time, with no drift.
    assert np.all(np.abs(ratio - 1) < 0.06), ratio
    # The time without observations is the forecast of the time before.
    np.testing.assert_array_equal(res.analysis[3], res.background[3])


def test_members_are_forecast_from_their_own_analysis(problem):
    prior, ops, _ = problem
    res = cycle_ensemble_filter(MarkovForecast(prior), prior.normalization, ops, 4, 7, EnsembleFilter("letkf"))
    again = MarkovForecast(prior).forecast(res.analysis[4], 5, range(4), 7)
    np.testing.assert_array_equal(res.background[5], again)


def test_bad_filter_settings_are_refused():
    with pytest.raises(ValueError, match="inflation"):
        EnsembleFilter("letkf", inflation=0.5)
    with pytest.raises(ValueError, match="grid"):
        EnsembleFilter("letkf", localization_km=1000)
    with pytest.raises(ValueError, match="method"):
        EnsembleFilter("3dvar")
