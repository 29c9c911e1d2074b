"""`mode: reanalysis` in the science core: trajectories from a window prior (DESIGN.md §10).

Every member is one trajectory through all K analysis times, drawn from p(z_0..z_K−1 | y_0..y_K−1)
by guided EDM sampling of the whole trajectory (state (member, time·channel, cell), observations
at their slot). The trajectory's denoiser:

- window L = K (default): the prior's own denoiser of all K times (for `gaussian_markov`: exact,
  T_K ⊗ Σ), so the reanalysis is exact up to the sampler's discretisation;
- window L < K: SDA's composition (Rozet & Louppe 2023): slot k is denoised by the L-slot window
  around it, starting at clamp(k − ⌊(L−1)/2⌋, 0, K − L). Each state then sees only its window's
  part of the trajectory in the prior score, and is tied to the rest through overlapping windows
  (a Markov chain's score ∇ log p(z) is local in time, which the composition keeps); for the
  Gaussian Markov prior its error against the RTS smoother is measured in README "Time" (b).
  We compose scores (denoisers) rather than stitch overlapping windows after sampling because a
  stitched trajectory is not one draw: members would jump where windows meet.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ensemble_da.config import GuidanceConfig, SamplerConfig
from ensemble_da.errors import InputError
from ensemble_da.obs.operators import ObservationOperator
from ensemble_da.priors.base import Condition
from ensemble_da.priors.gaussian_markov import GaussianMarkovPrior, window_normalization
from ensemble_da.window import sample_window, slot_operator

__all__ = ["ComposedWindows", "trajectory_denoiser", "sample_trajectories", "window_starts"]


def window_starts(times: int, window: int) -> np.ndarray:
    """For each slot k of a trajectory of `times` slots, the start of the L-slot window that denoises it."""
    return np.clip(np.arange(times) - (window - 1) // 2, 0, times - window)


class ComposedWindows:
    """A denoiser over a trajectory of `times` slots built from an L-slot window denoiser (SDA):
    (batch, times·C, cell) → the same shape; slot k from the window at `window_starts(...)[k]`."""

    allows_autocast = False

    def __init__(self, window, times: int):
        self.window, self.slots = window, times
        self.prior = window.prior
        self.grid = window.grid
        self.normalization = window_normalization(self.prior.normalization, times)
        self.sigma_min, self.sigma_max = window.sigma_min, window.sigma_max
        self.starts = window_starts(times, window.slots)

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, condition: Condition | None = None) -> torch.Tensor:
        b, _, n = z.shape
        length = self.window.slots
        zs = z.reshape(b, self.slots, -1, n)
        denoised = {int(s): self.window(zs[:, s:s + length].reshape(b, -1, n), sigma, condition).reshape(
            b, length, -1, n) for s in np.unique(self.starts)}
        out = torch.stack([denoised[int(s)][:, k - int(s)] for k, s in enumerate(self.starts)], dim=1)
        return out.reshape(b, -1, n)


def trajectory_denoiser(prior: GaussianMarkovPrior, times: int, window: int | None = None):
    """The denoiser of a `times`-slot trajectory: the prior's own (window None or ≥ times), else
    SDA-composed L-slot windows."""
    if window is None or window >= times:
        return prior.window(times)
    if window < 1:
        raise InputError(f"cycle.window must be >= 1, got {window}")
    return ComposedWindows(prior.window(window), times)


def sample_trajectories(
    prior: GaussianMarkovPrior,
    operators: Sequence[ObservationOperator | None],
    members: Sequence[int],
    seed: int,
    sampler: SamplerConfig,
    guidance: GuidanceConfig,
    window: int | None = None,
    diagnostics: dict[str, float] | None = None,
) -> np.ndarray:
    """Reanalysis members, float32 (member, time, channel, cell), physical units; member m is one
    trajectory drawn from SeedSequence([seed, 0, m]). `operators[k]`: H of time k (normalised)."""
    den = trajectory_denoiser(prior, len(operators), window)
    return sample_window(den, slot_operator(list(operators)), members, seed, 0, sampler, guidance,
                         diagnostics=diagnostics)
