"""The background ensemble of a run (DESIGN.md §7 "Diagnostics", `diagnostics.background: true`).

Before any analysis member is sampled, the same replicas draw the unguided prior ensemble with
the analysis' seeds (member m of time t from SeedSequence([seed, t, m]), unguided), for every
time, and return each block's moments and values at the observations (`BlockStats`, nothing
written). The driver reduces them as they arrive (Chan merges, in member order, so in-process
and Ray runs agree), so it never holds a field per member. Then each time's observations are screened against it
(`diagnostics.screen_observations`), and the analysis assimilates only those that pass.

The background is not stored member by member: `--resume` draws it again (same seeds, same values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ensemble_da.assimilation import WorkUnit
from ensemble_da.config import RunConfig
from ensemble_da.diagnostics import BackgroundQC, background_metrics, screen_observations
from ensemble_da.io import unit_blocks
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.stats import EnsembleMoments, ObsFit

__all__ = ["Background", "draw_background"]


@dataclass
class Background:
    """The background of every time: moments fields (channel, cell) in physical units, the members
    at the observations that passed QC (`fits`), and the QC result per time."""

    moments: list[EnsembleMoments]
    fits: list[ObsFit]
    qc: list[BackgroundQC]

    @property
    def observations(self) -> list[ObservationSet]:
        """Each time's observations after background QC."""
        return [f.obs for f in self.fits]

    def time_metrics(self, t: int, channels: Sequence[str], analysis_mean_at_obs: np.ndarray) -> dict[str, float]:
        """§7 diagnostics of time t (O−B, Desroziers, χ²/n, held-out improvement) and its QC counts."""
        return {**background_metrics(channels, analysis_mean_at_obs, self.fits[t]), **self.qc[t].metrics()}

    def qc_totals(self) -> dict[str, float]:
        """`qc/background_rejected/<C>` summed over times."""
        out: dict[str, float] = {}
        for q in self.qc:
            for k, v in q.metrics().items():
                out[k] = out.get(k, 0.0) + v
        return out

    def fields(self, analysis_mean: np.ndarray) -> dict[str, np.ndarray]:
        """Store variables (time, channel, cell): background mean and spread, and the increment
        (analysis mean − background mean) given the analysis mean (time, channel, cell)."""
        mean = np.stack([m.mean for m in self.moments])
        spread = np.stack([m.std(ddof=1) if m.count > 1 else np.zeros_like(m.mean) for m in self.moments])
        return {"background_mean": mean, "background_spread": spread, "increment": analysis_mean - mean}

    def observation_columns(self) -> dict[str, np.ndarray]:
        """`hb_mean`, `hb_spread`: the background at each observation, all times in order (obs,)."""
        return {"hb_mean": np.concatenate([f.hx_mean for f in self.fits]),
                "hb_spread": np.concatenate([f.hx_spread for f in self.fits])}


@dataclass
class _TimeReduction:
    blocks: list[tuple[int, int]]
    next_block: int = 0
    pending: dict[int, tuple[EnsembleMoments, np.ndarray]] = field(default_factory=dict)
    moments: EnsembleMoments = field(default_factory=EnsembleMoments)
    hx: list[np.ndarray] = field(default_factory=list)

    def add(self, lo: int, moments: EnsembleMoments, hx: np.ndarray) -> None:
        """Merge in member order: a block that arrives early waits (as moments) for its turn."""
        self.pending[lo] = (moments, hx)
        while self.next_block < len(self.blocks) and self.blocks[self.next_block][0] in self.pending:
            m, h = self.pending.pop(self.blocks[self.next_block][0])
            self.moments = self.moments.merge(m)
            self.hx.append(h)
            self.next_block += 1


def draw_background(executor, config: RunConfig, observations: Sequence[ObservationSet]) -> Background:
    """Sample the background of every time on `executor` and screen `observations` against it.

    Raises InputError (from `screen_observations`) when QC leaves a time without assimilated
    observations.
    """
    blocks = unit_blocks(config.ensemble.members, config.cluster.members_per_unit)
    reductions = [_TimeReduction(blocks) for _ in observations]
    units = [WorkUnit(t, tuple(range(lo, hi))) for t in range(len(observations)) for lo, hi in blocks]

    def on_result(report, stats) -> None:
        reductions[report.unit.t_index].add(report.unit.members[0], stats.moments, stats.hx)

    executor.run(units, observations, on_result, background=True)
    fits, qcs = [], []
    for obs, red in zip(observations, reductions):
        _, fit, qc = screen_observations(obs, ObsFit(obs, np.concatenate(red.hx)), config.diagnostics.qc_sigma_k)
        fits.append(fit)
        qcs.append(qc)
    return Background([r.moments for r in reductions], fits, qcs)
