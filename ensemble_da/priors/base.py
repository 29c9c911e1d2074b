"""The denoiser protocol every prior implements (EDM, Karras et al. 2022).

D(z, σ, condition) ≈ E[z₀ | z₀ + σ·ε = z] on normalised states with shape (batch, channel, cell),
σ with shape (batch,). A guided denoiser wraps a denoiser and is one (see `ensemble_da.guidance`).
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable

import torch

from ensemble_da.channels import Normalization
from ensemble_da.grid import HealpixGrid

__all__ = ["Denoiser", "Condition"]

# Optional per-batch conditioning, e.g. {"day_of_year": (batch,), "second_of_day": (batch,)}.
Condition = Mapping[str, Any]


@runtime_checkable
class Denoiser(Protocol):
    """EDM denoiser on a HEALPix NEST grid in normalised units.

    Attributes
    ----------
    grid : HealpixGrid
    normalization : Normalization
        Channel names and per-channel center/scale (physical ↔ normalised).
    sigma_min, sigma_max : float
        The noise range the denoiser was built or trained for.
    """

    grid: HealpixGrid
    normalization: Normalization
    sigma_min: float
    sigma_max: float

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, condition: Condition | None = None) -> torch.Tensor:
        """Denoised estimate with the shape of `z` (batch, channel, cell); σ has shape (batch,)."""
        ...
