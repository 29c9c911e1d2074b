"""The time-aware runs on an executor (DESIGN.md §10): `mode: cycle` and `mode: reanalysis`.

- cycle: the times in sequence. Time t is two passes over its member blocks: the background (each
  replica forecasts its members' analyses of t − 1, read from the store, `cycle.forecast`), reduced
  here to the background moments and its values at the observations, which screen the time's
  observations (first-guess check, `diagnostics.qc_sigma_k`); then the analysis (each replica
  samples its members' windows given the observations that passed, back to the window's first
  time, and the members' carried states, read from the store, and writes the block). The exact
  reference, the Kalman filter, takes each time's screened observations as it comes. A resumed
  run draws every background again but samples only the blocks missing from the store.
- reanalysis: one pass; a unit samples whole trajectories of a member block and writes every
  time; the aggregators then read the blocks back for each time's statistics.

Members never pass through the driver: replicas read and write them in the store.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ensemble_da.assimilation import CycleInputs, TrajectoryInputs, WorkUnit
from ensemble_da.config import RunConfig
from ensemble_da.cycling import cycle_step
from ensemble_da.diagnostics import Background
from ensemble_da.exact import ExactPosteriorTooLarge
from ensemble_da.io import RunStore, unit_blocks
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators import build_operator
from ensemble_da.stats import OrderedReduction

from actors.aggregator import TimeInputs

__all__ = ["CycleOutcome", "run_cycle", "run_cycle_flow", "run_reanalysis", "reanalysis_units", "BACKGROUND_FIELDS", "EXACT_FIELDS"]

# The (time, channel, cell) variables a cycle writes time by time.
BACKGROUND_FIELDS = ("background_mean", "background_spread", "increment")
EXACT_FIELDS = ("exact_mean", "exact_spread")


@dataclass
class CycleOutcome:
    """What a cycled run hands to its end besides what it wrote into the store time by time
    (background and exact fields): the observations each time kept."""

    observations: list[ObservationSet]


def _kalman_filter(prior):
    """The exact reference of a cycle (`ensemble_da.kalman`), or None (no Gaussian Markov prior,
    or too large for this machine: a warning, the run goes on)."""
    from ensemble_da.kalman import KalmanFilter
    from ensemble_da.priors.gaussian_markov import GaussianMarkovPrior

    if not isinstance(prior, GaussianMarkovPrior):
        return None
    try:
        return KalmanFilter(prior)
    except ExactPosteriorTooLarge as exc:
        print(f"warning: {exc}; the run continues without exact_mean/exact_spread and exact_* metrics",
              file=sys.stderr)
        return None


def _exact_step(kf, prior, obs: ObservationSet, sets, store: RunStore | None, t: int):
    """The Kalman filter's step at time t on `obs`' assimilated observations: (mean, spread)
    physical (channel, cell), written into `store`."""
    mean, var = kf.step(build_operator(obs.assimilated_only(), prior.grid, prior.normalization, sets))
    exact = (prior.normalization.denormalize(mean), prior.normalization.scale[:, None] * np.sqrt(var))
    if store is not None:
        store.write_time_fields(t, dict(zip(EXACT_FIELDS, exact)))
    return exact


def _write_background_fields(store: RunStore | None, t: int, moments) -> None:
    """Time t's background mean, spread and increment (its analysis mean, reduced, minus the background's)."""
    if store is not None:
        analysis_mean = store.group["ensemble_mean"][t]
        store.write_time_fields(t, {"background_mean": moments.mean, "background_spread": moments.spread(),
                                    "increment": analysis_mean - moments.mean})


def run_cycle(config: RunConfig, prior, observations: Sequence[ObservationSet], truth: np.ndarray | None,
              executor, aggregation, background: Background, on_result: Callable[[Any, Any], None],
              on_progress: Callable[[Any], None] | None = None, store: RunStore | None = None,
              done: np.ndarray | None = None) -> CycleOutcome:
    """Every time of a cycled run in order (module docstring), each time's background QC and
    its fit at the observations appended to `background` before its analysis; returns the run's
    `CycleOutcome`.

    Each time's `background_mean`, `background_spread`, `increment` (and with the Kalman filter
    `exact_mean`, `exact_spread`) go into `store` as the time finishes, and a finished time's
    background fit keeps only its mean and spread at the observations, so the driver holds no
    field, and no member value, per time: its memory does not grow with the number of cycles
    (benchmarks/cycle_memory.py).

    `done`: bool (time, member), the pairs already in the store (a resumed run). Their blocks are
    not sampled again but read back for the time's statistics; every time's background is still
    drawn (from the analyses of the time before, in the store), so each time screens and
    assimilates the same observations, and the Kalman filter takes the same steps, as in the run
    that was interrupted. A missing block's carried state is read from the store as always."""
    blocks = unit_blocks(config.ensemble.members, config.cluster.members_per_unit)
    if done is None:
        done = np.zeros((len(observations), config.ensemble.members), dtype=bool)
    sets = config.observation_sets()
    window = config.window_length()
    kf = _kalman_filter(prior) if config.diagnostics.exact else None
    if store is not None:
        store.add_time_fields(BACKGROUND_FIELDS + (EXACT_FIELDS if kf is not None else ()))
    kept: list[ObservationSet] = []
    for t, obs in enumerate(observations):
        step = cycle_step(t, window, config.cycle.carry)
        units = [WorkUnit(t, tuple(range(lo, hi))) for lo, hi in blocks]
        reduction = OrderedReduction(len(blocks))

        def on_background(report, stats) -> None:
            m = report.unit.members
            reduction.add(blocks.index((m[0], m[-1] + 1)), stats)

        executor.run(units, {t: CycleInputs(step, (), obs)}, on_background, background=True)
        screened = Background.screened([reduction.moments], [reduction.fit(obs)], config.diagnostics.qc_sigma_k)
        background.fits.extend(screened.fits)
        background.qc.extend(screened.qc)
        moments = reduction.moments
        obs_t = screened.observations[0]
        kept.append(obs_t)
        exact_t = None
        if kf is not None:
            exact_t = _exact_step(kf, prior, obs_t, sets, store, t)
        operator = build_operator(obs_t, prior.grid, prior.normalization, sets)
        aggregation.add_times([TimeInputs(t, obs_t, operator, None if truth is None else truth[t], exact_t, sets)])
        missing = [u for u in units if not done[t, u.members[0]:u.members[-1] + 1].all()]
        if len(missing) < len(units):
            aggregation.catch_up([t])
        if missing:
            inputs = CycleInputs(step, tuple(kept[s] for s in step.times), obs_t)
            executor.run(missing, {t: inputs}, on_result, on_progress)
        aggregation.drain()
        if t not in aggregation.results:
            raise RuntimeError(f"analysis time {t} was not finished; the run is incomplete")
        _write_background_fields(store, t, moments)
        background.fits[t] = background.fits[t].summary()  # its time's metrics are logged
    return CycleOutcome(kept)


