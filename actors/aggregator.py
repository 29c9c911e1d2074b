"""Aggregators: per-time streaming statistics of the ensemble, from what replicas return.

A replica writes its member block into the store and returns the block's `BlockStats`
(partial moments and H x per member). The aggregator of a time merges them (Chan et al.
parallel update) in the fixed order of the time's member blocks, whatever order they arrive
in — an early block waits in memory (two fields) until its turn — so every float is the same
for in-process and Ray runs, with or without failures, stragglers or `--resume`. Blocks already
on disk when a run resumes are read back once and give the same `BlockStats`.

When a time's last block is merged the time is finished: ensemble mean and spread go to the
store; fair CRPS and the truth's rank histogram run over cell chunks that read all members of a
chunk from the store (`score_cells`: in this process, or as Ray tasks), and
`stats.time_metrics` gives the DESIGN.md §7 scalars, returned as a `TimeResult` for the driver
(which alone logs to MLflow).

One aggregator per analysis time (on Ray: actor `t mod cluster.aggregators` holds time t):
a time's observation-space fit needs every member's H x over all of that time's observations,
so a time is the natural unit of reduction (a cell shard would need a second reduction for the
fit); different times reduce in parallel on different actors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ensemble_da.assimilation import WorkUnit
from ensemble_da.config import ObservationsConfig
from ensemble_da.io import RunStore
from ensemble_da.obs.bias import bias_statistics
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.stats import (BlockStats, OrderedReduction, fair_crps, heldout_noise_rng, rank_counts, set_metrics,
                               time_metrics)

__all__ = ["Aggregator", "TimeInputs", "TimeResult", "score_cells", "CELL_SLICE_BYTES"]

# Largest (member, channel, cells) slice one scoring task reads.
CELL_SLICE_BYTES = 256 * 2**20


@dataclass
class TimeInputs:
    """What the aggregator of one analysis time needs besides the blocks.

    observations: all of the time's observations; operator: H over them (for blocks read back
    on resume); truth: (channel, cell) or None; exact: (mean, spread) each (channel, cell) or None;
    sets: the run's observation sets (their per-set metrics and bias models), or None; exact_bias
    the exact posterior's bias metrics (`exact_bias_mean/<name>`, ...) when known.
    """

    t_index: int
    observations: ObservationSet
    operator: object
    truth: np.ndarray | None = None
    exact: tuple[np.ndarray, np.ndarray] | None = None
    sets: Sequence[ObservationsConfig] | None = None
    exact_bias: dict[str, float] | None = None


@dataclass
class TimeResult:
    """One finished analysis time: metrics (DESIGN.md §7 names), observation-space mean/spread
    (obs,), rank histogram counts (channel, member + 1) or None without truth."""

    t_index: int
    metrics: dict[str, float]
    hx_mean: np.ndarray
    hx_spread: np.ndarray
    rank_counts: np.ndarray | None


def score_cells(store_url: str, t_index: int, cells: slice, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fair CRPS (channel, cells) and rank counts (channel, member + 1) of time `t_index` at a
    slice of cells, reading all members there from the store; `truth` (channel, cells)."""
    ens = RunStore(store_url).read_cells(t_index, cells).astype(np.float64)
    ranks = np.stack([rank_counts(ens[:, c], truth[c]) for c in range(ens.shape[1])])
    return fair_crps(ens, truth), ranks


def _local_map(calls: list[tuple]) -> list:
    return [score_cells(*args) for args in calls]


@dataclass
class _TimeState:
    inputs: TimeInputs
    reduction: OrderedReduction


