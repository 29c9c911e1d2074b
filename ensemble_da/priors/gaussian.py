"""The exact Gaussian prior (DESIGN.md §4): a denoiser whose posterior is known in closed form.

Normalised state z (channel, cell) with E[z] = 0 and

    Cov(z[c,p], z[c',q]) = (1 - ν²) R[c,c'] exp(-|r_p - r_q|² / (2ℓ²)) + ν² δ_cc' δ_pq .

Every Gaussian prior here is written in one spectral form, Σ = U diag(λ) Uᵀ + ν² (I − U Uᵀ), with
orthonormal U (`SpectralBasis`). Then the EDM denoiser E[z₀ | z₀ + σε = z] = Σ (Σ + σ²I)⁻¹ z is

    D(z, σ) = ν²/(ν²+σ²) z + U [λ/(λ+σ²) − ν²/(ν²+σ²)] Uᵀ z ,

exact for any σ; the posterior under linear observations is the Kalman update of
`ensemble_da.exact`, which needs only this spectral form. The §4 prior uses the Kronecker basis
U = U_R ⊗ U_K (eigenvectors of R and of the kernel K). How K's modes are found is
`model.approximation`:

- `exact` (nside ≤ 16): every mode, by a dense eigendecomposition of K (cached on disk).
- `lowrank`: the leading `rank` modes + nugget; by the dense eigendecomposition up to nside 16,
  beyond it by the spherical-harmonic construction below (the dense npix² kernel is never built).
- `spherical_harmonics`: K is isotropic, K[p,q] = k(r_p·r_q) with k(t) = exp(−κ(1 − t)),
  κ = 1/ℓ², so its eigenfunctions are spherical harmonics and, from
  exp(κt) = Σ_l (2l+1) i_l(κ) P_l(t) (Abramowitz & Stegun 10.2.36) and the addition theorem,
  the eigenvalue of every Y_lm is 4π e^{−κ} i_l(κ) for the integral operator, i.e.
  λ_l = npix · e^{−κ} i_l(κ) for the matrix on npix equal-area cells. Modes are the complete
  degrees l ≤ L with (L+1)² ≤ rank (whole degrees keep the prior isotropic), real Y_lm sampled
  at the NEST cell centres and made exactly orthonormal on the grid by symmetric (Löwdin)
  orthonormalisation. The prior is then U diag(λ) Uᵀ + nugget exactly, and every "exact" answer
  (denoiser, posterior) is exact for this approximated covariance (DESIGN.md §4).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import healpy as hp
import numpy as np
import scipy.linalg
import scipy.special
import torch

from ensemble_da.channels import Normalization
from ensemble_da.config import GridConfig, KernelModelConfig
from ensemble_da.errors import InputError
from ensemble_da.grid import EARTH_RADIUS_KM, HealpixGrid
from ensemble_da.memory import check_fits
from ensemble_da.priors.base import Condition

__all__ = [
    "SpectralBasis",
    "KroneckerBasis",
    "GaussianPrior",
    "gaussian_kernel_eigen",
    "spherical_harmonic_kernel_eigen",
    "EXACT_MAX_NSIDE",
]

EXACT_MAX_NSIDE = 16


class SpectralBasis(Protocol):
    """An orthonormal basis U with shape (channel·cell, modes) and the prior's eigenvalues.

    `to_spectral(z)` = Uᵀ z and `from_spectral(s)` = U s act on tensors with a leading batch
    axis: z (batch, channel, cell) ↔ s (batch, *mode_shape). Modes flatten in C order, as
    `eigenvalues.reshape(-1)`.
    """

    eigenvalues: np.ndarray  # λ, shape mode_shape, float64
    nugget: float  # ν², the variance outside span(U) and the floor of λ

    def to_spectral(self, z: torch.Tensor) -> torch.Tensor: ...

    def from_spectral(self, s: torch.Tensor) -> torch.Tensor: ...

    def rows(self, index: np.ndarray) -> np.ndarray:
        """U[index, :] for flat state indices `channel * npix + cell`: (len(index), modes) float64."""
        ...

    def diag_covariance(self) -> np.ndarray:
        """diag(Σ) with shape (channel, cell)."""
        ...


def _cache_dir(explicit: str | None) -> Path:
    root = explicit or os.environ.get("ENSEMBLE_DA_CACHE") or Path.home() / ".cache" / "ensemble_da"
    return Path(root)


def gaussian_kernel_eigen(
    grid: HealpixGrid, length_scale_km: float, rank: int | None = None, cache_dir: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of K[p,q] = exp(-|r_p − r_q|²/(2ℓ²)) on the NEST grid, largest first.

    Returns (eigenvalues (modes,), eigenvectors (cell, modes)), float64, cached on disk as .npy
    keyed by (nside, ℓ, rank) so a second run does not pay the O(npix³) decomposition again.
    """
    npix = grid.npix
    rank = npix if rank is None else min(rank, npix)
    key = hashlib.sha256(f"healpix-sqexp-v1:{grid.nside}:{length_scale_km:.9g}:{rank}".encode()).hexdigest()[:16]
    path = _cache_dir(cache_dir) / f"kernel_eigen_{grid.nside}_{key}.npz"
    if path.is_file():
        with np.load(path) as f:
            return f["values"], f["vectors"]
    ell = length_scale_km / EARTH_RADIUS_KM
    r = grid.unit_vectors
    d2 = np.clip(2.0 - 2.0 * (r @ r.T), 0.0, None)
    kernel = np.exp(-d2 / (2.0 * ell**2))
    subset = None if rank == npix else (npix - rank, npix - 1)
    values, vectors = scipy.linalg.eigh(kernel, subset_by_index=subset, overwrite_a=True)
    values, vectors = np.clip(values[::-1], 0.0, None), np.ascontiguousarray(vectors[:, ::-1])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, values=values, vectors=vectors)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs time
    return values, vectors


