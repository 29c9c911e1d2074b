"""Sparse rows on a (channel, cell) state, applied deterministically in torch (DESIGN.md §5).

A linear operator here is `rows` rows of `k` entries: row i reads the flattened state elements
`flat[i, j]` (index `channel * npix + cell`) with weights `w[i, j]`,

    (H x)_i = Σ_j w_ij x[flat_ij] ,        (Hᵀ y)_t = Σ_{(i, j) : flat_ij = t} w_ij y_i .

Everything that does not depend on x or y is computed once per device (`SparsePlan`): the
gather index, the weights in each dtype asked for, and the grouping of entries by the state
element (target) they touch. A call is then a few large torch kernels with no host work:

- forward: one `index_select` of all `rows · k` entries (rank-major, so row i's entry j lies at
  `j * rows + i`), then k multiply-adds in the fixed order j = 0, 1, …, k − 1;
- adjoint: the contributions `w_ij y_i`, one `index_select` that orders them by target, then a
  sum per target in ascending entry order, and one `scatter_` of each target's sum into zeros.

Why Hᵀ never accumulates with atomics (`index_add_`, `scatter_add`, `index_put(accumulate)`): on
CUDA those add concurrent contributions in whatever order the threads arrive, so Hᵀ y would
change in its last bits from call to call and with the other members of the batch, and a
member's analysis would depend on its batch companions (DESIGN.md §3). Here each target's
contributions are summed by elementwise adds in an order fixed when the plan is built: targets are
sorted by how many entries touch them (most first), so "the r-th contribution of every target that
has one" is a prefix of the target list, and step r adds one slice of the gathered contributions to
that prefix. The scatter then writes every target once. Hᵀ y is therefore bit-identical across
calls, devices' thread counts and batch compositions, and the sum order is ascending entry order,
the order of a plain loop over the entries.

Cost of one call with B members, E = rows·k entries, T distinct targets and at most K entries on
one target: forward B·E gathered values and k passes over B·rows; adjoint B·E gathered values, K
adds of shrinking prefixes (B·E values in all), a state-sized zero fill and a B·T scatter. The
plan holds 2·E + T indices and the weights: memory linear in the observations, ~30 bytes per entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["SparsePlan", "SparseRows", "apply_rows", "apply_rows_adjoint"]


@dataclass(frozen=True)
class SparsePlan:
    """The index tables of `rows` sparse rows on one device (module docstring).

    gather : (k·rows,) int64, the state element of each entry, rank-major (entry (i, j) at j·rows + i).
    w64 : (k, rows) float64 weights (rank-major); `weights(dtype)` caches other dtypes.
    entries : (E,) int64 positions into the rank-major contributions, ordered by (rank within
        the target, target slot); the rank-r block is `prefix[r]` long.
    prefix : how many targets have an r-th entry, r = 0 … K − 1 (non-increasing).
    targets : (T,) int64 the state element of each target slot (slots sorted by entry count, most first).
    size : the state size (channel · cell).
    """

    gather: torch.Tensor
    w64: torch.Tensor
    entries: torch.Tensor
    prefix: tuple[int, ...]
    targets: torch.Tensor
    rows: int
    k: int
    size: int
    _weights: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, flat: np.ndarray, weights: np.ndarray, size: int, device: torch.device) -> "SparsePlan":
        """Plan for `flat`, `weights` of shape (rows, k) on a state of `size` elements."""
        flat = np.asarray(flat, dtype=np.int64)
        rows, k = flat.shape
        obs_major = flat.reshape(-1)  # entry e = i·k + j
        order = np.argsort(obs_major, kind="stable")  # by target, ties in ascending entry order
        targets, first, counts = np.unique(obs_major[order], return_index=True, return_counts=True)
        rank = np.arange(obs_major.size) - np.repeat(first, counts)
        by_count = np.argsort(-counts, kind="stable")
        slot_of = np.empty(len(targets), dtype=np.int64)
        slot_of[by_count] = np.arange(len(targets))
        slot = np.repeat(slot_of, counts)
        i, j = np.divmod(order, k)
        position = j * rows + i  # where entry e sits among the rank-major contributions
        entries = position[np.lexsort((slot, rank))]
        prefix = tuple(int(n) for n in np.bincount(rank)) if rank.size else ()
        as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), device=device)  # noqa: E731
        return cls(as_t(flat.T.reshape(-1)), as_t(np.asarray(weights, dtype=np.float64).T),
                   as_t(entries), prefix, as_t(targets[by_count]), rows, k, int(size))

    def weights(self, dtype: torch.dtype) -> torch.Tensor:
        """The (k, rows) weights in `dtype`, converted once."""
        if dtype not in self._weights:
            self._weights[dtype] = self.w64.to(dtype)
        return self._weights[dtype]


def _forward(x: torch.Tensor, plan: SparsePlan) -> torch.Tensor:
    xf = x.reshape(*x.shape[:-2], -1)
    g = torch.index_select(xf, -1, plan.gather).unflatten(-1, (plan.k, plan.rows))
    w = plan.weights(x.dtype)
    y = g[..., 0, :] * w[0]
    for j in range(1, plan.k):
        y = y + g[..., j, :] * w[j]
    return y


def _adjoint(y: torch.Tensor, plan: SparsePlan, state_shape: tuple[int, int]) -> torch.Tensor:
    lead = y.shape[:-1]
    contrib = (y[..., None, :] * plan.weights(y.dtype)).flatten(-2)  # (…, k·rows) rank-major
    g = torch.index_select(contrib, -1, plan.entries)
    out = torch.zeros(*lead, plan.size, dtype=y.dtype, device=y.device)
    if plan.prefix:
        acc = g[..., : plan.prefix[0]].clone()
        start = plan.prefix[0]
        for n in plan.prefix[1:]:
            acc[..., :n] += g[..., start : start + n]
            start += n
        out.scatter_(-1, plan.targets.expand(*lead, -1), acc)
    return out.unflatten(-1, state_shape)


def _batched(fn, info, in_dims, t, plan, shape):
    """vmap rule: the functions take any leading dims, so move the vmapped one to the front."""
    if in_dims[0] is None:
        return fn.apply(t, plan, shape), None
    return fn.apply(t.movedim(in_dims[0], 0), plan, shape), 0


class _H(torch.autograd.Function):
    """x ↦ H x; its derivative is Hᵀ (backward) and H itself (jvp)."""

    @staticmethod
    def forward(x: torch.Tensor, plan: SparsePlan, state_shape: tuple[int, int]) -> torch.Tensor:  # type: ignore[override]
        return _forward(x, plan)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, ctx.plan, ctx.state_shape = inputs

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return _HT.apply(grad, ctx.plan, ctx.state_shape), None, None

    @staticmethod
    def jvp(ctx, x_dot: torch.Tensor, *_):  # type: ignore[override]
        return _H.apply(x_dot, ctx.plan, ctx.state_shape)

    @staticmethod
    def vmap(info, in_dims, x, plan, state_shape):  # type: ignore[override]
        return _batched(_H, info, in_dims, x, plan, state_shape)


class _HT(torch.autograd.Function):
    """y ↦ Hᵀ y; its derivative is H (backward) and Hᵀ itself (jvp)."""

    @staticmethod
    def forward(y: torch.Tensor, plan: SparsePlan, state_shape: tuple[int, int]) -> torch.Tensor:  # type: ignore[override]
        return _adjoint(y, plan, state_shape)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, ctx.plan, ctx.state_shape = inputs

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return _H.apply(grad, ctx.plan, ctx.state_shape), None, None

    @staticmethod
    def jvp(ctx, y_dot: torch.Tensor, *_):  # type: ignore[override]
        return _HT.apply(y_dot, ctx.plan, ctx.state_shape)

    @staticmethod
    def vmap(info, in_dims, y, plan, state_shape):  # type: ignore[override]
        return _batched(_HT, info, in_dims, y, plan, state_shape)


def apply_rows(x: torch.Tensor, plan: SparsePlan, state_shape: tuple[int, int]) -> torch.Tensor:
    """H x for x (…, channel, cell) → (…, rows); differentiable (autograd, torch.func, vmap)."""
    return _H.apply(x, plan, state_shape)


def apply_rows_adjoint(y: torch.Tensor, plan: SparsePlan, state_shape: tuple[int, int]) -> torch.Tensor:
    """Hᵀ y for y (…, rows) → (…, channel, cell); deterministic, differentiable."""
    return _HT.apply(y, plan, state_shape)


class SparseRows:
    """Rows `flat`, `weights` (rows, k) on a (channel, cell) state, with a plan per device.

    For operators that are not themselves linear but read the state through sparse rows (wind
    speed reads U and V bilinearly; plug-ins may interpolate). Units are the caller's.
    """

    def __init__(self, flat: np.ndarray, weights: np.ndarray, state_shape: tuple[int, int]):
        self.flat = np.asarray(flat, dtype=np.int64)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.state_shape = (int(state_shape[0]), int(state_shape[1]))
        self._plans: dict[torch.device, SparsePlan] = {}

    def plan(self, device: torch.device) -> SparsePlan:
        if device not in self._plans:
            self._plans[device] = SparsePlan.build(self.flat, self.weights, int(np.prod(self.state_shape)), device)
        return self._plans[device]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(…, channel, cell) → (…, rows)."""
        return apply_rows(x, self.plan(x.device), self.state_shape)
