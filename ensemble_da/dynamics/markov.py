"""`cycle.forecast: markov`: the exact transition of the gaussian_markov prior (DESIGN.md §10).

z_k = ρ z_{k−1} + √(1 − ρ²) Σ^½ ξ in normalised units (ξ white, from the member's forecast
stream); before the first time, z_0 = Σ^½ ξ, a draw of the stationary prior (the climate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ensemble_da.dynamics.base import forecast_generator
from ensemble_da.priors.gaussian_markov import GaussianMarkovPrior

__all__ = ["MarkovForecast"]


@dataclass
class MarkovForecast:
    """The AR(1) forecast of `prior` (a GaussianMarkovPrior)."""

    prior: GaussianMarkovPrior

    def forecast(self, x: np.ndarray | None, t_index: int, members: Sequence[int], seed: int) -> np.ndarray:
        """Members at time t_index from their states `x` (member, channel, cell) at t_index − 1."""
        norm = self.prior.normalization
        shape = (len(norm.channels), self.prior.grid.npix)
        xi = torch.stack([torch.randn(shape, generator=forecast_generator(seed, t_index, m), dtype=torch.float64)
                          for m in members])
        if x is None:
            z = self.prior.covariance_sqrt_apply(xi)
        else:
            z = self.prior.rho * torch.as_tensor(norm.normalize(np.asarray(x, np.float64))) + self.prior.transition_noise(xi)
        return norm.denormalize(z.numpy()).astype(np.float32)