def spherical_harmonic_degree(rank: int) -> int:
    """The largest degree L with (L+1)² ≤ rank: the spherical-harmonic basis keeps whole degrees."""
    return math.isqrt(max(rank, 1)) - 1


def spherical_harmonic_kernel_eigen(grid: HealpixGrid, length_scale_km: float, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of the isotropic kernel K[p,q] = exp(−|r_p − r_q|²/(2ℓ²)) from spherical harmonics.

    Degrees l ≤ L with (L+1)² ≤ rank; eigenvalues λ_l = npix · e^{−κ} i_l(κ), κ = 1/ℓ² (module
    docstring), each repeated for its 2l+1 orders; vectors: real Y_lm at the NEST cell centres,
    Löwdin-orthonormalised on the grid. Returns (values (modes,), vectors (cell, modes)),
    float64, largest first. InputError when L > 2·nside (the grid cannot resolve the degree).
    """
    degree = spherical_harmonic_degree(rank)
    if degree < 0 or degree > 2 * grid.nside:
        raise InputError(
            f"model.rank {rank} asks for spherical harmonics up to degree {degree}; "
            f"nside {grid.nside} resolves degrees 0..{2 * grid.nside} (rank ≤ {(2 * grid.nside + 1) ** 2})"
        )
    theta, phi = hp.pix2ang(grid.nside, grid.cell_ids, nest=True)
    cols, degrees = [], []
    for ell in range(degree + 1):
        for m in range(ell + 1):
            y = scipy.special.sph_harm_y(ell, m, theta, phi)
            parts = [y.real] if m == 0 else [np.sqrt(2.0) * y.real, np.sqrt(2.0) * y.imag]
            cols += parts
            degrees += [ell] * len(parts)
    vectors = np.stack(cols, axis=1) * np.sqrt(4.0 * np.pi / grid.npix)
    del cols
    w, q = np.linalg.eigh(vectors.T @ vectors)
    vectors = vectors @ ((q / np.sqrt(w)) @ q.T)
    kappa = (EARTH_RADIUS_KM / length_scale_km) ** 2
    # e^{−κ} i_l(κ) = sqrt(π/(2κ)) · ive(l + ½, κ), finite for any κ.
    values = grid.npix * np.sqrt(np.pi / (2.0 * kappa)) * scipy.special.ive(np.asarray(degrees) + 0.5, kappa)
    return values, vectors


def basis_bytes(npix: int, channels: int, approximation: str, rank: int) -> int:
    """Peak bytes to build and hold the kernel basis (float64 build + float64/float32 copies)."""
    if approximation == "exact" or (approximation == "lowrank" and npix <= 12 * EXACT_MAX_NSIDE**2):
        modes = npix if approximation == "exact" else min(rank, npix)
        return 8 * (3 * npix * npix + 2 * npix * modes)
    modes = (spherical_harmonic_degree(rank) + 1) ** 2
    return 8 * 4 * npix * modes + 4 * npix * modes


INVARIANT_CHUNK = 8


def _cell_matmul(z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """z @ u for z (batch, channel, cell) and u (cell, modes), batch-invariant.

    Members go through BLAS in fixed chunks of INVARIANT_CHUNK (zero-padded), one GEMM of the
    same shape per chunk, so a member's arithmetic is the same whatever its companions: folding
    the whole batch into one GEMM lets BLAS change its kernel with the batch size (DESIGN.md §3).
    """
    b, c, n = z.shape
    pad = (-b) % INVARIANT_CHUNK
    if pad:
        z = torch.cat([z, z.new_zeros(pad, c, n)])
    chunks = z.reshape(-1, INVARIANT_CHUNK * c, n)
    out = torch.bmm(chunks, u.expand(chunks.shape[0], *u.shape))
    return out.reshape(-1, c, u.shape[1])[:b]


def _channel_mix(m: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """out[b, i] = Σ_c m[i, c] z[b, c] as elementwise products and a sum (batch-invariant)."""
    return (m[None, :, :, None] * z[:, None, :, :]).sum(2)


class KroneckerBasis:
    """U = U_R ⊗ U_K for Σ = (1−ν²) R ⊗ K + ν² I; modes have shape (channel, kernel modes)."""

    def __init__(self, corr: np.ndarray, kernel_values: np.ndarray, kernel_vectors: np.ndarray, nugget: float):
        r_values, r_vectors = np.linalg.eigh(corr)
        self.r_vectors = r_vectors
        self.k_vectors = kernel_vectors
        self.nugget = float(nugget)
        self.eigenvalues = (1.0 - nugget) * np.outer(np.clip(r_values, 0, None), kernel_values) + nugget
        self._torch: dict = {}

    def _mats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (like.dtype, like.device)
        if key not in self._torch:
            self._torch[key] = (
                torch.as_tensor(self.r_vectors, dtype=like.dtype, device=like.device),
                torch.as_tensor(self.k_vectors, dtype=like.dtype, device=like.device),
            )
        return self._torch[key]

    def to_spectral(self, z: torch.Tensor) -> torch.Tensor:
        ur, uk = self._mats(z)
        return _cell_matmul(_channel_mix(ur.T, z), uk)

    def from_spectral(self, s: torch.Tensor) -> torch.Tensor:
        ur, uk = self._mats(s)
        return _cell_matmul(_channel_mix(ur, s), uk.T)

    def diag_covariance(self) -> np.ndarray:
        """diag(Σ) with shape (channel, cell)."""
        excess = self.eigenvalues - self.nugget
        return self.nugget + (self.r_vectors**2) @ excess @ (self.k_vectors**2).T

    def rows(self, index: np.ndarray) -> np.ndarray:
        """U[index, :], (len(index), channel·kernel modes): U[(c,p),(a,i)] = U_R[c,a] U_K[p,i]."""
        c, p = np.divmod(np.asarray(index), self.k_vectors.shape[0])
        return (self.r_vectors[c][:, :, None] * self.k_vectors[p][:, None, :]).reshape(len(c), self.eigenvalues.size)


@dataclass
class GaussianPrior:
    """Exact Gaussian prior and denoiser on normalised states (channel, cell).

    Parameters
    ----------
    grid : HealpixGrid
    normalization : Normalization
        x = center_c + scale_c · z (center = `mean`, scale = `std` of the config).
    basis : KroneckerBasis or another SpectralBasis
        Covariance Σ = U diag(λ) Uᵀ + ν²(I − U Uᵀ).
    sigma_min, sigma_max : float
        Noise range; the denoiser is exact for every σ.
    """

    grid: HealpixGrid
    normalization: Normalization
    basis: SpectralBasis
    allows_autocast = False  # exact reference: never under bf16 (priors.base.Denoiser)
    sigma_min: float = 0.002
    sigma_max: float = 80.0

    @classmethod
    def from_config(cls, model: KernelModelConfig, grid: GridConfig) -> "GaussianPrior":
        """Build the §4 prior from `model:` (kind gaussian); InputError for bad values."""
        if model.mean is None or model.std is None:
            raise InputError("model.mean and model.std (maps channel → value) are required for kind gaussian")
        norm = Normalization.from_maps(model.channels, model.mean, model.std)
        n = len(model.channels)
        corr = np.eye(n) if model.channel_correlation is None else np.asarray(model.channel_correlation, float)
        if corr.shape != (n, n):
            raise InputError(f"model.channel_correlation must be {n}x{n} for channels {model.channels}")
        if not np.allclose(corr, corr.T) or not np.allclose(np.diag(corr), 1.0):
            raise InputError("model.channel_correlation must be symmetric with unit diagonal")
        if np.linalg.eigvalsh(corr).min() <= 0:
            raise InputError("model.channel_correlation must be positive definite")
        hgrid = HealpixGrid(grid.nside)
        approx = model.approximation
        if approx == "exact" and grid.nside > EXACT_MAX_NSIDE:
            raise InputError(
                f"kind gaussian is exact only up to nside {EXACT_MAX_NSIDE} (got {grid.nside}); "
                "set model.approximation: lowrank (with model.rank) or spherical_harmonics"
            )
        check_fits(basis_bytes(hgrid.npix, n, approx, model.rank), f"the prior's basis for model.approximation "
                   f"{approx} with rank {model.rank} at nside {grid.nside} ({hgrid.npix} cells)")
        if approx == "spherical_harmonics" or (approx == "lowrank" and grid.nside > EXACT_MAX_NSIDE):
            values, vectors = spherical_harmonic_kernel_eigen(hgrid, model.length_scale_km, model.rank)
        else:
            rank = None if approx == "exact" else model.rank
            values, vectors = gaussian_kernel_eigen(hgrid, model.length_scale_km, rank, model.cache_dir)
        return cls(hgrid, norm, KroneckerBasis(corr, values, vectors, model.nugget))

    # --- the denoiser -------------------------------------------------------------------
    def _gains(self, sigma: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lam = torch.as_tensor(self.basis.eigenvalues, dtype=like.dtype, device=like.device)
        s2 = sigma.to(like.dtype).reshape(-1, *([1] * lam.ndim)) ** 2
        nu2 = self.basis.nugget
        floor = nu2 / (nu2 + s2)
        return lam / (lam + s2) - floor, floor

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, condition: Condition | None = None) -> torch.Tensor:
        """D(z, σ) = Σ(Σ + σ²I)⁻¹ z for z (batch, channel, cell), σ (batch,)."""
        gain, floor = self._gains(torch.as_tensor(sigma, device=z.device).expand(z.shape[0]), z)
        return floor.reshape(-1, 1, 1) * z + self.basis.from_spectral(gain * self.basis.to_spectral(z))

    # --- closed-form answers (the posterior is `ensemble_da.exact`) -----------------------
    def covariance_apply(self, v: torch.Tensor) -> torch.Tensor:
        """Σ v for v (batch, channel, cell)."""
        nu2 = self.basis.nugget
        lam = torch.as_tensor(self.basis.eigenvalues - nu2, dtype=v.dtype, device=v.device)
        return nu2 * v + self.basis.from_spectral(lam * self.basis.to_spectral(v))

    def sample_truth(self, rng: np.random.Generator, n: int = 1) -> np.ndarray:
        """Draws from the prior in physical units, float64 (n, channel, cell)."""
        xi = torch.as_tensor(rng.standard_normal((n, len(self.normalization.channels), self.grid.npix)))
        nu = np.sqrt(self.basis.nugget)
        root = torch.as_tensor(np.sqrt(self.basis.eigenvalues) - nu)
        z = nu * xi + self.basis.from_spectral(root * self.basis.to_spectral(xi))
        return self.normalization.denormalize(z.numpy())

    def prior_mean(self) -> np.ndarray | None:
        """E[z] in normalised units (channel, cell); None: zero (the §4 prior)."""
        return None

    def prior_spread(self) -> np.ndarray:
        """Prior std in physical units, (channel, cell)."""
        return self.normalization.scale[:, None] * np.sqrt(self.basis.diag_covariance())
