"""The exact dynamical prior `gaussian_markov` (DESIGN.md §10): the §4 Gaussian in time.

In normalised units, with Σ the §4 covariance (`priors.gaussian`) and ρ = `model.rho`,

    z_0 ~ N(0, Σ),   z_{k+1} = ρ z_k + √(1 − ρ²) ξ_k,   ξ_k ~ N(0, Σ) i.i.d.,

a stationary AR(1) process: Cov(z_j, z_k) = ρ^|j−k| Σ. A window of L consecutive times
(slot, channel, cell) is Gaussian with covariance T ⊗ Σ, T[j,k] = ρ^|j−k| (L × L); given the
state z_p just before the window it is Gaussian with mean r ⊗ z_p, r_j = ρ^(j+1), and covariance
(T − r rᵀ) ⊗ Σ. Both are A ⊗ Σ for a small SPD matrix A = V diag(τ) Vᵀ, so the EDM denoiser is
exact through two spectral transforms (time modes V, then Σ's basis U):

    D(z, σ) = μ + (V ⊗ I) · blockdiag_i[ τ_i Σ (τ_i Σ + σ² I)⁻¹ ] · (Vᵀ ⊗ I) (z − μ),

and τ_i Σ has the eigenvalues τ_i λ and nugget τ_i ν² of §4's spectral form.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ensemble_da.channels import Normalization
from ensemble_da.config import GridConfig, KernelModelConfig
from ensemble_da.grid import HealpixGrid
from ensemble_da.priors.base import Condition
from ensemble_da.priors.gaussian import GaussianPrior, _channel_mix

__all__ = ["GaussianMarkovPrior", "MarkovWindow", "temporal_covariance", "window_normalization", "PREVIOUS"]

# The condition key of a window given the state before it: (batch, channel, cell) normalised.
PREVIOUS = "previous_state"


def temporal_covariance(rho: float, slots: int) -> np.ndarray:
    """T[j, k] = ρ^|j−k| for `slots` consecutive times, float64 (slot, slot)."""
    lag = np.abs(np.subtract.outer(np.arange(slots), np.arange(slots)))
    return rho ** lag.astype(np.float64)


def window_normalization(norm: Normalization, slots: int) -> Normalization:
    """The normalisation of a window state (slot·channel, cell): channel `C` of slot j is `C@j`."""
    names = tuple(f"{c}@{j}" for j in range(slots) for c in norm.channels)
    return Normalization(names, np.tile(norm.center, slots), np.tile(norm.scale, slots))


@dataclass
class GaussianMarkovPrior(GaussianPrior):
    """The §4 Gaussian prior as the stationary law of an AR(1) process in time (DESIGN.md §10).

    As a single-time denoiser it is the §4 prior (its stationary covariance Σ); `window` gives
    the exact denoiser of L consecutive times, alone or given the state before them.

    Parameters (besides GaussianPrior's)
    ----------
    rho : float
        AR(1) coefficient between consecutive analysis times, 0 < ρ < 1.
    """

    rho: float = 0.5

    @classmethod
    def from_config(cls, model: KernelModelConfig, grid: GridConfig) -> "GaussianMarkovPrior":
        """Build from `model:` (kind gaussian_markov: §4's keys and `rho`); InputError for bad values."""
        base = GaussianPrior.from_config(model, grid)
        return cls(base.grid, base.normalization, base.basis, rho=float(model.rho))

    def window(self, slots: int, conditioned: bool = False) -> "MarkovWindow":
        """The exact denoiser of `slots` consecutive times; `conditioned`: given the state just
        before them (passed per batch row as condition[PREVIOUS])."""
        t = temporal_covariance(self.rho, slots)
        r = self.rho ** np.arange(1, slots + 1, dtype=np.float64)
        return MarkovWindow(self, t - np.outer(r, r) if conditioned else t, r if conditioned else None)

    def transition_noise(self, xi: torch.Tensor) -> torch.Tensor:
        """√(1 − ρ²) Σ^½ ξ for white ξ (batch, channel, cell): the AR(1) innovation, normalised."""
        return float(np.sqrt(1.0 - self.rho**2)) * self.covariance_sqrt_apply(xi)

    def covariance_sqrt_apply(self, xi: torch.Tensor) -> torch.Tensor:
        """Σ^½ ξ for ξ (batch, channel, cell) (symmetric square root, through the basis)."""
        nu = float(np.sqrt(self.basis.nugget))
        root = torch.as_tensor(np.sqrt(self.basis.eigenvalues) - nu, dtype=xi.dtype, device=xi.device)
        return nu * xi + self.basis.from_spectral(root * self.basis.to_spectral(xi))

    def sample_trajectory(self, rngs: list[np.random.Generator]) -> np.ndarray:
        """One trajectory of len(rngs) times, ξ_k drawn from rngs[k]: float64 (time, channel, cell),
        physical units (an OSSE's truth: DESIGN.md §10)."""
        shape = (len(self.normalization.channels), self.grid.npix)
        z, out = None, []
        for k, rng in enumerate(rngs):
            xi = torch.as_tensor(rng.standard_normal((1, *shape)))
            z = self.covariance_sqrt_apply(xi) if k == 0 else self.rho * z + self.transition_noise(xi)
            out.append(z[0].numpy())
        return self.normalization.denormalize(np.stack(out))


class MarkovWindow:
    """Exact denoiser of a window of L times under `GaussianMarkovPrior`: state (batch, L·C, cell).

    Covariance A ⊗ Σ (A: (L, L) SPD) around the mean r ⊗ z_p when `coefficients` r (L,) is given
    (then `condition[PREVIOUS]` holds z_p, (batch, C, cell) normalised), else around zero.
    """

    allows_autocast = False

    def __init__(self, prior: GaussianMarkovPrior, temporal: np.ndarray, coefficients: np.ndarray | None):
        self.prior = prior
        self.slots = temporal.shape[0]
        self.temporal = temporal
        self.coefficients = coefficients
        tau, v = np.linalg.eigh(temporal)
        if tau.min() <= 0:
            raise ValueError(f"temporal covariance is not positive definite (eigenvalues {tau})")
        self.tau, self.v = tau, v
        self.grid: HealpixGrid = prior.grid
        self.normalization = window_normalization(prior.normalization, self.slots)
        self.sigma_min, self.sigma_max = prior.sigma_min, prior.sigma_max
        self._consts: dict = {}

    @property
    def conditioned(self) -> bool:
        return self.coefficients is not None

    def _tensors(self, like: torch.Tensor):
        key = (like.dtype, like.device)
        if key not in self._consts:
            as_t = lambda a: torch.as_tensor(a, dtype=like.dtype, device=like.device)  # noqa: E731
            lam = np.asarray(self.prior.basis.eigenvalues, np.float64)
            r = None if self.coefficients is None else as_t(self.coefficients)
            self._consts[key] = (as_t(self.v), as_t(self.tau), as_t(lam), r)
        return self._consts[key]

    def mean(self, previous: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """r ⊗ z_p as (batch, L, C, cell)."""
        r = self._tensors(like)[3]
        return r[None, :, None, None] * previous.to(like.dtype)[:, None]

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, condition: Condition | None = None) -> torch.Tensor:
        """D(z, σ) for z (batch, L·C, cell), σ (batch,): the posterior mean of the clean window."""
        b, _, n = z.shape
        c = len(self.prior.normalization.channels)
        v, tau, lam, _ = self._tensors(z)
        w = z.reshape(b, self.slots, c, n)
        mu = None
        if self.conditioned:
            if condition is None or PREVIOUS not in condition:
                raise ValueError(f"a conditioned window needs condition[{PREVIOUS!r}] (batch, channel, cell)")
            mu = self.mean(torch.as_tensor(condition[PREVIOUS], device=z.device), z)
            w = w - mu
        # Time modes: w̃_i = Σ_j V[j, i] w_j (elementwise, so a row never depends on its companions).
        wt = _channel_mix(v.T, w.reshape(b, self.slots, c * n)).reshape(b * self.slots, c, n)
        s2 = torch.as_tensor(sigma, dtype=z.dtype, device=z.device).expand(b).reshape(b, 1, 1, 1) ** 2
        nu2 = tau.reshape(1, -1, 1, 1) * self.prior.basis.nugget
        floor = nu2 / (nu2 + s2)  # (b, L, 1, 1)
        scaled = tau.reshape(1, -1, 1, 1) * lam.reshape(1, 1, *lam.shape)  # (1, L, C, modes)
        gain = (scaled / (scaled + s2) - floor).reshape(b * self.slots, *lam.shape)
        basis = self.prior.basis
        out = floor.reshape(-1, 1, 1) * wt + basis.from_spectral(gain * basis.to_spectral(wt))
        out = _channel_mix(v, out.reshape(b, self.slots, c * n)).reshape(b, self.slots, c, n)
        if mu is not None:
            out = out + mu
        return out.reshape(b, self.slots * c, n)
