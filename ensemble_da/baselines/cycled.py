"""Cycled classical filters: EnKF and LETKF with a forecast model in the loop (DESIGN.md §10).

At time k each member is forecast from its own analysis of k − 1 (`ForecastModel`, the member's
own noise stream), and the background ensemble is updated by one `letkf` or `stochastic_enkf`
step with time k's observations. This is the cycled EnKF/LETKF of operational centres
(Miyoshi 2005's SPEEDY-LETKF is the field's test bed), run on the same forecast model and the
same observations as `mode: cycle`, so the two are compared cycle by cycle. With the Gaussian
Markov prior, its `markov` forecast and no localisation, a large ensemble tends to the Kalman
filter (`ensemble_da.kalman`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from ensemble_da.baselines.enkf import stochastic_enkf
from ensemble_da.baselines.letkf import letkf
from ensemble_da.dynamics.base import ForecastModel
from ensemble_da.grid import HealpixGrid
from ensemble_da.channels import Normalization
from ensemble_da.obs.operators import ObservationOperator

__all__ = ["EnsembleFilter", "CycledEnsemble", "cycle_ensemble_filter", "PERTURBATION_STREAM"]

# The EnKF's observation perturbations at time k draw from SeedSequence([seed, k, 0, 2]): a stream
# of its own, apart from the members' analysis ([seed, k, m]) and forecast ([seed, k, m, 1]) streams.
PERTURBATION_STREAM = 2


@dataclass(frozen=True)
class EnsembleFilter:
    """One analysis step of a classical ensemble filter.

    method: `letkf` (deterministic square root, Hunt et al. 2007) or `enkf` (perturbed
    observations, Burgers et al. 1998). localization_km: Gaspari–Cohn half-width (km), None for
    a global update (then `grid` is not needed). inflation: multiplicative, ≥ 1.
    """

    method: Literal["letkf", "enkf"] = "letkf"
    localization_km: float | None = None
    inflation: float = 1.0
    grid: HealpixGrid | None = None

    def __post_init__(self) -> None:
        if self.method not in ("letkf", "enkf"):
            raise ValueError(f"method must be letkf or enkf, got {self.method!r}")
        if not self.inflation >= 1.0:
            raise ValueError(f"inflation must be >= 1, got {self.inflation}")
        if self.localization_km is not None and self.grid is None:
            raise ValueError("localization_km needs the grid")

    def analyse(self, background: np.ndarray, op: ObservationOperator, lat: np.ndarray | None,
                lon: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        """Analysis ensemble float64 (member, channel, cell), normalised, from `background` (same)."""
        if self.method == "letkf":
            return letkf(background, op, lat, lon, self.grid, self.localization_km, self.inflation)
        return stochastic_enkf(background, op, rng, lat, lon, self.grid, self.localization_km, self.inflation)


@dataclass
class CycledEnsemble:
    """A cycled filter's ensembles, each float32 (time, member, channel, cell), physical units."""

    background: np.ndarray
    analysis: np.ndarray


def cycle_ensemble_filter(
    forecast: ForecastModel,
    normalization: Normalization,
    operators: Sequence[ObservationOperator | None],
    members: int,
    seed: int,
    step: EnsembleFilter,
    locations: Sequence[tuple[np.ndarray, np.ndarray] | None] | None = None,
) -> CycledEnsemble:
    """Cycle `step` through the times of `operators` (time k's H, y, sigma, normalised; None: no
    observations, the background is the analysis).

    Member m's background at time k is `forecast` of its analysis at k − 1 (at k = 0 the
    forecast model's climatological draw), with the noise of its own stream (seed, k, m).
    `locations[k]`: the (lat, lon) degrees of time k's observations, needed with localisation.
    """
    if members < 2:
        raise ValueError(f"an ensemble filter needs at least 2 members, got {members}")
    ids = list(range(members))
    backgrounds, analyses, previous = [], [], None
    for k, op in enumerate(operators):
        xb = forecast.forecast(previous, k, ids, seed)
        if op is None or len(op) == 0:
            xa = xb
        else:
            lat, lon = (None, None) if locations is None or locations[k] is None else locations[k]
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), k, 0, PERTURBATION_STREAM]))
            za = step.analyse(normalization.normalize(np.asarray(xb, np.float64)), op, lat, lon, rng)
            xa = normalization.denormalize(za).astype(np.float32)
        backgrounds.append(xb)
        analyses.append(xa)
        previous = xa
    return CycledEnsemble(np.stack(backgrounds), np.stack(analyses))
