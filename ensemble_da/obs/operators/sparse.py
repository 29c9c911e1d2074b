"""Sparse rows on a (channel, cell) state, applied deterministically in torch (DESIGN.md §5).

A linear operator here is `rows` rows of `k` entries: row i reads the flattened state elements
`flat[i, j]` (index `channel * npix + cell`) with weights `w[i, j]`,

    (H x)_i = Σ_j w_ij x[flat_ij] ,        (Hᵀ y)_t = Σ_{(i, j) : flat_ij = t} w_ij y_i .

Everything that does not depend on x or y is computed once per device (`SparsePlan`), and a call
is then a few large torch kernels with no host work. Entries of weight 0 (the padding of ragged
rows) are left out of the plan: they add nothing, and a non-finite value at the padding's cell
would otherwise leak into every padded row. Both directions have the same shape:

1. a sum per output in ascending entry order, by elementwise operations in an order fixed when
   the plan is built: the outputs are sorted by how many entries they have (most first, stable),
   so "the r-th entry of every output that has one" is a prefix of the output list; step 0
   gathers the first entries' inputs (x for H, y for Hᵀ; one `index_select`) and multiplies them
   by their weights, step r ≥ 1 gathers the r-th entries' inputs and adds weight × input to that
   prefix with one fused multiply-add (`addcmul_`, rounded once per entry). Gathering rank by
   rank keeps every temporary at most (batch, outputs): one gather of all entries at once made a
   temporary of (batch, entries), 19 MB for 10⁵ column observations, which the C allocator
   returned to the OS and faulted in again on many calls (2-3x slower calls, at random);
2. one write of the sums into place: for H an `index_select` back into the observations' order
   (none when every row has as many entries, as for point and column rows), for Hᵀ a `scatter_`
   of each touched state element's sum into zeros (each written once).

Hᵀ's targets are sorted by state element within the same entry count. Sorting H's rows by the
state element they read gained nothing at nside 64 (the state is in cache) and cost a reorder.

Why Hᵀ never accumulates with atomics (`index_add_`, `scatter_add`, `index_put(accumulate)`): on
CUDA those add concurrent contributions in whatever order the threads arrive, so Hᵀ y would
change in its last bits from call to call and with the other members of the batch, and a
member's analysis would depend on its batch companions (DESIGN.md §3). Here every sum is a fixed
sequence of elementwise multiplies and fused multiply-adds, so H x and Hᵀ y are bit-identical
across calls, devices' thread counts and batch compositions, and equal to a loop over the entries
in ascending order (j = 0, 1, … within a row; i·k + j within a state element) that computes
s = w₀ v₀, then s = fma(w_j, v_j, s).

Cost of one call with B members and E nonzero entries: B·E gathered values and B·E multiplies or
fused multiply-adds, plus for H with rows of unequal length a B·rows gather into the
observations' order and for Hᵀ a state-sized zero fill and a B·T scatter (T state elements
touched). The plan holds 2·E + rows + T indices and
the weights: memory linear in the observations, ~40 bytes per entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["SparsePlan", "SparseRows", "apply_rows", "apply_rows_adjoint"]


def _by_rank(owner: np.ndarray, slot_of_owner: np.ndarray, n_owners: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """The order of entries for the prefix sums, and the prefix lengths.

    `owner` (E,) is the output each entry adds into, entries listed in ascending entry order;
    `slot_of_owner` (n_owners,) the owner's position in the output list (most entries first).
    Returns the permutation of the entries sorted by (rank within its owner, owner's slot) and,
    per rank r, how many owners have an r-th entry.
    """
    order = np.argsort(owner, kind="stable")  # by owner, ties in ascending entry order
    counts = np.bincount(owner, minlength=n_owners)
    first = np.cumsum(counts) - counts
    rank = np.empty(owner.size, dtype=np.int64)
    rank[order] = np.arange(owner.size) - np.repeat(first, counts)
    perm = np.lexsort((slot_of_owner[owner], rank))
    return perm, tuple(int(n) for n in np.bincount(rank)) if rank.size else ()


@dataclass(frozen=True)
class SparsePlan:
    """The index tables of `rows` sparse rows on one device (module docstring).

    Forward (H): `fwd_index` (E,) int64 the state element each nonzero entry reads, ordered by
    (rank within its row, row slot), rows sorted by entry count (most first; stable); `fwd_w64` (E,) their float64 weights; `fwd_prefix[r]` how many rows have an r-th entry;
    `row_slot` (rows,) int64 each observation's slot, or None where slot i is row i.
    Adjoint (Hᵀ): `adj_index` (E,) int64 the observation each entry reads, ordered by (rank within
    its target, target slot), targets sorted by (entry count, most first; state element);
    `adj_w64` (E,) their weights; `adj_prefix` as above; `targets` (T,) int64 each slot's element.
    size : the state size (channel · cell). `weights(name, dtype)` caches other dtypes.
    """

    fwd_index: torch.Tensor
    fwd_w64: torch.Tensor
    fwd_prefix: tuple[int, ...]
    row_slot: torch.Tensor | None
    adj_index: torch.Tensor
    adj_w64: torch.Tensor
    adj_prefix: tuple[int, ...]
    targets: torch.Tensor
    rows: int
    k: int
    size: int
    _weights: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, flat: np.ndarray, weights: np.ndarray, size: int, device: torch.device) -> "SparsePlan":
        """Plan for `flat`, `weights` of shape (rows, k) on a state of `size` elements."""
        flat = np.asarray(flat, dtype=np.int64)
        weights = np.asarray(weights, dtype=np.float64)
        rows, k = flat.shape
        keep = weights != 0
        row, col = np.nonzero(keep)  # the nonzero entries in ascending entry order i·k + j
        element, w = flat[row, col], weights[row, col]
        # forward: rows by (entry count, most first; row)
        count = keep.sum(1)
        by_row = np.argsort(-count, kind="stable")
        row_slot = np.empty(rows, dtype=np.int64)
        row_slot[by_row] = np.arange(rows)
        fwd, fwd_prefix = _by_rank(row, row_slot, rows)
        # adjoint: the touched elements by (entry count, most first; element)
        targets, target_of = np.unique(element, return_inverse=True)
        by_target = np.argsort(-np.bincount(target_of, minlength=len(targets)), kind="stable")
        target_slot = np.empty(len(targets), dtype=np.int64)
        target_slot[by_target] = np.arange(len(targets))
        adj, adj_prefix = _by_rank(target_of.reshape(-1), target_slot, len(targets))
        as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), device=device)  # noqa: E731
        identity = bool(np.array_equal(by_row, np.arange(rows)))
        return cls(as_t(element[fwd]), as_t(w[fwd]), fwd_prefix, None if identity else as_t(row_slot),
                   as_t(row[adj]), as_t(w[adj]), adj_prefix, as_t(targets[by_target]), rows, k, int(size))

    def weights(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """The (E,) weights of `name` ('fwd' or 'adj') in `dtype`, converted once."""
        key = (name, dtype)
        if key not in self._weights:
            self._weights[key] = getattr(self, f"{name}_w64").to(dtype)
        return self._weights[key]


def _gather_sum(source: torch.Tensor, index: torch.Tensor, w: torch.Tensor, prefix: tuple[int, ...]) -> torch.Tensor:
    """(…, prefix[0]), a new tensor: per output slot, Σ_r w · source[index] over its entries, in
    rank order (the first product, then one fused multiply-add per further entry)."""
    start = prefix[0]
    acc = torch.index_select(source, -1, index[:start]).mul_(w[:start])
    for n in prefix[1:]:
        acc[..., :n].addcmul_(torch.index_select(source, -1, index[start : start + n]), w[start : start + n])
        start += n
    return acc


def _forward(x: torch.Tensor, plan: SparsePlan) -> torch.Tensor:
    xf = x.reshape(*x.shape[:-2], -1)
    if not plan.fwd_prefix:
        return xf.new_zeros(*xf.shape[:-1], plan.rows)
    acc = _gather_sum(xf, plan.fwd_index, plan.weights("fwd", x.dtype), plan.fwd_prefix)
    if acc.shape[-1] < plan.rows:  # rows without a nonzero weight: their slots come last
        acc = torch.cat([acc, acc.new_zeros(*acc.shape[:-1], plan.rows - acc.shape[-1])], -1)
    return acc if plan.row_slot is None else torch.index_select(acc, -1, plan.row_slot)


def _adjoint(y: torch.Tensor, plan: SparsePlan, state_shape: tuple[int, int]) -> torch.Tensor:
    lead = y.shape[:-1]
    out = torch.zeros(*lead, plan.size, dtype=y.dtype, device=y.device)
    if plan.adj_prefix:
        acc = _gather_sum(y, plan.adj_index, plan.weights("adj", y.dtype), plan.adj_prefix)
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
