"""What a run assimilates: one ObservationSet per analysis time, and the truth when known.

`prepare_inputs` turns the `observations:` section of a run config into `RunInputs`. For
`source: synthetic` (an OSSE) the truth of time t is drawn from the prior with the stream
SeedSequence([seed, t, TRUTH_STREAM]), distinct from every member's stream (DESIGN.md §3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ensemble_da.config import RunConfig
from ensemble_da.errors import InputError
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.synthetic import observe_truth, random_locations
from ensemble_da.priors.base import Denoiser

__all__ = ["RunInputs", "prepare_inputs", "TRUTH_STREAM"]

TRUTH_STREAM = 2**31 - 1


@dataclass
class RunInputs:
    """times (time,) datetime64[ns]; observations, one set per time; truth (time, channel, cell)
    float32 in physical units, or None when the truth is unknown."""

    times: np.ndarray
    observations: list[ObservationSet]
    truth: np.ndarray | None = None


def truth_rng(config: RunConfig, t_index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([config.seed, t_index, TRUTH_STREAM]))


def prepare_inputs(config: RunConfig, prior: Denoiser) -> RunInputs:
    """Observation sets (and truth, for an OSSE) for every analysis time of `config`."""
    src = config.observations.source
    if src != "synthetic":
        raise InputError(f"observations.source {src!r} is not available in this build")
    if not hasattr(prior, "sample_truth"):
        raise InputError(f"observations.source synthetic needs a prior that draws truths; {config.model.kind!r} does not")
    prior.normalization.index(config.observations.channels)
    times = config.analysis_times()
    truths, sets = [], []
    for t, time in enumerate(times):
        rng = truth_rng(config, t)
        truth = prior.sample_truth(rng)[0]
        lat, lon = random_locations(config.observations.num_obs, rng)
        sets.append(observe_truth(truth, time, lat, lon, prior.grid, prior.normalization, config.observations, rng))
        truths.append(truth.astype(np.float32))
    return RunInputs(times, sets, np.stack(truths))
