"""What guidance, statistics and references rely on in an observation operator (DESIGN.md §5, §6).

An operator h of one observation set maps the normalised state z (…, channel, cell) to its
observations in normalised units (…, obs), with y and sigma (obs,) in those units: the
likelihood is y = h(z) + e, e ~ N(0, diag(sigma²)). Every kind implements `Operator`:

- linear kinds (`ObservationOperator`: nearest, bilinear, column, footprint) are sparse rows
  with an explicit adjoint Hᵀ and a matrix for closed-form posteriors;
- nonlinear kinds (`NonlinearOperator`: wind_speed, python plug-ins) are torch functions whose
  derivatives come from autograd: `linearize(x)` gives J_h at x for guidance that needs it.

h acts on each member alone (row b of the output depends on row b of the input only), so a
batched VJP or JVP is a per-member one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = ["Operator", "Linearization"]


@dataclass(frozen=True)
class Linearization:
    """h linearised at a state x (…, channel, cell).

    value : Tensor (…, obs), h(x).
    jvp : u (…, channel, cell) ↦ J_h(x) u (…, obs).
    vjp : v (…, obs) ↦ J_h(x)ᵀ v (…, channel, cell).
    For a linear h, jvp is h itself and vjp its adjoint.
    """

    value: torch.Tensor
    jvp: Callable[[torch.Tensor], torch.Tensor]
    vjp: Callable[[torch.Tensor], torch.Tensor]


@runtime_checkable
class Operator(Protocol):
    """The observation operator protocol (module docstring).

    y, sigma : float64 (obs,) observations and error std, normalised units.
    n_channels, npix : the state shape (channel, cell).
    linear : whether h is linear (then `matrix()` and `adjoint` exist).
    """

    y: np.ndarray
    sigma: np.ndarray
    n_channels: int
    npix: int
    linear: bool

    def __len__(self) -> int: ...

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """h(x): (…, channel, cell) → (…, obs), normalised units, differentiable."""
        ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def linearize(self, x: torch.Tensor) -> Linearization:
        """h, J_h and J_hᵀ at x (…, channel, cell)."""
        ...

    def apply_numpy(self, x: np.ndarray) -> np.ndarray:
        """h(x) for float64 numpy (batch, channel, cell) → (batch, obs), normalised units."""
        ...

    def observe(self, x: np.ndarray) -> np.ndarray:
        """The observations of physical fields (batch, channel, cell) → (batch, obs), physical units."""
        ...
