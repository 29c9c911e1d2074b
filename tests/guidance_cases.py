"""A small Gaussian case with dense references for the guidance tests (nside 2, 3 channels)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ensemble_da.config import GridConfig
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators import ObservationOperator
from ensemble_da.obs.synthetic import random_locations
from ensemble_da.priors.gaussian import GaussianPrior
from test_priors_gaussian import MODEL, dense_covariance


@dataclass
class Case:
    prior: GaussianPrior
    op: ObservationOperator
    sigma_dense: np.ndarray  # Σ, (state, state)
    h: np.ndarray  # H, (obs, state)
    z: torch.Tensor  # (batch, channel, cell) float64

    def a(self, s: float) -> np.ndarray:
        """A = Σ(Σ + s²I)⁻¹, the Gaussian denoiser's matrix (symmetric)."""
        n = self.sigma_dense.shape[0]
        return np.linalg.solve(self.sigma_dense + s**2 * np.eye(n), self.sigma_dense).T


def gaussian_case(n_obs: int = 10, batch: int = 3, seed: int = 0) -> Case:
    rng = np.random.default_rng(seed)
    prior = GaussianPrior.from_config(MODEL, GridConfig(nside=2))
    lat, lon = random_locations(n_obs, rng)
    obs = ObservationSet(time=np.datetime64("2020-01-01"), lat=lat, lon=lon,
                         channel=np.array(["T850", "T500", "T300"])[np.arange(n_obs) % 3],
                         value=rng.normal(255, 8, n_obs), sigma=0.6)
    op = ObservationOperator.build(obs, prior.grid, prior.normalization, "bilinear")
    z = torch.as_tensor(rng.normal(size=(batch, 3, 48)) * 1.5)
    return Case(prior, op, dense_covariance(2, MODEL), op.matrix().toarray(), z)
