"""Aggregator: streaming per-time statistics of the ensemble (issue 3, item 4).

Member blocks are merged into `EnsembleMoments` (Chan et al. parallel update) in the fixed order
of the work units of each time, whatever the order they finished in: a block that arrives early
is already on disk, and is read back when its turn comes. The merge order — hence every
float — is therefore the same for in-process and Ray runs, with or without failures or
`--resume`, and no process holds more than one block of fields. Observation-space values
(H applied to each member, (member, obs)) are small and kept whole.

When a time's last block is merged, the time is finished: ensemble mean and spread go to the
store, fair CRPS and the truth's rank histogram are computed over cell slices read from the
store (all members, a slice of cells at a time), and `stats.time_metrics` gives the DESIGN.md §7
scalars, which are handed to `on_time` (the driver logs them to MLflow).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ensemble_da.io import RunStore
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators import ObservationOperator
from ensemble_da.stats import EnsembleMoments, ObsFit, fair_crps, heldout_noise_rng, rank_counts, time_metrics

__all__ = ["Aggregator", "TimeResult", "CELL_SLICE_BYTES"]

# Largest (member, channel, cells) slice read at once for CRPS and ranks.
CELL_SLICE_BYTES = 256 * 2**20


@dataclass
class TimeResult:
    """One finished analysis time: metrics (DESIGN.md §7 names), observation-space mean/spread
    (obs,), rank histogram counts (channel, member + 1) or None without truth."""

    t_index: int
    metrics: dict[str, float]
    hx_mean: np.ndarray
    hx_spread: np.ndarray
    rank_counts: np.ndarray | None


@dataclass
class _TimeState:
    blocks: list[tuple[int, int]]
    next_block: int = 0
    moments: EnsembleMoments = field(default_factory=EnsembleMoments)
    hx: list[np.ndarray] = field(default_factory=list)


class Aggregator:
    """Per-time streaming reduction of member blocks written to `store`.

    Parameters
    ----------
    store : RunStore
        Where blocks are (or will be) written; finished statistics are written back to it.
    observations : list of ObservationSet
        One per time (all observations: assimilated and held out).
    operators : list of ObservationOperator
        H of each time over all of its observations (applied to physical fields).
    truth : float (time, channel, cell), optional
    exact : (mean, spread) each float (time, channel, cell), optional
    seed : int
        Run seed (held-out CRPS noise stream, `stats.heldout_noise_rng`).
    on_time : callable(TimeResult), optional
        Called when a time is finished.
    """

    def __init__(
        self,
        store: RunStore,
        observations: Sequence[ObservationSet],
        operators: Sequence[ObservationOperator],
        *,
        truth: np.ndarray | None = None,
        exact: tuple[np.ndarray, np.ndarray] | None = None,
        seed: int = 0,
        on_time: Callable[[TimeResult], None] | None = None,
    ):
        self.store = store
        self.layout = store.layout
        self.observations = list(observations)
        self.operators = list(operators)
        self.truth = truth
        self.exact = exact
        self.seed = seed
        self.on_time = on_time
        blocks = self.layout.blocks()
        self.states = [_TimeState(blocks) for _ in range(len(self.layout.times))]
        self.results: dict[int, TimeResult] = {}
        self._done = store.done()

    def add(self, t_index: int, members: Sequence[int], analysis: np.ndarray | None = None) -> None:
        """A block of time `t_index` is on disk (`analysis` (member, channel, cell) float32 if at
        hand); merge every block of that time that is now next in order."""
        lo, hi = int(members[0]), int(members[-1]) + 1
        self._done[t_index, lo:hi] = True
        st = self.states[t_index]
        while st.next_block < len(st.blocks):
            b_lo, b_hi = st.blocks[st.next_block]
            if not self._done[t_index, b_lo:b_hi].all():
                break
            block = analysis if (b_lo, b_hi) == (lo, hi) and analysis is not None else None
            if block is None:
                block = self.store.read_block(t_index, b_lo, b_hi)
            self._merge(t_index, block)
            st.next_block += 1
        if st.next_block == len(st.blocks) and t_index not in self.results:
            self._finish(t_index)

    def catch_up(self) -> None:
        """Merge blocks already on disk (a resumed run) and finish the times that are complete."""
        for t in range(len(self.states)):
            lo, hi = self.states[t].blocks[0]
            if self._done[t, lo:hi].all():
                self.add(t, range(lo, hi))

    def _merge(self, t: int, block: np.ndarray) -> None:
        st = self.states[t]
        st.moments = st.moments.update(block)
        st.hx.append(self.operators[t].apply_numpy(block.astype(np.float64)))

    def _finish(self, t: int) -> None:
        st = self.states[t]
        mean, spread = st.moments.mean, st.moments.std(ddof=1) if st.moments.count > 1 else np.zeros_like(st.moments.mean)
        self.store.write_time_stats(t, mean, spread)
        fit = ObsFit(self.observations[t], np.concatenate(st.hx))
        truth = None if self.truth is None else np.asarray(self.truth[t], dtype=np.float64)
        crps = ranks = None
        if truth is not None:
            crps, ranks = self._scores_vs_truth(t, truth)
        exact = None if self.exact is None else (self.exact[0][t], self.exact[1][t])
        rng = heldout_noise_rng(self.seed, t)
        if st.moments.count > 1:
            metrics = time_metrics(
                list(self.layout.channels), st.moments, fit=fit, truth=truth, crps=crps, exact=exact,
                heldout_noise_rng=rng,
            )
        else:
            metrics = {}
        result = TimeResult(t, metrics, fit.hx_mean, fit.hx_spread, ranks)
        self.results[t] = result
        st.hx = []
        if self.on_time is not None:
            self.on_time(result)

    def _scores_vs_truth(self, t: int, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fair CRPS (channel, cell) and rank counts (channel, member + 1), read in cell slices."""
        m, nc, npix = self.layout.members, len(self.layout.channels), self.layout.npix
        step = max(1, min(npix, CELL_SLICE_BYTES // (4 * m * nc)))
        crps = np.empty((nc, npix))
        ranks = np.zeros((nc, m + 1), dtype=np.int64)
        for lo in range(0, npix, step):
            cells = slice(lo, min(lo + step, npix))
            ens = self.store.read_cells(t, cells).astype(np.float64)
            crps[:, cells] = fair_crps(ens, truth[:, cells])
            for c in range(nc):
                ranks[c] += rank_counts(ens[:, c], truth[c, cells])
        return crps, ranks

    @property
    def finished(self) -> bool:
        return len(self.results) == len(self.states)

    def observations_dataset(self):
        """The `observations` group of DESIGN.md §7 with hx_mean / hx_spread of every time."""
        sets = []
        for t, obs in enumerate(self.observations):
            ds = obs.to_dataset()
            res = self.results.get(t)
            n = len(obs)
            ds["hx_mean"] = ("obs", res.hx_mean if res else np.full(n, np.nan))
            ds["hx_spread"] = ("obs", res.hx_spread if res else np.full(n, np.nan))
            sets.append(ds)
        import xarray as xr

        return xr.concat(sets, dim="obs")
