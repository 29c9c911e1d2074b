"""Exact references in time (DESIGN.md §10): the Kalman filter and the RTS smoother.

For the `gaussian_markov` prior (normalised units: z_0 ~ N(0, Σ), z_{k+1} = ρ z_k + w_k,
w_k ~ N(0, (1 − ρ²) Σ)) and linear observations y_k = H_k z_k + e_k, e_k ~ N(0, diag(s_k²)):

- filter (Kalman 1960): forecast m⁻_k = ρ m_{k−1}, P⁻_k = ρ² P_{k−1} + (1 − ρ²) Σ (m⁻_0 = 0,
  P⁻_0 = Σ); update K = P⁻ Hᵀ (H P⁻ Hᵀ + R)⁻¹, m_k = m⁻_k + K (y_k − H m⁻_k),
  P_k = P⁻_k − K H P⁻_k. Its first step is the §4 posterior of time 0 alone.
- smoother (Rauch, Tung & Striebel 1965): G_k = ρ P_k (P⁻_{k+1})⁻¹,
  mˢ_k = m_k + G_k (mˢ_{k+1} − m⁻_{k+1}), Pˢ_k = P_k + G_k (Pˢ_{k+1} − P⁻_{k+1}) G_kᵀ, and the
  lag-one covariance Cov(z_k, z_{k+1} | y_0..y_K) = G_k Pˢ_{k+1}.

Covariances are dense (state × state, float64, state = channel·cell): a reference for small grids
(nside ≤ 8 with a few channels), refused with `ExactPosteriorTooLarge` before allocating beyond
what this machine holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from ensemble_da.exact import ExactPosteriorTooLarge
from ensemble_da.memory import check_fits
from ensemble_da.obs.operators import ObservationOperator
from ensemble_da.priors.gaussian_markov import GaussianMarkovPrior

__all__ = ["KalmanFilter", "TimeMarginals", "kalman_filter", "rts_smoother", "dense_covariance"]


def dense_covariance(prior: GaussianMarkovPrior) -> np.ndarray:
    """Σ of the prior as a dense float64 (state, state) matrix, state = channel·cell (C order)."""
    basis = prior.basis
    shape = basis.diag_covariance().shape
    n = int(np.prod(shape))
    u = basis.rows(np.arange(n))
    excess = np.asarray(basis.eigenvalues, np.float64).reshape(-1) - basis.nugget
    return basis.nugget * np.eye(n) + (u * excess) @ u.T


@dataclass
class TimeMarginals:
    """Per-time Gaussian marginals, normalised units: mean, var (time, channel, cell); `lag_one`
    (time − 1, channel, cell): diag Cov(z_k, z_{k+1}) (smoother only)."""

    mean: np.ndarray
    var: np.ndarray
    lag_one: np.ndarray | None = None

    def physical(self, prior: GaussianMarkovPrior) -> tuple[np.ndarray, np.ndarray]:
        """(mean, spread) in physical units, each (time, channel, cell)."""
        norm = prior.normalization
        return norm.denormalize(self.mean), norm.scale[:, None] * np.sqrt(self.var)


@dataclass
class KalmanFilter:
    """The filter run one time at a time (a cycled run learns each time's observations as it
    goes); `step(op)` returns time k's analysis (mean, var), each (channel, cell), normalised.
    `keep_history` keeps what the smoother needs (two dense covariances per time)."""

    prior: GaussianMarkovPrior
    keep_history: bool = False
    sigma: np.ndarray = field(init=False)
    mean: np.ndarray | None = field(init=False, default=None)
    cov: np.ndarray | None = field(init=False, default=None)
    history: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        shape = self.prior.basis.diag_covariance().shape
        self.shape = shape
        n = int(np.prod(shape))
        check_fits(8 * n * n * 5, f"the exact Kalman filter (dense {n} x {n} covariances)", ExactPosteriorTooLarge)
        self.sigma = dense_covariance(self.prior)

    def forecast(self) -> tuple[np.ndarray, np.ndarray]:
        """(m⁻, P⁻) of the next time: the stationary prior before the first."""
        rho = self.prior.rho
        if self.mean is None:
            return np.zeros(self.sigma.shape[0]), self.sigma.copy()
        return rho * self.mean, rho**2 * self.cov + (1.0 - rho**2) * self.sigma

    def step(self, op: ObservationOperator | None) -> tuple[np.ndarray, np.ndarray]:
        """Assimilate the next time's observations (`op`: H, y, sigma normalised; None = none)."""
        m_f, p_f = self.forecast()
        m_a, p_a = _update(m_f, p_f, op)
        if self.keep_history:
            n = p_f.shape[0]
            check_fits(8 * n * n * 2 * (len(self.history) + 3),
                       f"the exact RTS smoother ({len(self.history) + 1} times of dense {n} x {n} covariances)",
                       ExactPosteriorTooLarge)
            self.history.append((m_f, p_f, m_a, p_a))
        self.mean, self.cov = m_a, p_a
        return m_a.reshape(self.shape), np.diag(p_a).reshape(self.shape).copy()