def run_cycle_flow(config: RunConfig, prior, observations: Sequence[ObservationSet], truth: np.ndarray | None,
                   executor, aggregation, background: Background, on_result: Callable[[Any, Any], None],
                   on_progress: Callable[[Any], None] | None = None, store: RunStore | None = None,
                   done: np.ndarray | None = None) -> CycleOutcome:
    """A cycled run without a per-time barrier (`cycle.first_guess_check: false`, DESIGN.md §10
    "Scheduling"): one unit per (time, member block), its forecast and analysis together, waiting
    only for the same block at the time before. Each time's background is reduced as its blocks
    arrive; the time is registered with the aggregators (and the Kalman filter steps) at its first
    block, in time order, and its background fields are written once its analysis is reduced.
    Same members, statistics and store as `run_cycle` when its screen rejects nothing.

    `done` (a resumed run): the blocks already in the store are not sampled again; their
    backgrounds are drawn again (from the analyses before them, in the store) and their analyses
    read back, so every time's statistics are those of the uninterrupted run."""
    blocks = unit_blocks(config.ensemble.members, config.cluster.members_per_unit)
    times = len(observations)
    if done is None:
        done = np.zeros((times, config.ensemble.members), dtype=bool)
    sets = config.observation_sets()
    window = config.window_length()
    kf = _kalman_filter(prior) if config.diagnostics.exact else None
    if store is not None:
        store.add_time_fields(BACKGROUND_FIELDS + (EXACT_FIELDS if kf is not None else ()))
    inputs = {}
    for t, obs in enumerate(observations):
        step = cycle_step(t, window, config.cycle.carry)
        inputs[t] = CycleInputs(step, tuple(observations[s] for s in step.times), obs, flow=True)
    units = {(t, b): WorkUnit(t, tuple(range(lo, hi))) for t in range(times) for b, (lo, hi) in enumerate(blocks)}
    block_of = {u: b for (_, b), u in units.items()}
    finished = {key for key, u in units.items() if done[u.t_index, u.members[0]:u.members[-1] + 1].all()}
    reductions: dict[int, OrderedReduction] = {}
    moments: dict[int, Any] = {}
    background.fits.extend([None] * times)  # filled as each time's background completes
    background.qc.extend([None] * times)
    registered: list[int] = []

    def register_through(t: int) -> None:
        """Register times up to t with the aggregators, in order (the Kalman filter steps with them)."""
        while len(registered) <= t:
            k = len(registered)
            exact_k = None if kf is None else _exact_step(kf, prior, observations[k], sets, store, k)
            operator = build_operator(observations[k], prior.grid, prior.normalization, sets)
            aggregation.add_times([TimeInputs(k, observations[k], operator, None if truth is None else truth[k],
                                              exact_k, sets)])
            registered.append(k)

    def on_background(report, stats) -> None:
        t = report.unit.t_index
        reduction = reductions.setdefault(t, OrderedReduction(len(blocks)))
        reduction.add(block_of[report.unit], stats)
        if reduction.complete:  # no screen (k = ∞): its fit at every observation, for O−B
            kept = Background.screened([reduction.moments], [reduction.fit(observations[t])], math.inf)
            background.fits[t], background.qc[t] = kept.fits[0], kept.qc[0]
            moments[t] = reductions.pop(t).moments

    def on_analysis(report, stats) -> None:
        register_through(report.unit.t_index)
        on_result(report, stats)

    def write_finished_times() -> None:
        for t in sorted(moments):
            if t not in aggregation.results:
                continue
            _write_background_fields(store, t, moments.pop(t))
            background.fits[t] = background.fits[t].summary()  # its time's metrics are logged

    def progress(ex) -> None:
        if on_progress is not None:
            on_progress(ex)
        write_finished_times()

    if finished:  # a resumed run: the backgrounds of the blocks on disk, then their analyses
        ordered = [units[key] for key in sorted(finished)]
        executor.run(ordered, {t: dataclasses.replace(inputs[t], flow=False) for t in range(times)},
                     on_background, background=True)
        partial = sorted({t for t, _ in finished})
        register_through(partial[-1])
        aggregation.catch_up(partial)
    missing = [u for key, u in units.items() if key not in finished]
    after = {units[(t, b)]: units[(t - 1, b)] for (t, b) in units if t > 0}
    if missing:
        executor.run(missing, inputs, on_analysis, progress, after=after, max_lead=config.cycle.max_lead,
                     on_background=on_background)
    aggregation.drain()
    write_finished_times()
    unfinished = [t for t in range(times) if t not in aggregation.results or t in moments]
    if unfinished:
        raise RuntimeError(f"analysis times {unfinished} were not finished; the run is incomplete")
    return CycleOutcome(list(observations))


def reanalysis_units(store: RunStore) -> list[WorkUnit]:
    """The member blocks whose trajectories are not all on disk (one unit each, at time 0)."""
    done = store.done()
    return [WorkUnit(0, tuple(range(lo, hi))) for lo, hi in store.layout.blocks() if not done[:, lo:hi].all()]


def run_reanalysis(observations: Sequence[ObservationSet], store: RunStore, executor, aggregation,
                   on_result: Callable[[Any, Any], None], on_progress: Callable[[Any], None] | None = None) -> None:
    """Sample and write the missing trajectories, then reduce every time from the store."""
    units = reanalysis_units(store)
    if units:
        executor.run(units, {0: TrajectoryInputs(tuple(observations))}, on_result, on_progress)
    aggregation.catch_up()
