"""H of a run's observation sets: each set read by its own operator, one stacked operator (DESIGN.md §5).

A run's `observations:` is one set or a list of named sets, each with its own `operator:`. An
`ObservationSet` carries each observation's set (`set_name`), the sets contiguous and in config
order; `build_operator` builds each set's operator on its rows and stacks them in that order: an
`ObservationOperator` (rows concatenated) when every kind is linear, else a `StackedOperator`
with the protocol of `base.Operator` (no matrix: closed-form posteriors refuse it).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ensemble_da.channels import Normalization
from ensemble_da.config import ObservationsConfig
from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators.base import Linearization, Operator
from ensemble_da.obs.operators.linear import ObservationOperator
from ensemble_da.obs.operators.nonlinear import NonlinearOperatorError

__all__ = ["build_operator", "StackedOperator"]


def build_operator(obs: ObservationSet, grid: HealpixGrid, normalization: Normalization,
                   sets: ObservationsConfig | Sequence[ObservationsConfig]):
    """H of `obs` (all of its rows: filter with `obs.assimilated_only()` first), each set's rows
    read by its own `operator:` (`ObservationOperator.build`), stacked in row order."""
    sets = [sets] if isinstance(sets, ObservationsConfig) else list(sets)
    parts = [ObservationOperator.build(obs.subset(rows), grid, normalization, sets[i].operator)
             for i, rows in obs.set_rows([s.name for s in sets])]
    if len(parts) == 1:
        return parts[0]
    if all(p.linear for p in parts):
        return ObservationOperator.concatenate(parts)
    return StackedOperator(parts)


class StackedOperator:
    """Operators of consecutive row blocks, as one (`base.Operator`); nonlinear when any part is."""

    linear = False
    kind = "stacked"

    def __init__(self, parts: Sequence[Operator]):
        self.parts = list(parts)
        self.y = np.concatenate([p.y for p in self.parts])
        self.sigma = np.concatenate([p.sigma for p in self.parts])
        self.n_channels, self.npix = self.parts[0].n_channels, self.parts[0].npix
        self._bounds = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return len(self.y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p.forward(x) for p in self.parts], dim=-1)

    __call__ = forward

    def linearize(self, x: torch.Tensor) -> Linearization:
        lins = [p.linearize(x) for p in self.parts]
        bounds = self._bounds

        def jvp(u: torch.Tensor) -> torch.Tensor:
            return torch.cat([lin.jvp(u) for lin in lins], dim=-1)

        def vjp(v: torch.Tensor) -> torch.Tensor:
            return sum(lin.vjp(v[..., bounds[i]:bounds[i + 1]]) for i, lin in enumerate(lins))

        return Linearization(torch.cat([lin.value for lin in lins], dim=-1), jvp, vjp)

    def apply_numpy(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([p.apply_numpy(x) for p in self.parts], axis=-1)

    def observe(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([p.observe(x) for p in self.parts], axis=-1)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise TypeError("these observation sets include a nonlinear operator: no adjoint; use linearize(x).vjp")

    def matrix(self):
        raise NonlinearOperatorError(
            "the observation sets include a nonlinear operator: there is no matrix (closed-form posteriors, the Kalman "
            "filter and smoother need linear operators: nearest, bilinear, column or footprint)")