def _update(m: np.ndarray, p: np.ndarray, op: ObservationOperator | None) -> tuple[np.ndarray, np.ndarray]:
    """Kalman update of N(m, P) by y = H z + e (textbook form; symmetric result)."""
    if op is None or len(op) == 0:
        return m, p
    h = sp.csr_matrix(op.matrix())
    hp = np.asarray(h @ p)  # (obs, state)
    s = np.asarray(h @ hp.T) + np.diag(np.asarray(op.sigma, np.float64) ** 2)
    chol = scipy.linalg.cho_factor(s, lower=True)
    gain_t = scipy.linalg.cho_solve(chol, hp)  # (obs, state) = (P Hᵀ S⁻¹)ᵀ
    mean = m + gain_t.T @ (np.asarray(op.y, np.float64) - h @ m)
    cov = p - hp.T @ gain_t
    return mean, 0.5 * (cov + cov.T)


def kalman_filter(prior: GaussianMarkovPrior, operators: Sequence[ObservationOperator | None]) -> TimeMarginals:
    """p(z_k | y_0..y_k) for every k (normalised units): mean, var each (time, channel, cell)."""
    kf = KalmanFilter(prior)
    steps = [kf.step(op) for op in operators]
    return TimeMarginals(np.stack([s[0] for s in steps]), np.stack([s[1] for s in steps]))


def rts_smoother(prior: GaussianMarkovPrior, operators: Sequence[ObservationOperator | None]) -> TimeMarginals:
    """p(z_k | y_0..y_K) for every k, with the lag-one covariances (normalised units)."""
    kf = KalmanFilter(prior, keep_history=True)
    for op in operators:
        kf.step(op)
    rho, hist = prior.rho, kf.history
    k_last = len(hist) - 1
    m_s, p_s = hist[k_last][2], hist[k_last][3]
    means, vars_, lags = [m_s], [np.diag(p_s).copy()], []
    for k in range(k_last - 1, -1, -1):
        _, _, m_a, p_a = hist[k]
        m_f1, p_f1 = hist[k + 1][0], hist[k + 1][1]
        gain = rho * scipy.linalg.solve(p_f1, p_a, assume_a="pos").T  # G = ρ P_a P⁻⁻¹ (both symmetric)
        lags.append(np.einsum("ij,ij->i", gain, p_s.T))  # diag(G Pˢ_{k+1})
        m_s = m_a + gain @ (m_s - m_f1)
        p_s = p_a + gain @ (p_s - p_f1) @ gain.T
        p_s = 0.5 * (p_s + p_s.T)
        means.append(m_s)
        vars_.append(np.diag(p_s).copy())
    shape = kf.shape
    return TimeMarginals(
        np.stack(means[::-1]).reshape(-1, *shape),
        np.stack(vars_[::-1]).reshape(-1, *shape),
        np.stack(lags[::-1]).reshape(-1, *shape) if lags else np.zeros((0, *shape)),
    )
