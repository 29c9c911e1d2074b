"""`mode: cycle` in the science core: a filter from window priors (DESIGN.md §10).

At analysis time k the member samples the window of times k−L_k+1..k, L_k = min(L, k+1), given
the observations in it; once the window is full (k ≥ L) and `carry` is on, also given the
member's own state at time k−L, the oldest slot of the window it sampled at k−1. The analysis is
the window's last slot; its first slot is carried to the next cycle (for L = 1: the analysis).

Why this is close to the Kalman filter: the carried state is a draw of p(z_{k−L} | y_0..y_{k−1});
the exact filter would weight it by p(y_k | z_{k−L}, y_{k−L+1..k−1}), which depends on z_{k−L}
only through ρ^L. So the error decays with the window: L = 1 is the "optimal proposal" without
its weights; windows before the first full one (k < L) are exact. Without `carry` (appa's filter)
a window forgets every observation older than itself. README "Time" table (a) measures both.

A learned window prior (a window checkpoint, `LearnedDenoiser.window`) has a fixed L: a window
that would start before time 0 (k < L − 1) is sampled whole, its slots before time 0 unobserved,
which is the same law of times 0..k (the prior's marginal), and its analysis is still the last slot.

`create_generator` is the Python API (prime it, send each time's observations, receive that
time's analysis ensemble), shaped like earth2studio's `create_generator`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generator, Mapping, Sequence

import numpy as np

from ensemble_da.config import DEFAULT_CYCLE_WINDOW, GuidanceConfig, SamplerConfig, validate_tree
from ensemble_da.errors import InputError
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators import ObservationOperator, OperatorKind
from ensemble_da.priors.gaussian_markov import GaussianMarkovPrior
from ensemble_da.window import sample_window, slot_operator

__all__ = ["CycleStep", "cycle_step", "analyse_cycle", "create_generator", "is_time_prior", "fixed_window"]


@dataclass(frozen=True)
class CycleStep:
    """The window of analysis time `t_index`: the time indices of its slots (oldest first) and
    whether it is conditioned on the member's carried state (the state of time times[0] − 1)."""

    t_index: int
    times: tuple[int, ...]
    conditioned: bool


def cycle_step(t_index: int, window: int, carry: bool = True, fixed: bool = False) -> CycleStep:
    """Time `t_index`'s window for a cycle with windows of `window` slots; `fixed`: always
    `window` slots (a learned window prior), those before time 0 with negative indices."""
    if window < 1:
        raise InputError(f"cycle.window must be >= 1, got {window}")
    slots = window if fixed else min(window, t_index + 1)
    return CycleStep(t_index, tuple(range(t_index - slots + 1, t_index + 1)), carry and t_index >= window)


def fixed_window(prior: object) -> bool:
    """Whether the prior's windows have one length only (a learned window prior)."""
    return getattr(prior, "window_slots", 1) > 1


def is_time_prior(prior: object) -> bool:
    """Whether `prior` is a prior over time windows: `gaussian_markov`, or a window checkpoint."""
    return isinstance(prior, GaussianMarkovPrior) or fixed_window(prior)


def analyse_cycle(
    prior: GaussianMarkovPrior,
    step: CycleStep,
    operators: Mapping[int, ObservationOperator | None],
    members: Sequence[int],
    seed: int,
    sampler: SamplerConfig,
    guidance: GuidanceConfig,
    carried: np.ndarray | None = None,
    diagnostics: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One cycle for a member block: (analysis, carried), float32 (member, channel, cell) physical.

    operators[t] : H of time t's assimilated observations (normalised), for every t in the window.
    carried : the members' carried states (physical), needed when `step.conditioned`.
    """
    if step.conditioned and carried is None:
        raise ValueError(f"time {step.t_index}: the window is conditioned but no carried state was given")
    if fixed_window(prior) and len(step.times) < prior.window_slots:
        step = cycle_step(step.t_index, prior.window_slots, step.conditioned, fixed=True)
    window = prior.window(len(step.times), conditioned=step.conditioned)
    op = slot_operator([operators.get(t) for t in step.times])
    x = sample_window(window, op, members, seed, step.t_index, sampler, guidance,
                      carried if step.conditioned else None, diagnostics)
    return x[:, -1], x[:, 0]


def create_generator(
    prior: GaussianMarkovPrior,
    members: int | Sequence[int] = 16,
    seed: int = 0,
    *,
    window: int = DEFAULT_CYCLE_WINDOW,
    carry: bool = True,
    sampler: SamplerConfig | Mapping | None = None,
    guidance: GuidanceConfig | Mapping | None = None,
    operator: OperatorKind = "bilinear",
) -> Generator[np.ndarray | None, ObservationSet | ObservationOperator | None, None]:
    """A cycled ensemble analysis, one time per `send` (DESIGN.md §10, `mode: cycle`).

    Prime it with `next(gen)`, then `gen.send(obs)` with each analysis time's observations, in
    time order (an `ObservationSet` in physical units, an `ObservationOperator` in normalised
    units, or None for a time without observations); each send returns that time's analysis
    ensemble, float32 (member, channel, cell), physical units. Member m of time k draws from
    SeedSequence([seed, k, m]), as a `mode: cycle` run does, so both give the same members.

    Raises InputError for bad settings; DivergenceError (one line) when sampling diverges.
    """
    ids = list(range(members)) if isinstance(members, (int, np.integer)) else [int(m) for m in members]
    if not ids:
        raise InputError("members: need at least one member")
    if not is_time_prior(prior):
        raise InputError(f"create_generator needs a prior over time windows (GaussianMarkovPrior or a window "
                         f"checkpoint), got {type(prior).__name__}")
    sampler = sampler if isinstance(sampler, SamplerConfig) else validate_tree(SamplerConfig, dict(sampler or {}), "sampler")
    guidance = guidance if isinstance(guidance, GuidanceConfig) else validate_tree(
        GuidanceConfig, dict(guidance or {}), "guidance")
    ops: dict[int, ObservationOperator | None] = {}
    carried = None
    analysis = None
    k = 0
    while True:
        obs = yield analysis
        if isinstance(obs, ObservationSet):
            obs = ObservationOperator.build(obs.assimilated_only(), prior.grid, prior.normalization, operator)
        ops[k] = obs
        step = cycle_step(k, window, carry)
        analysis, carried = analyse_cycle(prior, step, ops, ids, seed, sampler, guidance, carried)
        ops.pop(k - window + 1, None)  # the next window starts after it
        k += 1
