"""The closed-form (Kalman) posterior of a Gaussian prior under linear observations (DESIGN.md §2, §4).

Prior z ~ N(μ, Σ) in normalised units with the spectral form of `priors.gaussian`,

    Σ = U diag(λ) Uᵀ + ν² (I − U Uᵀ) = ν² I + U diag(λ − ν²) Uᵀ ,   U orthonormal (state, modes),

observations y = H z + e, e ~ N(0, R), R = diag(s²), H sparse (obs, state). The posterior is
N(m, P⁻¹) with precision P = Σ⁻¹ + Hᵀ R⁻¹ H (Kalman 1960, in information form). Since
Σ⁻¹ = ν⁻² I − U E Uᵀ with E = diag(ν⁻² − λ⁻¹) ≥ 0,

    P = M − U E Uᵀ ,            M = ν⁻² I + Hᵀ R⁻¹ H   (sparse; ν⁻² I off the observed elements)
    P⁻¹ = M⁻¹ + X K Xᵀ ,        X = M⁻¹ U E^½ ,  K = (diag(ν²/λ) − E^½ U_Oᵀ Δ U_O E^½)⁻¹   (Woodbury)
    m = μ + P⁻¹ Hᵀ R⁻¹ (y − H μ) ,   var = diag(P⁻¹) ,

where O are the state elements some observation reads, M⁻¹ = ν² I + Δ with Δ nonzero only on
O × O, and M restricted to O is block diagonal over groups of elements linked by shared
observations, so M⁻¹ is one small dense inverse per group. Memory is modes² + |O|·modes + Σ
group² + O(state): it does not grow with the observations once they outnumber the prior's modes
(|O| ≤ state), and never holds an (obs × obs) or (obs × state) dense matrix. Modes with
λ − ν² ≤ 1e-12·max(λ − ν²) change Σ below round-off and are left out of U. With fewer
observations than half the modes the textbook form (S = H Σ Hᵀ + R, Σ Hᵀ through the basis) is
cheaper and is used instead: its memory is obs × state, linear in the observations.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components

from ensemble_da.errors import InputError
from ensemble_da.memory import check_fits
from ensemble_da.obs.operators import Operator
from ensemble_da.priors.gaussian import GaussianPrior, SpectralBasis

__all__ = ["kalman_update", "kalman_update_with_bias", "exact_posterior", "exact_biased_posterior_physical", "exact_posterior_physical", "has_exact_posterior", "ExactPosteriorTooLarge",
           "ExactPosteriorUnavailable"]

_DROP = 1e-12
_COLUMN_CHUNK = 256


def has_exact_posterior(prior: object) -> bool:
    """Whether `prior` is Gaussian (a spectral basis), so its posterior under a linear H is closed form."""
    return isinstance(prior, GaussianPrior)


class _BlockInverse:
    """The inverse of a sparse SPD matrix whose connected components are its blocks, kept as dense
    blocks (blocks of equal size stacked and inverted together) and applied block by block."""

    def __init__(self, m: sp.csr_matrix, label: np.ndarray):
        sizes = np.bincount(label)
        order = np.argsort(label, kind="stable")
        pos = np.empty_like(label)
        pos[order] = np.arange(len(label)) - np.concatenate([[0], np.cumsum(sizes)])[label[order]]
        coo = m.tocsr().tocoo()
        coo.sum_duplicates()
        self.classes: list[tuple[np.ndarray, np.ndarray]] = []  # (members (blocks, size), inverses)
        for size in np.unique(sizes):
            blocks = np.flatnonzero(sizes == size)
            slot = np.full(len(sizes), -1)
            slot[blocks] = np.arange(len(blocks))
            sub = np.zeros((len(blocks), size, size))
            sel = slot[label[coo.row]] >= 0
            sub[slot[label[coo.row[sel]]], pos[coo.row[sel]], pos[coo.col[sel]]] = coo.data[sel]
            members = np.empty((len(blocks), size), dtype=np.int64)
            inside = slot[label] >= 0
            members[slot[label[inside]], pos[inside]] = np.flatnonzero(inside)
            self.classes.append((members, np.linalg.inv(sub)))
        self.n = len(label)

    def __matmul__(self, x: np.ndarray) -> np.ndarray:
        x2 = x.reshape(self.n, -1)
        out = np.empty_like(x2)
        for members, inv in self.classes:
            out[members] = np.matmul(inv, x2[members])
        return out.reshape(x.shape)

    def diagonal(self) -> np.ndarray:
        out = np.empty(self.n)
        for members, inv in self.classes:
            out[members] = np.diagonal(inv, axis1=1, axis2=2)
        return out


class ExactPosteriorUnavailable(InputError):
    """There is no closed-form posterior for this run: it would not fit in memory, or the
    observation operator is nonlinear. A run goes on without exact_* outputs (a warning)."""


class ExactPosteriorTooLarge(ExactPosteriorUnavailable):
    """The closed-form posterior would not fit in this machine's memory (raised before allocating)."""