class Aggregator:
    """Streaming reduction of the member blocks of some analysis times.

    Parameters
    ----------
    store_url : str
        Path or URL of the run store (blocks are there; mean and spread are written there).
    times : list of TimeInputs
        The analysis times this aggregator owns.
    seed : int
        Run seed (held-out CRPS noise stream, `stats.heldout_noise_rng`).
    map_scores : callable(list of score_cells argument tuples) -> list of results, optional
        Runs the scoring calls (default: one after another here; on Ray: as tasks).
    """

    def __init__(self, store_url: str, times: Sequence[TimeInputs], seed: int = 0,
                 map_scores: Callable[[list[tuple]], list] | None = None):
        self.store_url = store_url
        self.store = RunStore(store_url)
        self.layout = self.store.layout
        self.blocks = self.layout.blocks()
        self.seed = seed
        self.map_scores = map_scores or _local_map
        self.states = {ti.t_index: _TimeState(ti, OrderedReduction(len(self.blocks))) for ti in times}
        self.results: dict[int, TimeResult] = {}

    def add_times(self, times: Sequence[TimeInputs]) -> None:
        """Own more analysis times (a cycled run learns a time's observations, after its QC, and
        its exact reference only when the time comes)."""
        for ti in times:
            self.states[ti.t_index] = _TimeState(ti, OrderedReduction(len(self.blocks)))

    def add(self, unit: WorkUnit, stats: BlockStats) -> list[TimeResult]:
        """Merge the block of `unit` (and every waiting block now next in order); returns the
        times this finished (a list of zero or one TimeResult). A block of a finished time
        (seen already) is ignored."""
        if unit.t_index in self.results:
            return []
        st = self.states[unit.t_index]
        st.reduction.add(self.blocks.index((unit.members[0], unit.members[-1] + 1)), stats)
        if st.reduction.complete:
            return [self._finish(unit.t_index)]
        return []

    def catch_up(self, times: Sequence[int] | None = None) -> list[TimeResult]:
        """Merge the blocks already on disk (a resumed run) of `times` (default: every time this
        aggregator owns); returns the times that finished."""
        done = self.store.done()
        out = []
        for t, st in list(self.states.items()):
            if times is not None and t not in times:
                continue
            for lo, hi in self.blocks:
                if done[t, lo:hi].all():
                    stats = BlockStats.of(self.store.read_block(t, lo, hi), st.inputs.operator)
                    out += self.add(WorkUnit(t, tuple(range(lo, hi))), stats)
        return out

    def _finish(self, t: int) -> TimeResult:
        # A finished time keeps only its TimeResult: its inputs (truth, exact fields, operator)
        # and moments go, so what an aggregator holds does not grow with the times it finished.
        st = self.states.pop(t)
        ti, red = st.inputs, st.reduction
        m = red.moments
        self.store.write_time_stats(t, m.mean, m.spread())
        fit = red.fit(ti.observations)
        truth = None if ti.truth is None else np.asarray(ti.truth, dtype=np.float64)
        crps = ranks = None
        if truth is not None and m.count > 1:
            crps, ranks = self._scores_vs_truth(t, truth)
        metrics = {}
        if m.count > 1:
            metrics = time_metrics(list(self.layout.channels), m, fit=fit, truth=truth, crps=crps, exact=ti.exact,
                                   heldout_noise_rng=heldout_noise_rng(self.seed, t))
        if np.isfinite(red.cg_residual_max):
            metrics["mmps_residual/max"] = float(red.cg_residual_max)
        if ti.sets is not None:
            metrics.update(set_metrics(list(self.layout.channels), m, fit, self.seed, t))
            metrics.update(bias_statistics(ti.observations, fit.hx, ti.sets, self.seed, t))
        metrics.update(ti.exact_bias or {})
        result = TimeResult(t, metrics, fit.hx_mean, fit.hx_spread, ranks)
        self.results[t] = result
        return result

    def _cell_slices(self) -> list[slice]:
        """Whole chunk columns grouped up to CELL_SLICE_BYTES of (member, channel, cells) float32."""
        per_cell = 4 * self.layout.members * len(self.layout.channels)
        out: list[slice] = []
        for c in self.layout.cell_chunks():
            if out and (c.stop - out[-1].start) * per_cell <= CELL_SLICE_BYTES:
                out[-1] = slice(out[-1].start, c.stop)
            else:
                out.append(c)
        return out

    def _scores_vs_truth(self, t: int, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fair CRPS (channel, cell) and rank counts (channel, member + 1) over cell slices."""
        slices = self._cell_slices()
        parts = self.map_scores([(self.store_url, t, s, truth[:, s]) for s in slices])
        crps = np.empty(truth.shape)
        for s, (c, _) in zip(slices, parts):
            crps[:, s] = c
        return crps, np.sum([r for _, r in parts], axis=0)


def observations_dataset(observations: Sequence[ObservationSet], results: dict[int, TimeResult]):
    """The `observations` group of DESIGN.md §7 with hx_mean / hx_spread of every time."""
    import xarray as xr

    sets = []
    for t, obs in enumerate(observations):
        ds = obs.to_dataset()
        res = results.get(t)
        n = len(obs)
        ds["hx_mean"] = ("obs", res.hx_mean if res else np.full(n, np.nan))
        ds["hx_spread"] = ("obs", res.hx_spread if res else np.full(n, np.nan))
        sets.append(ds)
    return xr.concat(sets, dim="obs")
