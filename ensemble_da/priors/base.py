"""The denoiser protocol every prior implements (EDM, Karras et al. 2022).

D(z, σ, condition) ≈ E[z₀ | z₀ + σ·ε = z] on normalised states with shape (batch, channel, cell),
σ with shape (batch,). A guided denoiser wraps a denoiser and is one (see `ensemble_da.guidance`).
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np
import torch

from ensemble_da.channels import Normalization
from ensemble_da.grid import HealpixGrid

__all__ = ["Denoiser", "Condition", "time_condition", "allows_autocast"]

# Optional per-batch conditioning, e.g. {"day_of_year": (batch,), "second_of_day": (batch,)}.
Condition = Mapping[str, Any]


def time_condition(time: np.datetime64) -> dict[str, float]:
    """The conditioning of an analysis time (UTC): day of year (1 = Jan 1, 00 UTC) and second of day."""
    t = np.datetime64(time, "s")
    day = (t - t.astype("datetime64[Y]").astype("datetime64[s]")).astype(np.float64) / 86400.0 + 1.0
    second = (t - t.astype("datetime64[D]").astype("datetime64[s]")).astype(np.float64)
    return {"day_of_year": float(day), "second_of_day": float(second)}


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
    allows_autocast : bool, optional (default True when absent)
        Whether the forward may run under bf16 autocast on CUDA. An exact prior (Gaussian) says
        False: its closed form is the reference the sampler is checked against, and bf16
        (8 bits of mantissa) would bias it. Read it with `allows_autocast(prior)`.
    """

    grid: HealpixGrid
    normalization: Normalization
    sigma_min: float
    sigma_max: float

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, condition: Condition | None = None) -> torch.Tensor:
        """Denoised estimate with the shape of `z` (batch, channel, cell); σ has shape (batch,)."""
        ...


def allows_autocast(prior: object) -> bool:
    """The prior's `allows_autocast` flag (True for priors that do not say)."""
    return bool(getattr(prior, "allows_autocast", True))
