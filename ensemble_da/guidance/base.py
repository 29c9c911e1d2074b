"""What every guided denoiser shares: it wraps a denoiser and is one (DESIGN.md §6).

A guided denoiser returns D_y(z, σ) = D(z, σ) + σ² ∇_z log p(y | z) under some approximation of
the likelihood. It evaluates D with a graph so that guidance can take VJPs through it; the inner
call may run in bf16 (CUDA autocast) while all guidance arithmetic stays float32/float64.
"""

from __future__ import annotations

import contextlib

import torch

from ensemble_da.errors import InputError
from ensemble_da.obs.bias import ObservationBias
from ensemble_da.obs.operators import Operator
from ensemble_da.priors.base import Condition, Denoiser

__all__ = ["GuidedDenoiser"]


class GuidedDenoiser:
    """Base of the guided denoisers: forwards the prior's grid, normalisation and σ range.

    Parameters
    ----------
    denoiser : Denoiser
        The prior.
    operator : Operator
        h (linear or not), the observations y and their error std s (normalised units), shapes (obs,).
    autocast : bool
        Run the prior's forward under bf16 autocast when on CUDA.
    bias : ObservationBias, optional
        A bias model of the observations (`obs.bias`): the error covariance becomes
        diag(s²) + P B Pᵀ (β marginalised; draw β per member afterwards).
    """

    handles_autocast = True

    def __init__(self, denoiser: Denoiser, operator: Operator, autocast: bool = True,
                 bias: ObservationBias | None = None):
        if bias is not None and len(bias.predictors) != len(operator):
            raise InputError(f"the bias model has {len(bias.predictors)} observations, the operator {len(operator)}")
        self.denoiser = denoiser
        self.operator = operator
        self.bias = bias
        self.autocast = autocast
        self.grid = denoiser.grid
        self.normalization = denoiser.normalization
        self.sigma_min = denoiser.sigma_min
        self.sigma_max = denoiser.sigma_max
        self._constants: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def observations(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y and s² as (1, obs) tensors in the dtype/device of `like` (copied there once)."""
        key = (like.dtype, like.device)
        if key not in self._constants:
            y = torch.as_tensor(self.operator.y, dtype=like.dtype, device=like.device)[None]
            s2 = torch.as_tensor(self.operator.sigma**2, dtype=like.dtype, device=like.device)[None]
            self._constants[key] = (y, s2)
        return self._constants[key]

    def denoise_with_graph(
        self, z: torch.Tensor, sigma: torch.Tensor, condition: Condition | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z as a leaf that requires grad, D(z, σ) in z's dtype with its graph)."""
        z = z.detach().requires_grad_(True)
        ctx = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.autocast and z.device.type == "cuda"
            else contextlib.nullcontext()
        )
        with torch.enable_grad(), ctx:
            d = self.denoiser(z, sigma, condition)
        return z, d.to(z.dtype)
