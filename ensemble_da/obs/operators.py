"""Linear observation operators H (DESIGN.md §5): `nearest` and `bilinear` on HEALPix NEST.

H maps a state with shape (batch, channel, cell) to (batch, obs). Each observation reads at
most 4 cells of its own channel with weights that sum to 1, so H commutes with the per-channel
affine normalisation: y_norm = (y - center_c) / scale_c is observed by the same weights, and
sigma_norm = sigma / scale_c. The adjoint Hᵀ is explicit (scatter-add) and is what autograd
uses as H's backward, so gradients never rely on anything but these two maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch

from ensemble_da.channels import Normalization
from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.observation_set import ObservationSet

__all__ = ["ObservationOperator", "OperatorKind"]

OperatorKind = Literal["nearest", "bilinear"]


class _Gather(torch.autograd.Function):
    """y[b, i] = Σ_k w[i, k] · x[b, flat[i, k]] with the explicit adjoint as backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, flat: torch.Tensor, w: torch.Tensor, size: int) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(flat, w)
        ctx.size = size
        ctx.shape = x.shape
        return _forward(x, flat, w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        flat, w = ctx.saved_tensors
        return _adjoint(grad, flat, w, ctx.size).reshape(ctx.shape), None, None, None


def _forward(x: torch.Tensor, flat: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    xf = x.reshape(x.shape[0], -1)
    return (xf[:, flat] * w.to(x.dtype)).sum(-1)


def _adjoint(y: torch.Tensor, flat: torch.Tensor, w: torch.Tensor, size: int) -> torch.Tensor:
    contrib = (y[:, :, None] * w.to(y.dtype)).reshape(y.shape[0], -1)
    out = torch.zeros(y.shape[0], size, dtype=y.dtype, device=y.device)
    return out.index_add_(1, flat.reshape(-1), contrib)


@dataclass(frozen=True)
class ObservationOperator:
    """H for one observation set on one grid, in the prior's normalised units.

    Parameters
    ----------
    flat : ndarray of int64, shape (obs, k)
        Index into the flattened (channel, cell) state: `channel * npix + cell`.
    weights : ndarray of float64, shape (obs, k)
        Interpolation weights (rows sum to 1).
    y, sigma : ndarray of float64, shape (obs,)
        Observations and error std in normalised units.
    n_channels, npix : int
        State shape (channel, cell).
    """

    flat: np.ndarray
    weights: np.ndarray
    y: np.ndarray
    sigma: np.ndarray
    n_channels: int
    npix: int

    @classmethod
    def build(
        cls,
        obs: ObservationSet,
        grid: HealpixGrid,
        normalization: Normalization,
        kind: OperatorKind = "bilinear",
    ) -> "ObservationOperator":
        """Build H for `obs` (all of them: filter with `obs.assimilated_only()` first)."""
        ch = normalization.index(obs.channel)
        if kind == "nearest":
            cells = grid.ang2pix(obs.lat, obs.lon)[:, None]
            weights = np.ones_like(cells, dtype=np.float64)
        elif kind == "bilinear":
            cells, weights = grid.interp_weights(obs.lat, obs.lon)
        else:
            raise ValueError(f"unknown operator kind {kind!r} (nearest | bilinear)")
        flat = ch[:, None] * grid.npix + cells
        return cls(
            flat=flat,
            weights=weights,
            y=(obs.value - normalization.center[ch]) / normalization.scale[ch],
            sigma=obs.sigma / normalization.scale[ch],
            n_channels=len(normalization.channels),
            npix=grid.npix,
        )

    def __len__(self) -> int:
        return len(self.y)

    @property
    def state_size(self) -> int:
        return self.n_channels * self.npix

    def _torch(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            torch.as_tensor(self.flat, device=like.device),
            torch.as_tensor(self.weights, device=like.device),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """H x: (batch, channel, cell) → (batch, obs); differentiable through the adjoint."""
        flat, w = self._torch(x)
        return _Gather.apply(x, flat, w, self.state_size)

    __call__ = forward

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Hᵀ y: (batch, obs) → (batch, channel, cell)."""
        flat, w = self._torch(y)
        return _adjoint(y, flat, w, self.state_size).reshape(y.shape[0], self.n_channels, self.npix)

    def matrix(self) -> sp.csr_matrix:
        """H as a sparse (obs, channel·cell) matrix, for exact posteriors and diagnostics."""
        rows = np.repeat(np.arange(len(self)), self.flat.shape[1])
        return sp.csr_matrix(
            (self.weights.reshape(-1), (rows, self.flat.reshape(-1))), shape=(len(self), self.state_size)
        )

    def apply_numpy(self, x: np.ndarray) -> np.ndarray:
        """H x for float numpy arrays with shape (batch, channel, cell) → (batch, obs)."""
        xf = x.reshape(x.shape[0], -1)
        return (xf[:, self.flat] * self.weights).sum(-1)
