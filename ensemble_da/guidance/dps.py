"""Diffusion posterior sampling (Chung et al. 2023), per member (DESIGN.md §6).

DPS replaces log p(y | z) by −ζ ‖y − H D(z, σ)‖, the norm taken for each member on its own (azula
takes one norm over the whole batch, which couples members). As a denoiser:

    D_y = D − ζ σ² ∇_z ‖y − H D(z, σ)‖ ,

so the probability-flow step z ← z + (σ' − σ)(z − D_y)/σ is corrected by −ζ σ (σ − σ') ∇_z ‖·‖.
Norms are in normalised units and ignore s; DPS is a heuristic and is not exact for any prior.
A nonlinear operator h (H D replaced by h(D)) needs only its forward: autograd differentiates
through h and D in the same VJP.
"""

from __future__ import annotations

import torch

from ensemble_da.guidance.base import GuidedDenoiser
from ensemble_da.obs.operators import Operator
from ensemble_da.priors.base import Condition, Denoiser

__all__ = ["DPSGuidance"]


class DPSGuidance(GuidedDenoiser):
    """DPS with step size `zeta`; the residual norm is per member."""

    def __init__(self, denoiser: Denoiser, operator: Operator, zeta: float = 1.0, autocast: bool = True):
        super().__init__(denoiser, operator, autocast)
        self.zeta = zeta

    def residual_norm(self, d: torch.Tensor) -> torch.Tensor:
        """‖y − H d‖ per member: (batch,)."""
        y, _ = self.observations(d)
        return torch.linalg.vector_norm(y - self.operator(d), dim=-1)

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, condition: Condition | None = None) -> torch.Tensor:
        z, d = self.denoise_with_graph(z, sigma, condition)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.residual_norm(d).sum(), z)
        return (d - self.zeta * sigma.to(d.dtype).reshape(-1, 1, 1) ** 2 * grad).detach()
