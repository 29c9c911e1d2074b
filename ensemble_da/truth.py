"""Truths for self-consistency OSSEs: one draw from the prior per analysis time (DESIGN.md §3, §5).

A prior with a closed form (`sample_truth`: the Gaussian priors) is sampled exactly with the
numpy stream SeedSequence([seed, t, TRUTH_STREAM]); any other prior (a learned denoiser, an
adapter) by `sample_posterior` without observations, i.e. unguided EDM sampling with the sampler
of the run config (bf16 only where the prior allows it, a divergence restated with a fix) as
member TRUTH_STREAM: the torch stream of the same SeedSequence, never a member's stream,
conditioned on the analysis time. With the truth drawn from the prior itself, a correct
posterior sampler is calibrated (SSR ≈ 1, flat rank histogram) whatever the prior's quality.

A window checkpoint (a learned prior over L consecutive times) gives one trajectory of windows
(`draw_window_truths`): the first L times unconditioned, then each next L times given the last
state before them (when the checkpoint was trained with `previous`), window j drawn as member
TRUTH_STREAM with t_index its first time.
"""

from __future__ import annotations

import numpy as np

from ensemble_da.config import RunConfig
from ensemble_da.errors import InputError
from ensemble_da.obs.synthetic import TRUTH_STREAM, truth_rng
from ensemble_da.posterior import sample_posterior
from ensemble_da.priors.base import Denoiser, time_condition

__all__ = ["draw_truths", "draw_truth", "draw_window_truths", "osse_truths"]


def draw_truth(prior: Denoiser, config: RunConfig, t_index: int) -> np.ndarray:
    """The truth of analysis time `t_index`: float64 (channel, cell) in physical units.

    A sampled (not closed-form) truth is `sample_posterior`'s float32 draw, widened."""
    if hasattr(prior, "sample_truth"):
        draws = np.asarray(prior.sample_truth(truth_rng(config.seed, t_index), 1), np.float64)
        expected = (1, len(prior.normalization.channels), prior.grid.npix)
        if draws.shape != expected:
            raise InputError(f"model sample_truth(rng, 1) returned shape {draws.shape}, expected {expected} (n, channel, cell)")
        return draws[0]
    analyses = sample_posterior(
        prior,
        None,
        [TRUTH_STREAM],
        config.seed,
        sampler=config.sampler,
        guidance="none",
        condition=time_condition(config.analysis_times()[t_index]),
        t_index=t_index,
        check_inputs=False,  # the prior's checks ran when it was loaded; a bad draw is a divergence line
    )
    return analyses[0].astype(np.float64)


def draw_truths(prior: Denoiser, config: RunConfig) -> np.ndarray:
    """One truth per analysis time of `config`: float32 (time, channel, cell), physical units; a
    prior in time (`sample_trajectory`, gaussian_markov) gives ONE trajectory (DESIGN.md §10),
    its innovation at time t from the stream of time t."""
    if getattr(prior, "window_slots", 1) > 1:
        return draw_window_truths(prior, config)
    if hasattr(prior, "sample_trajectory"):
        rngs = [truth_rng(config.seed, t) for t in range(len(config.times))]
        return np.asarray(prior.sample_trajectory(rngs), np.float64).astype(np.float32)
    return np.stack([draw_truth(prior, config, t) for t in range(len(config.times))]).astype(np.float32)


def draw_window_truths(prior, config: RunConfig) -> np.ndarray:
    """One truth trajectory from a window checkpoint (module docstring): float32 (time, channel,
    cell), physical units."""
    from ensemble_da.config import GuidanceConfig
    from ensemble_da.window import sample_window

    slots, times = prior.window_slots, len(config.times)
    chained = bool(prior.model.net.config.previous)
    out: list[np.ndarray] = []
    for start in range(0, times, slots):
        previous = out[-1][None] if chained and out else None
        x = sample_window(prior.window(slots, conditioned=previous is not None), None, [TRUTH_STREAM], config.seed,
                          start, config.sampler, GuidanceConfig(method="none"), previous)
        out.extend(x[0, :min(slots, times - start)])
    return np.stack(out).astype(np.float32)


def osse_truths(prior: Denoiser, config: RunConfig) -> np.ndarray | None:
    """The truths a run's inputs need (the caller above priors and readers draws them, DESIGN.md
    §2): drawn when `observations.source` is synthetic, else None."""
    return draw_truths(prior, config) if config.observation_sets()[0].source == "synthetic" else None
