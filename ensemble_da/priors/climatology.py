"""The climatological Gaussian prior (`model.kind: gaussian_climatology`): the static "B" of
optimal interpolation / 3D-Var, fitted from the same training states as a learned prior.

From training states z_t (normalised with the dataset's per-channel center/scale; t = 1 … T),
with sample mean μ and anomalies A = [z_t − μ] / sqrt(T − 1) (shape (channel·cell, T)):

    Σ = U diag(λ) Uᵀ + ν² I ,   U, λ: the leading `rank` left singular vectors of A and their
                                 squared singular values;  ν²: the nugget.

In the spectral form of DESIGN.md §4 (`gaussian.SpectralBasis`) this is the basis U with
eigenvalues λ + ν² and ν² on the orthogonal complement, so the denoiser, the closed-form
posterior and truth sampling of `GaussianPrior` apply unchanged to the anomaly z − μ:

    D(z, σ) = μ + D₀(z − μ, σ),   and `ensemble_da.exact` gives the posterior with prior mean μ.

The nugget defaults to the variance the leading modes leave unexplained (mean over channel·cell
of diag(A Aᵀ) − diag(U λ Uᵀ)), so the total variance matches the data; a `model.nugget` given
(not null) overrides it. States at the end of the dataset (`model.holdout_days`)
are excluded from the fit, matching the split used by `ensemble-da train`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ensemble_da.channels import Normalization
from ensemble_da.config import ClimatologyModelConfig, GridConfig
from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid
from ensemble_da.priors.base import Condition
from ensemble_da.priors.gaussian import GaussianPrior, _cell_matmul

__all__ = ["DenseLowRankBasis", "ClimatologyPrior", "fit_climatology"]


class DenseLowRankBasis:
    """A dense orthonormal basis U (channel·cell, rank) with eigenvalues λ_i + ν² (a SpectralBasis).

    Parameters
    ----------
    vectors : ndarray, shape (channel, cell, rank)
        Orthonormal columns (over the flattened channel·cell axis).
    values : ndarray, shape (rank,)
        Eigenvalues of the low-rank part (λ_i ≥ 0), normalised units.
    nugget : float
        ν², the variance added on every direction (and the floor of the eigenvalues).
    """

    def __init__(self, vectors: np.ndarray, values: np.ndarray, nugget: float):
        self.shape = vectors.shape[:2]
        self.vectors = np.ascontiguousarray(vectors.reshape(-1, vectors.shape[-1]), dtype=np.float64)
        self.nugget = float(nugget)
        self.eigenvalues = np.clip(np.asarray(values, dtype=np.float64), 0.0, None) + self.nugget
        self._torch: dict = {}

    def _mat(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.dtype, like.device)
        if key not in self._torch:
            self._torch[key] = torch.as_tensor(self.vectors, dtype=like.dtype, device=like.device)
        return self._torch[key]

    def to_spectral(self, z: torch.Tensor) -> torch.Tensor:
        """Uᵀ z: (batch, channel, cell) -> (batch, rank)."""
        u = self._mat(z)
        return _cell_matmul(z.reshape(z.shape[0], 1, -1), u)[:, 0]

    def from_spectral(self, s: torch.Tensor) -> torch.Tensor:
        """U s: (batch, rank) -> (batch, channel, cell)."""
        u = self._mat(s)
        return _cell_matmul(s.reshape(s.shape[0], 1, -1), u.T)[:, 0].reshape(s.shape[0], *self.shape)

    def diag_covariance(self) -> np.ndarray:
        """diag(Σ) with shape (channel, cell)."""
        excess = self.eigenvalues - self.nugget
        return (self.nugget + (self.vectors**2) @ excess).reshape(self.shape)

    def rows(self, index: np.ndarray) -> np.ndarray:
        """U[index, :] for flat state indices: (len(index), rank)."""
        return self.vectors[np.asarray(index)]


def fit_climatology(
    z: np.ndarray, rank: int, nugget: float | None = None
) -> tuple[np.ndarray, DenseLowRankBasis]:
    """Mean and low-rank-plus-nugget covariance of normalised states z (time, channel, cell).

    Returns (mean (channel, cell), basis). `nugget=None`: the unexplained variance per element.
    """
    z = np.asarray(z, dtype=np.float64)
    t = z.shape[0]
    if t < 2:
        raise InputError(f"gaussian_climatology needs at least 2 training states, got {t}")
    mean = z.mean(axis=0)
    a = (z - mean).reshape(t, -1) / np.sqrt(t - 1)  # (T, channel·cell)
    _, s, vt = np.linalg.svd(a, full_matrices=False)
    rank = int(min(rank, len(s)))
    values = s[:rank] ** 2
    if nugget is None:
        total = float((a**2).sum()) / a.shape[1]
        nugget = max((total * a.shape[1] - values.sum()) / a.shape[1], 1e-6)
    vectors = vt[:rank].T.reshape(z.shape[1], z.shape[2], rank)
    return mean, DenseLowRankBasis(vectors, values, nugget)


@dataclass
class ClimatologyPrior(GaussianPrior):
    """GaussianPrior with a non-zero mean field μ (normalised units, shape (channel, cell))."""

    mean: np.ndarray = field(default=None)  # type: ignore[assignment]
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, model: ClimatologyModelConfig, grid: GridConfig) -> "ClimatologyPrior":
        """Fit from `model.path` (dataset zarr or .npz; None: the packaged held-out sample is NOT
        used — a training dataset is required)."""
        from ensemble_da.data.speedy import read_speedy

        if not model.path:
            raise InputError("model.path (the training dataset) is required for kind gaussian_climatology")
        data = read_speedy(model.path)
        if data.nside != grid.nside:
            raise InputError(f"{model.path}: dataset nside {data.nside} differs from grid.nside {grid.nside}")
        norm_all = Normalization(data.channels, data.center, data.scale)
        idx = norm_all.index(model.channels)
        norm = Normalization(tuple(model.channels), data.center[idx], data.scale[idx])
        n_fit = data.state.shape[0] - model.holdout_days
        if n_fit < 2:
            raise InputError(f"{model.path}: {data.state.shape[0]} states and holdout_days={model.holdout_days} leave < 2 to fit")
        z = norm.normalize(data.state[:n_fit][:, idx].astype(np.float64))
        mean, basis = fit_climatology(z, model.rank, model.nugget)
        meta = {"data_hash": data.data_hash, "fit_states": int(n_fit), "rank": len(basis.eigenvalues), "nugget": basis.nugget}
        return cls(HealpixGrid(grid.nside), norm, basis, mean=mean, meta=meta)

    def _mean_t(self, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.mean, dtype=like.dtype, device=like.device)

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, condition: Condition | None = None) -> torch.Tensor:
        """D(z, σ) = μ + Σ(Σ + σ²I)⁻¹ (z − μ) for z (batch, channel, cell), σ (batch,)."""
        mu = self._mean_t(z)
        return mu + super().__call__(z - mu, sigma, condition)

    def sample_truth(self, rng: np.random.Generator, n: int = 1) -> np.ndarray:
        """Draws from the prior in physical units, float64 (n, channel, cell)."""
        anomaly = self.normalization.normalize(super().sample_truth(rng, n))
        return self.normalization.denormalize(anomaly + self.mean)

    def prior_mean(self) -> np.ndarray:
        """μ in normalised units, (channel, cell)."""
        return self.mean

    def prior_mean_physical(self) -> np.ndarray:
        """μ in physical units, (channel, cell)."""
        return self.normalization.denormalize(self.mean)
