"""Truths for self-consistency OSSEs: one draw from the prior per analysis time (DESIGN.md §3, §5).

A prior with a closed form (`sample_truth`: the Gaussian priors) is sampled exactly with the
numpy stream SeedSequence([seed, t, TRUTH_STREAM]); any other prior (a learned denoiser, an
adapter) by unguided EDM sampling with the sampler of the run config and the torch stream of
the same SeedSequence (`member_generator(seed, t, TRUTH_STREAM)`, never a member's stream),
conditioned on the analysis time. With the truth drawn from the prior itself, a correct
posterior sampler is calibrated (SSR ≈ 1, flat rank histogram) whatever the prior's quality.
"""

from __future__ import annotations

import numpy as np
import torch

from ensemble_da.config import RunConfig
from ensemble_da.errors import InputError
from ensemble_da.obs.synthetic import TRUTH_STREAM, truth_rng
from ensemble_da.priors.base import Denoiser, time_condition
from ensemble_da.sampling import KarrasSchedule, edm_sample, member_generator

__all__ = ["draw_truths", "draw_truth", "osse_truths"]


def draw_truth(prior: Denoiser, config: RunConfig, t_index: int) -> np.ndarray:
    """The truth of analysis time `t_index`: float64 (channel, cell) in physical units."""
    if hasattr(prior, "sample_truth"):
        draws = np.asarray(prior.sample_truth(truth_rng(config.seed, t_index), 1), np.float64)
        expected = (1, len(prior.normalization.channels), prior.grid.npix)
        if draws.shape != expected:
            raise InputError(f"model sample_truth(rng, 1) returned shape {draws.shape}, expected {expected} (n, channel, cell)")
        return draws[0]
    device = getattr(prior, "device", torch.device("cpu"))
    z = edm_sample(
        prior,
        [member_generator(config.seed, t_index, TRUTH_STREAM)],
        KarrasSchedule.from_config(config.sampler),
        solver=config.sampler.solver,
        churn=config.sampler.churn,
        condition=time_condition(config.analysis_times()[t_index]),
        device=device,
        autocast=config.sampler.autocast == "bf16",
    )
    return prior.normalization.denormalize(z[0].double().cpu().numpy())


def draw_truths(prior: Denoiser, config: RunConfig) -> np.ndarray:
    """One truth per analysis time of `config`: float32 (time, channel, cell), physical units."""
    return np.stack([draw_truth(prior, config, t) for t in range(len(config.times))]).astype(np.float32)


def osse_truths(prior: Denoiser, config: RunConfig) -> np.ndarray | None:
    """The truths a run's inputs need (the caller above priors and readers draws them, DESIGN.md
    §2): drawn when `observations.source` is synthetic, else None."""
    return draw_truths(prior, config) if config.observations.source == "synthetic" else None
