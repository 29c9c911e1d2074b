"""Way (b) of entering the background into a cycled analysis: the forecast as a dense observation
of the state, on top of the single-time (climatological) prior (DESIGN.md §10).

At time k ≥ 1 the members' forecasts x_f (member, channel, cell), from time k−1's analyses, give
the ensemble mean x̄_f and the per-element ensemble variance v_f. Every member samples the
single-time prior guided by the time's observations and by x̄_f observed at every (channel, cell)
with error variance `inflation` · v_f: a diagonal forecast-error model estimated from the
ensemble. Time 0 has no forecast: the observations alone.

What it counts twice: the forecast already holds the climatological information that the prior
brings again (for the Gaussian Markov prior the exact filter's background N(ρ m, ρ²P + (1−ρ²)Σ)
replaces the climate, it is not multiplied by it), so the analysis is drawn toward the climate
mean and is too narrow; and the diagonal model drops the forecast errors' spatial and
inter-channel correlations. Way (a), the window prior given the member's own earlier state
(`ensemble_da.cycling`), has neither defect. README "Time" table (c) measures both against the
Kalman filter.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ensemble_da.channels import Normalization
from ensemble_da.config import GuidanceConfig, SamplerConfig
from ensemble_da.exact import kalman_update
from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.operators import ObservationOperator
from ensemble_da.posterior import sample_posterior
from ensemble_da.priors.base import Condition, Denoiser
from ensemble_da.priors.gaussian import GaussianPrior

__all__ = ["background_operator", "cycle_with_background_observation"]

# Floor of the forecast-error std, in prior std: an ensemble that collapsed somewhere would
# otherwise observe the state there with zero error.
MIN_FORECAST_STD = 1e-3


def background_operator(forecast: np.ndarray, grid: HealpixGrid, normalization: Normalization,
                        inflation: float = 1.0) -> ObservationOperator:
    """The ensemble-mean forecast observed at every (channel, cell) with error std
    √inflation · ensemble std (ddof 1), in normalised units. forecast: (member ≥ 2, channel, cell),
    physical units."""
    z = normalization.normalize(np.asarray(forecast, np.float64))
    if z.shape[0] < 2:
        raise ValueError("a forecast-error model from the ensemble needs at least 2 members")
    c, n = z.shape[1:]
    std = np.maximum(np.sqrt(inflation * z.var(0, ddof=1)), MIN_FORECAST_STD).reshape(-1)
    return ObservationOperator(flat=np.arange(c * n, dtype=np.int64)[:, None], weights=np.ones((c * n, 1)),
                               y=z.mean(0).reshape(-1), sigma=std, n_channels=c, npix=n)


def cycle_with_background_observation(
    prior: Denoiser,
    forecast_model,
    operators: Sequence[ObservationOperator | None],
    members: int,
    seed: int,
    sampler: SamplerConfig,
    guidance: GuidanceConfig,
    inflation: float = 1.0,
    conditions: Sequence[Condition | None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Cycle way (b) through `operators` (one per time, normalised units; None: no observations).

    prior: the single-time prior (a `GaussianPrior`, or a learned one with `conditions[k]` its
    time k conditioning, e.g. `time_condition`); forecast_model: `forecast(x, t_index, members,
    seed)` (`ensemble_da.dynamics`), physical units. Returns (analysis float32 (time, member,
    channel, cell) physical; and, for a `GaussianPrior`, per time the exact posterior of the same
    Gaussian problem, mean and std (time, channel, cell) physical: what the sampler should
    reproduce, so the method's error is told apart from the sampler's; None for other priors).
    """
    ids = list(range(members))
    norm = prior.normalization
    exact = isinstance(prior, GaussianPrior)
    out, exact_mean, exact_std = [], [], []
    previous = None
    for k, op in enumerate(operators):
        parts = [] if op is None else [op]
        if previous is not None:
            parts.append(background_operator(forecast_model.forecast(previous, k, ids, seed), prior.grid, norm,
                                             inflation))
        joint = ObservationOperator.concatenate(parts) if parts else None
        x = sample_posterior(prior, joint, ids, seed, sampler=sampler, guidance=guidance, t_index=k,
                             condition=None if conditions is None else conditions[k], check_inputs=False)
        out.append(x)
        previous = x
        if not exact:
            continue
        if joint is None:
            mu = prior.prior_mean()
            var = prior.basis.diag_covariance()
            mean = np.zeros(var.shape) if mu is None else mu
        else:
            mean, var = kalman_update(prior.basis, joint.matrix(), joint.y, joint.sigma, prior.prior_mean())
        exact_mean.append(norm.denormalize(mean))
        exact_std.append(norm.scale[:, None] * np.sqrt(var))
    if not exact:
        return np.stack(out), None, None
    return np.stack(out), np.stack(exact_mean), np.stack(exact_std)
