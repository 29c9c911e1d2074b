"""Batched conjugate gradients with a fixed iteration count, one system per member.

Solves A_b v_b = r_b for every batch row b at once; every inner product is taken per row, so
members never share step sizes. Used by MMPS (DESIGN.md §6) in float64.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["conjugate_gradient"]


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor, iterations: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate solution of A v = rhs for symmetric positive-definite A, per batch row.

    Parameters
    ----------
    matvec : callable
        v (batch, n) ↦ A v (batch, n).
    rhs : Tensor, shape (batch, n)
    iterations : int
        Number of CG iterations (0 returns v = 0).

    Returns
    -------
    v : Tensor, shape (batch, n)
    relative_residual : Tensor, shape (batch,)
        ‖rhs − A v‖ / ‖rhs‖ from the CG recursion (0 where rhs = 0).
    """
    v = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rs = (r * r).sum(-1, keepdim=True)
    for _ in range(iterations):
        ap = matvec(p)
        pap = (p * ap).sum(-1, keepdim=True)
        alpha = torch.where(pap > 0, rs / pap.clamp_min(torch.finfo(pap.dtype).tiny), torch.zeros_like(pap))
        v = v + alpha * p
        r = r - alpha * ap
        rs_new = (r * r).sum(-1, keepdim=True)
        beta = torch.where(rs > 0, rs_new / rs.clamp_min(torch.finfo(rs.dtype).tiny), torch.zeros_like(rs))
        p = r + beta * p
        rs = rs_new
    norm = torch.linalg.vector_norm(rhs, dim=-1)
    rel = torch.where(norm > 0, rs.squeeze(-1).sqrt() / norm.clamp_min(torch.finfo(norm.dtype).tiny), torch.zeros_like(norm))
    return v, rel
