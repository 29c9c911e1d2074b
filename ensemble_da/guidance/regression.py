"""Regression guidance in the SDA form (Rozet & Louppe 2023), DESIGN.md §6.

    D_y = D + scale · σ² ∇_z log N(y ; H D(z, σ), diag(s² + γ σ²)) ,

with P B Pᵀ added to the covariance when the observations have a bias model (`obs.bias`).

the gradient taken by one VJP through the denoiser. Unlike the seed sketch, the gradient is with
respect to the noisy state through D, and it is not rescaled, so the observation error s matters.
A nonlinear operator h (H D replaced by h(D)) needs only its forward: autograd differentiates
through h and D in the same VJP.
"""

from __future__ import annotations

import torch

from ensemble_da.guidance.base import GuidedDenoiser
from ensemble_da.obs.bias import ObservationBias
from ensemble_da.obs.operators import Operator
from ensemble_da.priors.base import Condition, Denoiser

__all__ = ["RegressionGuidance"]


class RegressionGuidance(GuidedDenoiser):
    """SDA regression guidance; `scale` multiplies the likelihood score, `gamma` inflates s²."""

    def __init__(
        self,
        denoiser: Denoiser,
        operator: Operator,
        scale: float = 1.0,
        gamma: float = 1e-2,
        autocast: bool = True,
        bias: ObservationBias | None = None,
    ):
        super().__init__(denoiser, operator, autocast, bias)
        self.scale = scale
        self.gamma = gamma

    def log_likelihood(self, d: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """log N(y ; H d, diag(s² + γσ²) [+ P B Pᵀ]) up to a constant, per member: (batch,)."""
        y, s2 = self.observations(d)
        var = s2 + self.gamma * sigma.to(d.dtype)[:, None] ** 2
        r = y - self.operator(d)
        if self.bias is not None:
            return -0.5 * self.bias.quadratic(r, var)
        return -0.5 * (r**2 / var).sum(-1)

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, condition: Condition | None = None) -> torch.Tensor:
        z, d = self.denoise_with_graph(z, sigma, condition)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.log_likelihood(d, sigma).sum(), z)
        return (d + self.scale * sigma.to(d.dtype).reshape(-1, 1, 1) ** 2 * grad).detach()
