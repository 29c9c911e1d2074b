"""A user's own denoiser, as a plug-in (`model.kind: python`, `factory: plugin_denoiser:white_noise`).

The prior: every normalised value i.i.d. N(0, 1), so D(z, σ) = E[x | x + σ ε = z] = z / (1 + σ²),
and the posterior of a cell observed directly with error s is N(y / (1 + s²), s² / (1 + s²)).
"""

from __future__ import annotations

import numpy as np
import torch

from ensemble_da.channels import Normalization
from ensemble_da.grid import HealpixGrid


class WhiteNoisePrior:
    def __init__(self, nside: int, channels: list[str], center: list[float], scale: list[float]):
        self.grid = HealpixGrid(nside)
        self.normalization = Normalization(tuple(channels), center, scale)
        self.sigma_min = 0.002
        self.sigma_max = 80.0

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, condition=None) -> torch.Tensor:
        return z / (1.0 + sigma.reshape(-1, 1, 1).to(z.dtype) ** 2)

    def sample_truth(self, rng: np.random.Generator, n: int = 1) -> np.ndarray:
        """Optional: draws from the prior (physical units, (n, channel, cell)) make OSSEs possible."""
        return self.normalization.denormalize(rng.standard_normal((n, len(self.normalization.channels), self.grid.npix)))


def white_noise(nside: int = 4, channels=("T850", "T500"), center=(275.0, 255.0), scale=(6.0, 5.0)) -> WhiteNoisePrior:
    return WhiteNoisePrior(nside, list(channels), list(center), list(scale))


def wrong_shape(nside: int = 4):
    den = white_noise(nside)
    den.__class__ = type("Flat", (WhiteNoisePrior,), {"__call__": lambda self, z, s, c=None: z.reshape(z.shape[0], -1)})
    return den


def nan_output(nside: int = 4):
    den = white_noise(nside)
    den.__class__ = type("NaN", (WhiteNoisePrior,), {"__call__": lambda self, z, s, c=None: z * float("nan")})
    return den


def fails(nside: int = 4):
    raise RuntimeError("weights not found on this node")
