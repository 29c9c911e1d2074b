"""Moment matching posterior sampling (Rozet et al. 2024), DESIGN.md §6.

With Tweedie's covariance Cov[z₀ | z] ≈ σ² J (J = ∂D/∂z, symmetric for an exact denoiser),

    D_y = D + σ² Jᵀ Hᵀ v ,   (diag(s²) + σ² H J Hᵀ) v = y − H D ,

the system solved per member by `cg_iters` conjugate-gradient iterations in float64, each
applying J by one VJP through the denoiser. Exact for a Gaussian prior and linear H once CG
has converged. The largest relative CG residual of the last call is kept for reporting.
"""

from __future__ import annotations

import torch

from ensemble_da.guidance.base import GuidedDenoiser
from ensemble_da.guidance.cg import conjugate_gradient
from ensemble_da.obs.operators import ObservationOperator
from ensemble_da.priors.base import Condition, Denoiser

__all__ = ["MMPSGuidance"]


class MMPSGuidance(GuidedDenoiser):
    """MMPS with `cg_iters` CG iterations; `last_relative_residual` is (batch,) after a call."""

    def __init__(self, denoiser: Denoiser, operator: ObservationOperator, cg_iters: int = 3, autocast: bool = True):
        super().__init__(denoiser, operator, autocast)
        self.cg_iters = cg_iters
        self.last_relative_residual: torch.Tensor | None = None
        self._residual_max: torch.Tensor | None = None  # on the device: no host sync per step

    @property
    def max_relative_residual(self) -> float:
        """Largest relative CG residual over every call so far (reading it syncs once: read it per block)."""
        return 0.0 if self._residual_max is None else float(self._residual_max)

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, condition: Condition | None = None) -> torch.Tensor:
        z, d = self.denoise_with_graph(z, sigma, condition)
        y, s2 = self.observations(d.double())
        s2_sigma = sigma.double()[:, None] ** 2

        def vjp(u: torch.Tensor) -> torch.Tensor:
            """Jᵀ u for u with the shape of z."""
            with torch.enable_grad():
                (g,) = torch.autograd.grad(d, z, grad_outputs=u.to(d.dtype), retain_graph=True)
            return g

        def matvec(v: torch.Tensor) -> torch.Tensor:
            hjht = self.operator(vjp(self.operator.adjoint(v)).double())
            return s2 * v + s2_sigma * hjht

        rhs = y - self.operator(d.detach().double())
        v, rel = conjugate_gradient(matvec, rhs, self.cg_iters)
        correction = vjp(self.operator.adjoint(v))
        self.last_relative_residual = rel.detach()
        if rel.numel():
            top = rel.detach().max()
            self._residual_max = top if self._residual_max is None else torch.maximum(self._residual_max, top)
        return (d + sigma.to(d.dtype).reshape(-1, 1, 1) ** 2 * correction.to(d.dtype)).detach()
