"""The forecast-model protocol: members in, members one analysis interval later out.

Batched over members, physical units in and out, (member, channel, cell) NEST. The noise of
member m's forecast from time k−1 to k comes from its own stream SeedSequence([seed, k, m, 1])
(DESIGN.md §10), so a cycled member does not depend on batch, replica or retry.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import torch

__all__ = ["ForecastModel", "forecast_generator", "FORECAST_STREAM"]

FORECAST_STREAM = 1


def forecast_generator(seed: int, t_index: int, member: int) -> torch.Generator:
    """The CPU generator of member `member`'s forecast into analysis time `t_index`."""
    state = np.random.SeedSequence([int(seed), int(t_index), int(member), FORECAST_STREAM]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class ForecastModel(Protocol):
    """Carries members to the next analysis time."""

    def forecast(self, x: np.ndarray | None, t_index: int, members: Sequence[int], seed: int) -> np.ndarray:
        """Forecast of the members' states at time t_index − 1 (`x`: float (member, channel, cell),
        physical units; None before the first time: a climatological draw) to time `t_index`:
        float32 (member, channel, cell), physical units."""
        ...
