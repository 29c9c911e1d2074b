"""Moment matching posterior sampling (Rozet et al. 2024), DESIGN.md §6.

With Tweedie's covariance Cov[z₀ | z] ≈ σ² J (J = ∂D/∂z, symmetric for an exact denoiser),

    D_y = D + σ² Jᵀ Hᵀ v ,   (diag(s²) + σ² H Jᵀ Hᵀ) v = y − H D ,

the system solved per member in float64 by `iterations` steps of conjugate gradients (`cg`,
which assumes the matrix symmetric positive definite, i.e. J symmetric) or GMRES (`gmres`, any
J: a learned network's Jacobian is not symmetric), each applying Jᵀ by one VJP through the
denoiser. Exact for a Gaussian prior and linear H once the solver has converged. The largest
relative solver residual of the calls so far is kept for reporting.

A nonlinear operator h is linearised at the denoised state, H = J_h(D(z, σ)) per member
(`Operator.linearize`: torch.func JVP and VJP), and the residual is y − h(D): the Gaussian
moment-matched likelihood of Rozet et al. with h expanded to first order about D. It is then
no longer exact even for a Gaussian prior.
"""

from __future__ import annotations

from typing import Literal

import torch

from ensemble_da.guidance.base import GuidedDenoiser
from ensemble_da.guidance.cg import conjugate_gradient
from ensemble_da.guidance.gmres import gmres
from ensemble_da.obs.bias import ObservationBias
from ensemble_da.obs.operators import Operator
from ensemble_da.priors.base import Condition, Denoiser

__all__ = ["MMPSGuidance"]

_SOLVERS = {"cg": conjugate_gradient, "gmres": gmres}


class MMPSGuidance(GuidedDenoiser):
    """MMPS with `cg_iters` iterations of `solver`; `last_relative_residual` is (batch,) after a call."""

    def __init__(
        self,
        denoiser: Denoiser,
        operator: Operator,
        cg_iters: int = 3,
        autocast: bool = True,
        solver: Literal["cg", "gmres"] = "cg",
        bias: ObservationBias | None = None,
    ):
        super().__init__(denoiser, operator, autocast, bias)
        self.cg_iters = cg_iters
        self.solve = _SOLVERS[solver]
        self.last_relative_residual: torch.Tensor | None = None
        self._residual_max: torch.Tensor | None = None  # on the device: no host sync per step

    @property
    def max_relative_residual(self) -> float:
        """Largest relative CG residual over every call so far (reading it syncs once: read it per block)."""
        return 0.0 if self._residual_max is None else float(self._residual_max)

    def linear_system(self, z: torch.Tensor, sigma: torch.Tensor, condition: Condition | None = None):
        """The MMPS system at (z, σ): (d, matvec, rhs, correction).

        d = D(z, σ) with its graph; matvec(v) = R v + σ² H Jᵀ Hᵀ v (R = diag(s²), plus P B Pᵀ
        with a bias model) and rhs = y − h(d), both
        (batch, obs) float64; correction(v) = Jᵀ Hᵀ v with the shape of z. For a nonlinear h, H is
        its Jacobian J_h at d (detached, float64), applied by JVP and its transpose by VJP.
        """
        z, d = self.denoise_with_graph(z, sigma, condition)
        y, s2 = self.observations(d.double())
        s2_sigma = sigma.double()[:, None] ** 2
        # H at D(z, σ): H itself when linear, J_H there (torch.func, per member) when not.
        lin = self.operator.linearize(d.detach().double())

        def vjp(u: torch.Tensor) -> torch.Tensor:
            """Jᵀ u for u with the shape of z."""
            with torch.enable_grad():
                (g,) = torch.autograd.grad(d, z, grad_outputs=u.to(d.dtype), retain_graph=True)
            return g

        def matvec(v: torch.Tensor) -> torch.Tensor:
            out = s2 * v + s2_sigma * lin.jvp(vjp(lin.vjp(v)).double())
            return out if self.bias is None else out + self.bias.covariance_matvec(v)

        rhs = y - lin.value
        return d, matvec, rhs, lambda v: vjp(lin.vjp(v))

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, condition: Condition | None = None) -> torch.Tensor:
        d, matvec, rhs, correction = self.linear_system(z, sigma, condition)
        v, rel = self.solve(matvec, rhs, self.cg_iters)
        self.last_relative_residual = rel.detach()
        if rel.numel():
            top = rel.detach().max()
            self._residual_max = top if self._residual_max is None else torch.maximum(self._residual_max, top)
        return (d + sigma.to(d.dtype).reshape(-1, 1, 1) ** 2 * correction(v).to(d.dtype)).detach()
