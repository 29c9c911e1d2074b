"""The in-process API: sample posterior members for a run config (DESIGN.md §2, §3, §7).

`Assimilator` is the work one model replica does: it owns the prior and, for one analysis time
and its `ObservationSet`, samples a block of member ids and returns them as float32 physical
fields (member, channel, cell). The distributed runtime (`actors/`) calls exactly this per work
unit; `run_inprocess` drives it for a whole run without Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ensemble_da.config import RunConfig
from ensemble_da.grid import HealpixGrid
from ensemble_da.guidance import guided_denoiser
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators import ObservationOperator
from ensemble_da.priors import Denoiser, load_prior
from ensemble_da.sampling import KarrasSchedule, edm_sample, member_generator

__all__ = ["Assimilator", "WorkUnit", "BlockResult"]


@dataclass(frozen=True)
class WorkUnit:
    """One analysis time and a block of member ids to sample for it."""

    t_index: int
    members: tuple[int, ...]


@dataclass
class BlockResult:
    """Members sampled for one work unit.

    analysis: float32 (member, channel, cell) in physical units; diagnostics: scalars such as
    the MMPS relative CG residual (`cg_residual_max`) and seconds spent.
    """

    unit: WorkUnit
    analysis: np.ndarray
    diagnostics: dict[str, float] = field(default_factory=dict)


class Assimilator:
    """Guided EDM sampling of posterior members for one run config.

    Parameters
    ----------
    config : RunConfig
        The run config (grid, model, sampler, guidance).
    prior : Denoiser, optional
        A prior already built (default: built from `config.model`).
    device : str or torch.device
        Where the denoiser runs ("cpu", "cuda:0").
    """

    def __init__(self, config: RunConfig, prior: Denoiser | None = None, device: str | torch.device = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.prior = prior if prior is not None else load_prior(config.model, config.grid, device=self.device)
        self.grid: HealpixGrid = self.prior.grid
        self.normalization = self.prior.normalization
        self.schedule = KarrasSchedule.from_config(config.sampler)

    def operator(self, obs: ObservationSet) -> ObservationOperator:
        """H for the assimilated observations of `obs`, in the prior's normalised units."""
        return ObservationOperator.build(
            obs.assimilated_only(), self.grid, self.normalization, self.config.observations.operator
        )

    def sample(
        self,
        obs: ObservationSet | None,
        t_index: int,
        members: Sequence[int],
        condition: dict | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> BlockResult:
        """Sample `members` for analysis time `t_index` given `obs` (None: the prior).

        Members are drawn in batches of `config.sampler.batch_size`; member m's noise comes from
        SeedSequence([seed, t_index, m]) only, so its result does not depend on the batching.
        `progress(n)` is called after each batch with the number of members finished.
        """
        import time

        start = time.perf_counter()
        cfg = self.config
        denoiser: Denoiser = self.prior
        op = None
        if obs is not None and cfg.guidance.method != "none":
            op = self.operator(obs)
            denoiser = guided_denoiser(self.prior, op, cfg.guidance, autocast=cfg.sampler.autocast == "bf16")
        out = []
        cg_max = 0.0
        bs = cfg.sampler.batch_size
        for lo in range(0, len(members), bs):
            block = list(members[lo : lo + bs])
            gens = [member_generator(cfg.seed, t_index, m) for m in block]
            z = edm_sample(
                denoiser,
                gens,
                self.schedule,
                solver=cfg.sampler.solver,
                churn=cfg.sampler.churn,
                condition=condition,
                device=self.device,
                autocast=cfg.sampler.autocast == "bf16",
            )
            out.append(self.normalization.denormalize(z.double().cpu().numpy()).astype(np.float32))
            cg_max = max(cg_max, float(getattr(denoiser, "max_relative_residual", 0.0)))
            if progress is not None:
                progress(len(block))
        diagnostics = {"seconds": time.perf_counter() - start}
        if cfg.guidance.method == "mmps" and op is not None:
            diagnostics["cg_residual_max"] = cg_max
        return BlockResult(WorkUnit(t_index, tuple(int(m) for m in members)), np.concatenate(out), diagnostics)