def _check_memory(observed: int, modes: int, largest_block: int, state: int) -> None:
    """Refuse (ExactPosteriorTooLarge) an information-form update whose peak float64 memory
    (modes², observed × modes, the largest dense block², column chunks of the state) would not fit."""
    need = 8 * (3 * modes * modes + 3 * observed * modes + largest_block**2 * 2 + _COLUMN_CHUNK * state * 2)
    check_fits(need, f"the exact posterior with {observed} observed state elements (largest linked group "
               f"{largest_block}) and {modes} prior modes", ExactPosteriorTooLarge)


def kalman_update(
    basis: SpectralBasis,
    h: sp.spmatrix,
    y: np.ndarray,
    sigma: np.ndarray,
    prior_mean: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and per-element variance of z ~ N(prior_mean, Σ(basis)) given y = H z + e.

    Parameters
    ----------
    basis : SpectralBasis
        The prior covariance Σ = ν² I + U diag(λ − ν²) Uᵀ (normalised units).
    h : sparse matrix, shape (obs, channel·cell)
        The observation operator H.
    y, sigma : ndarray, shape (obs,)
        Observations and their error standard deviations (normalised units, sigma > 0).
    prior_mean : ndarray, shape (channel, cell), optional
        μ; None is zero.

    Returns
    -------
    mean, var : ndarray, float64, each with shape (channel, cell)

    Raises InputError (before any large allocation) when the update would not fit in memory.
    """
    shape = basis.diag_covariance().shape
    state = int(np.prod(shape))
    nu2 = basis.nugget
    h = sp.csr_matrix(h, dtype=np.float64)
    y = np.asarray(y, np.float64)
    mu = np.zeros(state) if prior_mean is None else np.asarray(prior_mean, np.float64).reshape(-1)
    if h.shape[0] == 0:
        return mu.reshape(shape), basis.diag_covariance()
    y = y - h @ mu
    lam_full = np.asarray(basis.eigenvalues, np.float64)
    excess = lam_full.reshape(-1) - nu2
    keep = np.flatnonzero(excess > _DROP * max(excess.max(initial=0.0), 0.0))
    lam = lam_full.reshape(-1)[keep]
    e_half = np.sqrt(np.clip(1.0 / nu2 - 1.0 / lam, 0.0, None))

    if 2 * h.shape[0] < len(keep):
        mean, var = _observation_form(basis, h, y, np.asarray(sigma, np.float64), state)
        return (mean + mu).reshape(shape), var.reshape(shape)

    observed = np.unique(h.indices)
    h_o = h[:, observed]
    w = sp.diags(1.0 / np.asarray(sigma, np.float64) ** 2)
    m_oo = sp.identity(len(observed), format="csr") / nu2 + (h_o.T @ w @ h_o).tocsr()
    _, label = connected_components(m_oo, directed=False)
    largest = int(np.bincount(label).max()) if len(observed) else 0
    _check_memory(len(observed), len(keep), largest, state)

    m_inv = _BlockInverse(m_oo, label)
    u_o = basis.rows(observed)[:, keep] * e_half  # U_O E^½
    m_inv_u_o = m_inv @ u_o
    core = np.diag(nu2 / lam) - u_o.T @ (m_inv_u_o - nu2 * u_o)  # Δ = M⁻¹ − ν² I on O
    chol = scipy.linalg.cho_factor(core, lower=True)

    def lift(s: np.ndarray) -> np.ndarray:
        """ν² U E^½ s for s (modes_kept, k) → (k, state), through the basis (no dense U)."""
        full = np.zeros((s.shape[1], lam_full.size))
        full[:, keep] = (e_half[:, None] * s).T
        out = basis.from_spectral(torch.as_tensor(full.reshape(-1, *lam_full.shape)))
        return nu2 * out.reshape(s.shape[1], state).numpy()

    b_o = h_o.T @ (w @ y)
    mb_o = m_inv @ b_o  # M⁻¹ b on O (b vanishes off O)
    g = scipy.linalg.cho_solve(chol, u_o.T @ mb_o)  # K Xᵀ b
    mean = lift(g[:, None])[0]
    mean[observed] += mb_o + (m_inv_u_o - nu2 * u_o) @ g

    # var = diag(M⁻¹) + rowsum((X L⁻ᵀ)²), core = L Lᵀ; rows off O: X = ν² U E^½.
    l_inv_t = scipy.linalg.solve_triangular(chol[0], np.eye(len(keep)), lower=True).T
    var = np.full(state, nu2)
    var[observed] = m_inv.diagonal()
    extra = np.zeros(state)
    for start in range(0, len(keep), _COLUMN_CHUNK):
        extra += (lift(l_inv_t[:, start : start + _COLUMN_CHUNK]) ** 2).sum(0)
    extra[observed] = ((m_inv_u_o @ l_inv_t) ** 2).sum(1)
    return (mean + mu).reshape(shape), (var + extra).reshape(shape)


def _observation_form(
    basis: SpectralBasis, h: sp.csr_matrix, y: np.ndarray, sigma: np.ndarray, state: int
) -> tuple[np.ndarray, np.ndarray]:
    """The textbook update for few observations: G = Σ Hᵀ (state × obs, through the basis),
    S = H G + R = L Lᵀ, mean = G S⁻¹ y, var = diag(Σ) − colsum((L⁻¹ Gᵀ)²)."""
    n_obs = h.shape[0]
    check_fits(8 * (2 * n_obs * state + 2 * n_obs * n_obs), f"the exact posterior with {n_obs} observations",
               ExactPosteriorTooLarge)
    nu2, prior_var = basis.nugget, basis.diag_covariance()
    excess = torch.as_tensor(np.asarray(basis.eigenvalues, np.float64) - nu2)
    gt = np.empty((n_obs, state))  # rows: (Σ Hᵀ)ᵀ
    for start in range(0, n_obs, _COLUMN_CHUNK):
        ht = torch.as_tensor(h[start : start + _COLUMN_CHUNK].toarray())
        ht = ht.reshape(ht.shape[0], *prior_var.shape)
        block = nu2 * ht + basis.from_spectral(excess * basis.to_spectral(ht))
        gt[start : start + len(ht)] = block.reshape(len(ht), state).numpy()
    chol = scipy.linalg.cholesky(h @ gt.T + np.diag(sigma**2), lower=True)
    mean = gt.T @ scipy.linalg.cho_solve((chol, True), y)
    gt = scipy.linalg.solve_triangular(chol, gt, lower=True, overwrite_b=True)
    return mean, prior_var.reshape(-1) - (gt**2).sum(0)


def exact_posterior(prior: GaussianPrior, op: Operator) -> tuple[np.ndarray, np.ndarray]:
    """Exact posterior mean and per-element variance (normalised units), each (channel, cell),
    for any linear operator (its `matrix()`: point, column, footprint rows).

    Raises ExactPosteriorUnavailable for a nonlinear operator (the posterior is not Gaussian).
    """
    if not op.linear:
        raise ExactPosteriorUnavailable(f"no exact posterior with the nonlinear observation operator "
                                        f"{getattr(op, 'kind', type(op).__name__)}")
    return kalman_update(prior.basis, op.matrix(), op.y, op.sigma, prior.prior_mean())


def exact_posterior_physical(prior: GaussianPrior, op: Operator) -> tuple[np.ndarray, np.ndarray]:
    """Exact posterior mean and spread (std) in physical units, each (channel, cell)."""
    mean, var = exact_posterior(prior, op)
    return prior.normalization.denormalize(mean), prior.normalization.scale[:, None] * np.sqrt(var)


def kalman_update_with_bias(
    basis: SpectralBasis,
    h: sp.spmatrix,
    y: np.ndarray,
    sigma: np.ndarray,
    predictors: np.ndarray,
    prior_sigma: np.ndarray,
    prior_mean: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The joint posterior of (z, β) given y = H z + P β + e, β ~ N(0, diag(b²)) (`obs.bias`).

    By p(z, β | y) = p(β | y) p(z | β, y), from k + 2 `kalman_update`s (k = len(β)): with
    S = H Σ Hᵀ + diag(s²) and S⁻¹ v = R⁻¹ (v − H g(v)), g(v) the update's mean increment for data v,

        C_β = (B⁻¹ + Pᵀ S⁻¹ P)⁻¹ ,  β̄ = C_β Pᵀ S⁻¹ (y − H μ) ,
        E[z | y] = mean of the update with y − P β̄ ,  var = var(z | β, y) + diag(G C_β Gᵀ) ,

    G = [g(P e_j)] (state, k). Shapes as `kalman_update`; predictors (obs, k), prior_sigma (k,).
    Returns mean, var (channel, cell) of z and mean (k,), covariance (k, k) of β.
    """
    shape = basis.diag_covariance().shape
    h = sp.csr_matrix(h, dtype=np.float64)
    sigma = np.asarray(sigma, np.float64)
    p = np.asarray(predictors, np.float64)
    mu = np.zeros(int(np.prod(shape))) if prior_mean is None else np.asarray(prior_mean, np.float64).reshape(-1)
    g = np.stack([kalman_update(basis, h, p[:, j], sigma)[0].reshape(-1) for j in range(p.shape[1])], 1)
    s_inv_p = (p - h @ g) / sigma[:, None] ** 2  # S⁻¹ P
    d = np.asarray(y, np.float64) - h @ mu
    cov = np.linalg.inv(np.diag(1.0 / np.asarray(prior_sigma, np.float64) ** 2) + p.T @ s_inv_p)
    cov = 0.5 * (cov + cov.T)
    beta = cov @ (s_inv_p.T @ d)
    mean, var = kalman_update(basis, h, np.asarray(y, np.float64) - p @ beta, sigma, prior_mean)
    var = var.reshape(-1) + np.einsum("sk,kl,sl->s", g, cov, g)
    return mean, var.reshape(shape), beta, cov


def exact_biased_posterior_physical(prior: GaussianPrior, op: Operator, predictors: np.ndarray, prior_sigma: np.ndarray
                                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`kalman_update_with_bias` for `prior` and a linear `op`: state mean and spread in physical
    units (channel, cell), β mean (k,) and covariance (k, k) (β's units, `obs.bias`)."""
    if not op.linear:
        raise ExactPosteriorUnavailable(f"no exact posterior with the nonlinear observation operator "
                                        f"{getattr(op, 'kind', type(op).__name__)}")
    mean, var, beta, cov = kalman_update_with_bias(prior.basis, op.matrix(), op.y, op.sigma, predictors, prior_sigma,
                                                   prior.prior_mean())
    return (prior.normalization.denormalize(mean), prior.normalization.scale[:, None] * np.sqrt(var), beta, cov)
