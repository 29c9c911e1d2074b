"""Nonlinear observation operators: a torch function of the state, differentiated by autograd (DESIGN.md §5).

A kind supplies h(x), physical state (…, channel, cell) → physical observations (…, obs), as torch
operations. Each observation gets an affine unit, y_n = (y − center) / scale (center, scale > 0
per observation, chosen by the kind like a channel's mean and std), so the normalised operator is

    h_n(z) = (h(c + s ⊙ z) − center) / scale ,   c, s the prior's per-channel centre and scale,

and sigma_n = sigma / scale. Guidance sees h_n through `forward` (autograd: regression and DPS
differentiate through it) and through `linearize(x)` (MMPS: J_h at the denoised state by
`torch.func.vjp` / `torch.func.jvp`). There is no adjoint and no matrix: closed-form posteriors
(Kalman, `ensemble_da.exact`) need a linear H and refuse these with one line.
"""

from __future__ import annotations

import numpy as np
import torch

from ensemble_da.channels import Normalization
from ensemble_da.errors import InputError
from ensemble_da.obs.operators.base import Linearization

__all__ = ["NonlinearOperator", "NonlinearOperatorError"]


class NonlinearOperatorError(InputError):
    """Something that needs a linear observation operator was given a nonlinear one."""


class NonlinearOperator:
    """Base of the nonlinear kinds: subclasses implement `physical` (and may override `forward`).

    Parameters
    ----------
    value, sigma : ndarray float64 (obs,)
        Observed values and error std, physical units.
    center, scale : ndarray float64 (obs,)
        Each observation's unit: y_n = (y − center) / scale (scale > 0).
    normalization : Normalization
        The prior's per-channel centre and scale (the state's units).
    npix : int
        Cells of the grid.
    """

    linear = False
    kind = "nonlinear"

    def __init__(self, value: np.ndarray, sigma: np.ndarray, center: np.ndarray, scale: np.ndarray,
                 normalization: Normalization, npix: int):
        self.obs_center = np.asarray(center, dtype=np.float64)
        self.obs_scale = np.asarray(scale, dtype=np.float64)
        self.y = (np.asarray(value, dtype=np.float64) - self.obs_center) / self.obs_scale
        self.sigma = np.asarray(sigma, dtype=np.float64) / self.obs_scale
        self.normalization = normalization
        self.n_channels = len(normalization.channels)
        self.npix = int(npix)
        self._constants: dict[tuple, tuple[torch.Tensor, ...]] = {}

    def __len__(self) -> int:
        return len(self.y)

    @property
    def state_size(self) -> int:
        return self.n_channels * self.npix

    def constants(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(channel centre, channel scale) as (channel, 1) and (obs centre, obs scale) as (obs,)
        tensors in the dtype and device of `like`, copied there once."""
        key = (like.dtype, like.device)
        if key not in self._constants:
            as_t = lambda a: torch.as_tensor(a, dtype=like.dtype, device=like.device)  # noqa: E731
            self._constants[key] = (as_t(self.normalization.center[:, None]), as_t(self.normalization.scale[:, None]),
                                    as_t(self.obs_center), as_t(self.obs_scale))
        return self._constants[key]

    def physical(self, x: torch.Tensor) -> torch.Tensor:
        """h(x): physical state (…, channel, cell) → physical observations (…, obs)."""
        raise NotImplementedError

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """h_n(z): normalised state (…, channel, cell) → normalised observations (…, obs)."""
        c, s, a, b = self.constants(z)
        return (self.physical(z * s + c) - a) / b

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.forward(z)

    def linearize(self, x: torch.Tensor) -> Linearization:
        """h_n(x), x ↦ J u and v ↦ Jᵀ v at x (…, channel, cell), by torch.func (per member: h acts
        on each member alone). The JVP re-evaluates h_n at x on each call; the VJP keeps its graph."""
        x = x.detach()
        value, pullback = torch.func.vjp(self.forward, x)

        def jvp(u: torch.Tensor) -> torch.Tensor:
            return torch.func.jvp(self.forward, (x,), (u.to(x.dtype),))[1]

        def vjp(v: torch.Tensor) -> torch.Tensor:
            return pullback(v.to(value.dtype))[0]

        return Linearization(value.detach(), jvp, vjp)

    def apply_numpy(self, x: np.ndarray) -> np.ndarray:
        """h_n(x) for normalised float numpy (batch, channel, cell) → (batch, obs), float64."""
        with torch.no_grad():
            return self.forward(torch.as_tensor(np.asarray(x, dtype=np.float64))).numpy()

    def observe(self, x: np.ndarray) -> np.ndarray:
        """h(x) for physical float numpy (batch, channel, cell) → (batch, obs), float64, physical units."""
        with torch.no_grad():
            return self.physical(torch.as_tensor(np.asarray(x, dtype=np.float64))).numpy()

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"operator {self.kind} is nonlinear: it has no adjoint; use linearize(x).vjp")

    def matrix(self):
        raise NonlinearOperatorError(
            f"observation operator {self.kind} is nonlinear: it has no matrix (closed-form posteriors, the Kalman "
            "filter and smoother need a linear operator: nearest, bilinear, column or footprint)")
