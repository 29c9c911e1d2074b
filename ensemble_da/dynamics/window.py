"""`cycle.forecast: window`: the transition of a learned window prior (DESIGN.md §10).

A window checkpoint trained with `previous: true` is p(z_k..z_{k+L−1} | z_{k−1}); its slot 0 is
the one-step transition p(z_k | z_{k−1}). The forecast of a member's analysis x_{k−1} is slot 0 of
an unguided draw of that window (EDM sampling, the run's sampler settings); before the first
time, the last slot of an unconditioned window, a draw of the prior's climate. Member m's noise
into time k comes from its forecast stream SeedSequence([seed, k, m, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ensemble_da.config import SamplerConfig
from ensemble_da.dynamics.base import forecast_generator
from ensemble_da.errors import InputError
from ensemble_da.priors.gaussian_markov import PREVIOUS
from ensemble_da.sampling import KarrasSchedule, edm_sample

__all__ = ["WindowForecast"]


@dataclass
class WindowForecast:
    """The learned transition of `prior` (a `LearnedDenoiser` of a window checkpoint)."""

    prior: Any
    sampler: SamplerConfig

    @classmethod
    def create(cls, prior: Any, sampler: SamplerConfig) -> "WindowForecast":
        """InputError unless `prior` is a window checkpoint trained on the state before its window."""
        if getattr(prior, "window_slots", 1) < 2 or not prior.model.net.config.previous:
            raise InputError("cycle.forecast window needs model.kind checkpoint with a window checkpoint trained "
                             "with previous: true")
        return cls(prior, sampler)

    def forecast(self, x: np.ndarray | None, t_index: int, members: Sequence[int], seed: int) -> np.ndarray:
        """Members at time t_index, float32 (member, channel, cell) physical, from their states `x`
        (member, channel, cell) physical at t_index − 1 (None: a climate draw)."""
        norm, slots = self.prior.normalization, self.prior.window_slots
        window = self.prior.window(slots, conditioned=x is not None)
        schedule = KarrasSchedule.from_config(self.sampler)
        ids = [int(m) for m in members]
        out = []
        for lo in range(0, len(ids), self.sampler.batch_size):
            block = ids[lo:lo + self.sampler.batch_size]
            condition = None
            if x is not None:
                prev = norm.normalize(np.asarray(x[lo:lo + len(block)], np.float64))
                condition = {PREVIOUS: torch.as_tensor(prev, dtype=torch.float32)}
            z = edm_sample(window, [forecast_generator(seed, t_index, m) for m in block], schedule,
                           solver=self.sampler.solver, churn=self.sampler.churn, condition=condition, autocast=False)
            z = z.double().cpu().numpy().reshape(len(block), slots, len(norm.channels), -1)
            out.append(norm.denormalize(z[:, 0 if x is not None else -1]).astype(np.float32))
        return np.concatenate(out)
