"""Truths for OSSEs: one draw from the prior per analysis time (DESIGN.md §3, §5).

The caller above priors and observations (the run, the `osse` command) draws the truths and hands
them to the observation readers (`obs.inputs.prepare_inputs`, `obs.osse.write_osse_dir`), so a
prior knows nothing of observations and a reader nothing of priors. A prior with a closed form
(`sample_truth`) is sampled with the numpy stream SeedSequence([seed, t, TRUTH_STREAM]).
"""

from __future__ import annotations

import numpy as np

from ensemble_da.config import RunConfig
from ensemble_da.errors import InputError
from ensemble_da.obs.synthetic import truth_rng
from ensemble_da.priors.base import Denoiser

__all__ = ["draw_truths", "osse_truths"]


def draw_truths(prior: Denoiser, config: RunConfig) -> np.ndarray:
    """One truth per analysis time of `config`: float32 (time, channel, cell), physical units."""
    if not hasattr(prior, "sample_truth"):
        raise InputError(f"an OSSE needs a prior that draws truths; model.kind {config.model.kind!r} does not")
    return np.stack([prior.sample_truth(truth_rng(config.seed, t))[0] for t in range(len(config.times))]).astype(np.float32)


def osse_truths(prior: Denoiser, config: RunConfig) -> np.ndarray | None:
    """The truths a run's inputs need: drawn when `observations.source` is synthetic, else None."""
    return draw_truths(prior, config) if config.observations.source == "synthetic" else None
