"""Batched GMRES with a fixed iteration count, one system per member (Saad & Schultz 1986).

Solves A_b v_b = r_b for every batch row b at once for a general (non-symmetric, possibly
indefinite) A_b, as MMPS needs when the denoiser's Jacobian is not symmetric (a learned network).
k iterations build an orthonormal Krylov basis Q = [q_1 … q_{k+1}] of each row by Arnoldi with
modified Gram–Schmidt (every inner product per row, so members never share coefficients), then
minimise ‖β e_1 − H̄ c‖ over c for the (k+1)×k Hessenberg matrix H̄ and return v = Q_k c. No
early stop (no host synchronisation); a breakdown (exact solution found, h_{j+1,j} = 0) leaves a
zero basis vector, which the minimum-norm least-squares solve ignores.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["gmres"]


def gmres(
    matvec: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor, iterations: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate solution of A v = rhs (A any square matrix), per batch row, from v₀ = 0.

    Parameters
    ----------
    matvec : callable
        v (batch, n) ↦ A v (batch, n).
    rhs : Tensor, shape (batch, n)
        Use float64 for MMPS (the Arnoldi basis loses orthogonality quickly in float32).
    iterations : int
        Krylov dimension k (number of matvecs); 0 returns v = 0.

    Returns
    -------
    v : Tensor, shape (batch, n)
    relative_residual : Tensor, shape (batch,)
        ‖rhs − A v‖ / ‖rhs‖ as GMRES minimises it (‖β e₁ − H̄ c‖ / β; 0 where rhs = 0).
    """
    batch = rhs.shape[0]
    beta = torch.linalg.vector_norm(rhs, dim=-1)
    if iterations == 0:
        return torch.zeros_like(rhs), (beta > 0).to(rhs.dtype)
    tiny = torch.finfo(rhs.dtype).tiny
    basis = [rhs / beta.clamp_min(tiny)[:, None]]
    hess = rhs.new_zeros(batch, iterations + 1, iterations)
    for j in range(iterations):
        w = matvec(basis[j])
        for i, q in enumerate(basis):
            h = (w * q).sum(-1)
            hess[:, i, j] = h
            w = w - h[:, None] * q
        norm = torch.linalg.vector_norm(w, dim=-1)
        hess[:, j + 1, j] = norm
        scale = beta.clamp_min(tiny) * torch.finfo(rhs.dtype).eps
        basis.append(torch.where((norm > scale)[:, None], w / norm.clamp_min(tiny)[:, None], torch.zeros_like(w)))
    target = rhs.new_zeros(batch, iterations + 1)
    target[:, 0] = beta
    # A row with non-finite entries (a denoiser that returned NaN) gets NaN coefficients, so the
    # sampler's divergence check reports it; LAPACK's SVD would raise on it instead.
    finite = torch.isfinite(hess).flatten(1).all(-1) & torch.isfinite(beta)
    hess = torch.where(finite[:, None, None], hess, torch.zeros_like(hess))
    target = torch.where(finite[:, None], target, torch.zeros_like(target))
    coeff = (torch.linalg.pinv(hess) @ target[:, :, None])[..., 0]  # (batch, k)
    coeff = torch.where(finite[:, None], coeff, torch.full_like(coeff, float("nan")))
    v = torch.einsum("bk,kbn->bn", coeff, torch.stack(basis[:iterations]))
    res = torch.linalg.vector_norm(target - (hess @ coeff[:, :, None])[..., 0], dim=-1)
    rel = torch.where(beta > 0, res / beta.clamp_min(tiny), torch.zeros_like(beta))
    return v, rel
