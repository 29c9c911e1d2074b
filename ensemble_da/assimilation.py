"""The in-process API: sample posterior members for a run config (DESIGN.md §2, §3, §7).

`Assimilator` is the work one model replica does: it owns the prior and, for one analysis time
and its `ObservationSet`, samples a block of member ids and returns them as float32 physical
fields (member, channel, cell). The distributed runtime (`actors/`) calls exactly this per work
unit; `run_inprocess` drives it for a whole run without Ray.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

from ensemble_da.config import ObservationsConfig, ReplicaSpec, RunConfig
from ensemble_da.cycling import CycleStep, analyse_cycle
from ensemble_da.errors import InputError
from ensemble_da.diagnostics import Background, BackgroundQC, heldout_rank_histogram
from ensemble_da.exact import exact_biased_posterior_physical, exact_posterior_physical, has_exact_posterior
from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.bias import bias_model, bias_statistics, exact_bias_metrics
from ensemble_da.obs.inputs import RunInputs
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators import build_operator
from ensemble_da.posterior import sample_posterior
from ensemble_da.priors import Denoiser, load_prior, time_condition
from ensemble_da.stats import (EnsembleMoments, ObsFit, fair_crps, heldout_noise_rng, heldout_rank_rng, set_metrics,
                               time_metrics)

__all__ = ["Assimilator", "WorkUnit", "BlockResult", "EnsembleAnalysis", "assimilate", "exact_posteriors", "ExactReference",
           "CycleInputs", "TrajectoryInputs", "flows"]


@dataclass(frozen=True)
class WorkUnit:
    """One analysis time and a block of member ids to sample for it."""

    t_index: int
    members: tuple[int, ...]


@dataclass(frozen=True)
class CycleInputs:
    """One time of `mode: cycle` as a replica needs it (DESIGN.md §10): the step (window times,
    conditioned or not), each window slot's observations (those assimilated at their own time,
    after its QC) and the time's own observations (all of them: what its statistics are over).
    `flow`: a unit forecasts its block and analyses it in one call (`cycle.first_guess_check`
    off: the time's observations do not wait for the whole background ensemble)."""

    step: CycleStep
    window_observations: tuple[ObservationSet, ...]
    observations: ObservationSet
    flow: bool = False


def flows(inputs) -> bool:
    """Whether a unit of `inputs` forecasts and analyses its block in one call (a flowing cycle)."""
    return isinstance(inputs, CycleInputs) and inputs.flow


@dataclass(frozen=True)
class TrajectoryInputs:
    """`mode: reanalysis`: every time's observations; a unit samples whole trajectories.
    `observations` is time 0's set (what the unit's statistics are over)."""

    every_time: tuple[ObservationSet, ...]

    @property
    def observations(self) -> ObservationSet:
        return self.every_time[0]


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
    config : RunConfig or ReplicaSpec
        The run config, or the part of it a replica needs (`RunConfig.replica_spec`).
    prior : Denoiser, optional
        A prior already built (default: built from `config.model`).
    device : str or torch.device
        Where the denoiser runs ("cpu", "cuda:0").
    """

    def __init__(self, config: RunConfig | ReplicaSpec, prior: Denoiser | None = None,
                 device: str | torch.device = "cpu"):
        config = config if isinstance(config, ReplicaSpec) else config.replica_spec()
        self.config = config
        self.device = torch.device(device)
        self.prior = prior if prior is not None else load_prior(config.model, config.grid, device=self.device)
        self.grid: HealpixGrid = self.prior.grid
        self.normalization = self.prior.normalization
        self._forecast_model = None  # cycle.forecast, built on first use

    def operator(self, obs: ObservationSet):
        """H for the assimilated observations of `obs` (each set by its own operator), in the
        prior's normalised units."""
        return build_operator(obs.assimilated_only(), self.grid, self.normalization, self.config.observation_sets())

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
        `condition` defaults to the analysis time's (`time_condition`: day of year, second of day),
        which conditional learned priors use and the Gaussian prior ignores.
        `progress(n)` is called after each batch with the number of members finished.
        """
        start = time.perf_counter()
        cfg = self.config
        if condition is None:
            condition = time_condition(cfg.analysis_times()[t_index])
        diagnostics: dict[str, float] = {}
        op = None if obs is None else self.operator(obs)
        x = sample_posterior(
            self.prior,
            op,
            members,
            cfg.seed,
            sampler=cfg.sampler,
            guidance=cfg.guidance,
            condition=condition,
            t_index=t_index,
            device=self.device,
            progress=progress,
            diagnostics=diagnostics,
            check_inputs=False,  # the run's own checks ran before (plug-in check, QC)
            bias=None if op is None else bias_model(obs.assimilated_only(), op.sigma, cfg.observation_sets()),
        )
        diagnostics = {"seconds": time.perf_counter() - start, **diagnostics}
        return BlockResult(WorkUnit(t_index, tuple(int(m) for m in members)), x, diagnostics)

    def _time_prior(self):
        from ensemble_da.cycling import is_time_prior

        if not is_time_prior(self.prior):
            raise InputError(f"mode {self.config.mode} needs a prior over time windows (model.kind gaussian_markov "
                             f"or a window checkpoint), got model.kind {self.config.model.kind}")
        return self.prior

    def sample_cycle(self, inputs: CycleInputs, members: Sequence[int], carried: np.ndarray | None
                     ) -> tuple[BlockResult, np.ndarray]:
        """One cycle of `members` (`ensemble_da.cycling`): (the analysis block of time
        inputs.step.t_index, the states carried to the next cycle, float32 (member, channel, cell))."""
        start = time.perf_counter()
        step, cfg = inputs.step, self.config
        ops = {t: self.operator(o) for t, o in zip(step.times, inputs.window_observations)}
        diagnostics: dict[str, float] = {}
        x, carry = analyse_cycle(self._time_prior(), step, ops, members, cfg.seed, cfg.sampler, cfg.guidance,
                                 carried, diagnostics)
        diagnostics = {"seconds": time.perf_counter() - start, **diagnostics}
        return BlockResult(WorkUnit(step.t_index, tuple(int(m) for m in members)), x, diagnostics), carry

    def sample_trajectory(self, inputs: TrajectoryInputs, members: Sequence[int]) -> BlockResult:
        """Reanalysis trajectories of `members` (`ensemble_da.reanalysis`): analysis float32
        (member, time, channel, cell)."""
        from ensemble_da.reanalysis import sample_trajectories

        start = time.perf_counter()
        cfg = self.config
        diagnostics: dict[str, float] = {}
        x = sample_trajectories(self._time_prior(), [self.operator(o) for o in inputs.every_time], members, cfg.seed,
                                cfg.sampler, cfg.guidance, cfg.window_length(), diagnostics)
        diagnostics = {"seconds": time.perf_counter() - start, **diagnostics}
        return BlockResult(WorkUnit(0, tuple(int(m) for m in members)), x, diagnostics)

    def forecast(self, t_index: int, members: Sequence[int], previous: np.ndarray | None) -> np.ndarray:
        """The background of time `t_index` (`cycle.forecast`): the forecast of the members'
        analyses `previous` at t_index − 1 (None at the first time: a climate draw). The forecast
        model is built once per Assimilator (`ensemble_da.dynamics.build_forecast`): a stateful one
        (speedy) keeps its members' full model states between calls."""
        from ensemble_da.dynamics import build_forecast

        if self._forecast_model is None:
            self._time_prior()  # the time-aware modes' own check first: its message names the mode
            self._forecast_model = build_forecast(self.config, self.prior)
        return self._forecast_model.forecast(previous, t_index, members, self.config.seed)


class ExactReference(NamedTuple):
    """Exact posterior mean and spread, float64 (time, channel, cell), physical units; with an
    observation bias model, `bias` holds each time's exact β metrics (`exact_bias_mean/<name>`, ...)."""

    mean: np.ndarray
    spread: np.ndarray
    bias: list[dict[str, float]] | None = None


def exact_posteriors(
    prior: Denoiser, observations: Sequence[ObservationSet], sets: Sequence[ObservationsConfig]
) -> ExactReference | None:
    """The exact posterior of each time's assimilated observations, each set read by its own
    operator (`ensemble_da.exact`), jointly with the sets' observation bias where they have one;
    None when the prior is not Gaussian."""
    if not has_exact_posterior(prior):
        return None
    means, spreads, metrics = [], [], []
    for o in observations:
        points = o.assimilated_only()
        op = build_operator(points, prior.grid, prior.normalization, sets)
        model = bias_model(points, op.sigma, sets)
        if model is None:
            mean, spread = exact_posterior_physical(prior, op)
        else:
            mean, spread, beta, cov = exact_biased_posterior_physical(prior, op, model.predictors, model.prior_sigma)
            metrics.append(exact_bias_metrics(model.names, beta, cov))
        means.append(mean)
        spreads.append(spread)
    return ExactReference(np.stack(means), np.stack(spreads), metrics or None)


@dataclass
class EnsembleAnalysis:
    """A whole run's result, in memory (small runs, tests, benchmarks).

    analysis: float32 (time, member, channel, cell), physical units; metrics: one dict per
    time with the DESIGN.md §7 names; fits: the ensemble in observation space per time (at the
    observations that passed background QC); exact_mean / exact_spread: (time, channel, cell)
    when the prior has an exact posterior. With `diagnostics.background`: background, the
    unguided prior ensemble with the same seeds (time, member, channel, cell); background_fits,
    it at the same observations as `fits`; qc, the background check of each time;
    heldout_ranks: int (time, channel, member + 1) ranks of held-out observations (noise added).
    """

    analysis: np.ndarray
    metrics: list[dict[str, float]]
    fits: list[ObsFit]
    exact_mean: np.ndarray | None = None
    exact_spread: np.ndarray | None = None
    diagnostics: list[dict[str, float]] = field(default_factory=list)
    background: np.ndarray | None = None
    background_fits: list[ObsFit] = field(default_factory=list)
    qc: list[BackgroundQC] = field(default_factory=list)
    heldout_ranks: np.ndarray | None = None


def assimilate(
    config: RunConfig,
    inputs: RunInputs,
    assimilator: Assimilator | None = None,
    progress: Callable[[int], None] | None = None,
) -> EnsembleAnalysis:
    """Run every analysis time of `inputs` in this process and reduce it to DESIGN.md §7 metrics.

    With `diagnostics.background`, the background of every time is drawn first (the prior, same
    seeds) and the observations screened against it (`diagnostics.Background.screened`, as a
    distributed run does); the analysis assimilates those that passed, and metrics include the
    §7 diagnostics.
    """
    assimilator = assimilator or Assimilator(config)
    members = list(range(config.ensemble.members))
    channels = list(assimilator.normalization.channels)
    sets = config.observation_sets()

    def at_obs(obs: ObservationSet, x: np.ndarray) -> ObsFit:
        op = build_operator(obs, assimilator.grid, assimilator.normalization, sets)
        return ObsFit(obs, op.observe(x.astype(np.float64)))

    observations, backgrounds, background = list(inputs.observations), [], None
    if config.diagnostics.background:
        backgrounds = [assimilator.sample(None, t, members, progress=progress).analysis for t in range(len(observations))]
        background = Background.screened([EnsembleMoments.of(xb) for xb in backgrounds],
                                         [at_obs(obs, xb) for obs, xb in zip(observations, backgrounds)],
                                         config.diagnostics.qc_sigma_k)
        observations = background.observations
    exact = exact_posteriors(assimilator.prior, observations, sets) if config.diagnostics.exact else None
    out, metrics, fits, diags, ranks = [], [], [], [], []
    for t, obs in enumerate(observations):
        block = assimilator.sample(obs, t, members, progress=progress)
        x = block.analysis
        fit = at_obs(obs, x)
        truth = None if inputs.truth is None else inputs.truth[t].astype(np.float64)
        m = time_metrics(
            channels,
            EnsembleMoments.of(x),
            fit,
            truth,
            None if truth is None else fair_crps(x, truth),
            None if exact is None else (exact[0][t], exact[1][t]),
            heldout_noise_rng(config.seed, t),
        )
        m.update(set_metrics(channels, EnsembleMoments.of(x), fit, config.seed, t))
        m.update(bias_statistics(obs, fit.hx, sets, config.seed, t))
        if exact is not None and exact.bias is not None:
            m.update(exact.bias[t])
        ranks.append(heldout_rank_histogram(channels, fit, heldout_rank_rng(config.seed, t)))
        if background is not None:
            m.update(background.time_metrics(t, channels, fit.hx_mean))
        if "cg_residual_max" in block.diagnostics:
            m["mmps_residual/max"] = float(block.diagnostics["cg_residual_max"])
        metrics.append(m)
        out.append(x)
        fits.append(fit)
        diags.append(block.diagnostics)
    return EnsembleAnalysis(
        np.stack(out),
        metrics,
        fits,
        None if exact is None else exact[0].astype(np.float32),
        None if exact is None else exact[1].astype(np.float32),
        diags,
        np.stack(backgrounds) if backgrounds else None,
        [] if background is None else background.fits,
        [] if background is None else background.qc,
        np.stack(ranks),
    )
