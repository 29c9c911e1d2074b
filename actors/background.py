"""The background ensemble of a run (DESIGN.md §7 "Diagnostics", `diagnostics.background: true`).

Before any analysis member is sampled, the same replicas draw the unguided prior ensemble with
the analysis' seeds (member m of time t from SeedSequence([seed, t, m]), unguided), for every
time, and return each block's moments and values at the observations (`BlockStats`, nothing
written). The driver reduces them as they arrive (`stats.OrderedReduction`: Chan merges in member order,
so in-process and Ray runs agree), so it never holds a field per member. Then each time's
observations are screened against it (`diagnostics.Background.screened`, as `assimilate` does),
and the analysis assimilates only those that pass.

The background is not stored member by member: `--resume` draws it again (same seeds, same values).
"""

from __future__ import annotations

from typing import Sequence

from ensemble_da.assimilation import WorkUnit
from ensemble_da.config import RunConfig
from ensemble_da.diagnostics import Background
from ensemble_da.io import unit_blocks
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.stats import OrderedReduction

__all__ = ["draw_background"]


def draw_background(executor, config: RunConfig, observations: Sequence[ObservationSet]) -> Background:
    """Sample the background of every time on `executor` and screen `observations` against it.

    Raises InputError (from `screen_observations`) when QC leaves a time without assimilated
    observations.
    """
    blocks = unit_blocks(config.ensemble.members, config.cluster.members_per_unit)
    reductions = [OrderedReduction(len(blocks)) for _ in observations]
    units = [WorkUnit(t, tuple(range(lo, hi))) for t in range(len(observations)) for lo, hi in blocks]

    def on_result(report, stats) -> None:
        unit = report.unit
        reductions[unit.t_index].add(blocks.index((unit.members[0], unit.members[-1] + 1)), stats)

    executor.run(units, observations, on_result, background=True)
    return Background.screened([r.moments for r in reductions], [r.fit(o) for r, o in zip(reductions, observations)],
                               config.diagnostics.qc_sigma_k)
