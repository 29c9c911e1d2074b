"""Linear observation operators H (DESIGN.md §5): `nearest` and `bilinear` on HEALPix NEST.

H maps a state with shape (..., channel, cell) to (..., obs). Each observation reads at most 4
cells of its own channel with weights that sum to 1, so H commutes with the per-channel affine
normalisation: y_norm = (y - center_c) / scale_c is observed by the same weights, and
sigma_norm = sigma / scale_c.

H and its adjoint Hᵀ are both explicit and are each other's derivative (autograd.Function with
`setup_context`, a `jvp` and a generated vmap rule), so `torch.autograd`, `torch.func.vjp`,
`jvp` and `vmap` all see exactly these two linear maps. Hᵀ is deterministic on every device:
it never accumulates with atomics (no `index_add_`/`scatter_add`). The entries of H are grouped
by the state element they touch into a padded table (target, K) fixed when the operator is
built; each target's contributions are summed in that fixed order and written once, so Hᵀ y is
bit-identical across calls and does not depend on which other rows share the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch

from ensemble_da.channels import Normalization
from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.qc import check_observations

__all__ = ["ObservationOperator", "OperatorKind"]

OperatorKind = Literal["nearest", "bilinear"]


@dataclass(frozen=True)
class _Plan:
    """H's index tables on one device.

    flat, w : (obs, k) state index and weight of each entry.
    targets : (u,) the distinct state indices H touches, ascending.
    entries : (u, K) for each target the positions (into the flattened (obs·k) entries) that
        touch it, in ascending order, padded with obs·k (a zero slot).
    """

    flat: torch.Tensor
    w: torch.Tensor
    targets: torch.Tensor
    entries: torch.Tensor
    size: int

    @classmethod
    def build(cls, flat: np.ndarray, weights: np.ndarray, size: int, device: torch.device) -> "_Plan":
        f = flat.reshape(-1)
        order = np.argsort(f, kind="stable")
        targets, first, counts = np.unique(f[order], return_index=True, return_counts=True)
        width = int(counts.max()) if len(counts) else 1
        entries = np.full((len(targets), width), f.size, dtype=np.int64)
        slot = np.arange(f.size) - np.repeat(first, counts)
        entries[np.repeat(np.arange(len(targets)), counts), slot] = order
        as_t = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
        return cls(as_t(flat), as_t(weights), as_t(targets), as_t(entries), int(size))


def _apply(x: torch.Tensor, plan: _Plan) -> torch.Tensor:
    xf = x.reshape(*x.shape[:-2], -1)
    w = plan.w.to(x.dtype)
    y = xf[..., plan.flat[:, 0]] * w[:, 0]
    for k in range(1, plan.flat.shape[1]):
        y = y + xf[..., plan.flat[:, k]] * w[:, k]
    return y


def _apply_adjoint(y: torch.Tensor, plan: _Plan, state_shape: tuple[int, int]) -> torch.Tensor:
    contrib = (y[..., :, None] * plan.w.to(y.dtype)).reshape(*y.shape[:-1], -1)
    contrib = torch.cat([contrib, contrib.new_zeros(*y.shape[:-1], 1)], dim=-1)
    gathered = contrib[..., plan.entries]
    acc = gathered[..., 0]
    for k in range(1, plan.entries.shape[1]):
        acc = acc + gathered[..., k]
    out = y.new_zeros(*y.shape[:-1], plan.size)
    out[..., plan.targets] = acc
    return out.reshape(*y.shape[:-1], *state_shape)


class _H(torch.autograd.Function):
    """x ↦ H x; its derivative is Hᵀ (backward) and H itself (jvp)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, plan: _Plan, state_shape: tuple[int, int]) -> torch.Tensor:  # type: ignore[override]
        return _apply(x, plan)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, ctx.plan, ctx.state_shape = inputs

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return _HT.apply(grad, ctx.plan, ctx.state_shape), None, None

    @staticmethod
    def jvp(ctx, x_dot: torch.Tensor, *_):  # type: ignore[override]
        return _H.apply(x_dot, ctx.plan, ctx.state_shape)


class _HT(torch.autograd.Function):
    """y ↦ Hᵀ y; its derivative is H (backward) and Hᵀ itself (jvp)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(y: torch.Tensor, plan: _Plan, state_shape: tuple[int, int]) -> torch.Tensor:  # type: ignore[override]
        return _apply_adjoint(y, plan, state_shape)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, ctx.plan, ctx.state_shape = inputs

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return _H.apply(grad, ctx.plan, ctx.state_shape), None, None

    @staticmethod
    def jvp(ctx, y_dot: torch.Tensor, *_):  # type: ignore[override]
        return _HT.apply(y_dot, ctx.plan, ctx.state_shape)


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
    _plans: dict = field(default_factory=dict, init=False, repr=False, compare=False)

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

    @classmethod
    def at_cells(
        cls,
        cells: np.ndarray,
        channels: np.ndarray,
        values: np.ndarray,
        sigma: np.ndarray | float,
        grid: HealpixGrid,
        normalization: Normalization,
    ) -> "ObservationOperator":
        """H that reads whole cells: observation i is `values[i]` ± `sigma[i]` (physical units)
        of channel `channels[i]` at NEST cell `cells[i]`; all arrays with shape (obs,).

        InputError for a cell outside the grid, a channel the prior does not have, a non-finite
        value or one outside its channel's physical bounds (the CLI's quality control, same message).
        """
        cells = np.asarray(cells, dtype=np.int64).reshape(-1)
        if cells.size == 0:
            raise InputError("no observations given")
        bad = (cells < 0) | (cells >= grid.npix)
        if bad.any():
            raise InputError(f"observation cell {int(cells[bad][0])} is outside the grid (0..{grid.npix - 1})")
        ch = normalization.index(np.broadcast_to(np.asarray(channels, dtype=str), cells.shape).tolist())
        values = np.broadcast_to(np.asarray(values, dtype=np.float64), cells.shape)
        sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), cells.shape)
        # the CLI's QC checks (non-finite, physical bounds) with its messages (obs/qc.py)
        check_observations(values, None, None, np.asarray(normalization.channels)[ch], cell=cells, strict=False)
        if not np.all(sigma > 0):
            raise InputError(f"observation sigma must be > 0, got {float(sigma.min())}")
        return cls(
            flat=(ch * grid.npix + cells)[:, None],
            weights=np.ones((cells.size, 1)),
            y=(values - normalization.center[ch]) / normalization.scale[ch],
            sigma=sigma / normalization.scale[ch],
            n_channels=len(normalization.channels),
            npix=grid.npix,
        )

    def __len__(self) -> int:
        return len(self.y)

    @property
    def state_size(self) -> int:
        return self.n_channels * self.npix

    def _plan(self, device: torch.device) -> _Plan:
        if device not in self._plans:
            self._plans[device] = _Plan.build(self.flat, self.weights, self.state_size, device)
        return self._plans[device]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """H x: (..., channel, cell) → (..., obs); differentiable (autograd and torch.func)."""
        return _H.apply(x, self._plan(x.device), (self.n_channels, self.npix))

    __call__ = forward

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Hᵀ y: (..., obs) → (..., channel, cell); deterministic, differentiable."""
        return _HT.apply(y, self._plan(y.device), (self.n_channels, self.npix))

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
