"""ModelReplica: one copy of the prior that samples work units and writes them (DESIGN.md §2).

A plain class: the coordinator wraps it with `ray.remote` (one actor per placement-group
bundle, pinned to a GPU when the config asks for one), and the in-process executor uses it as
is. A unit goes in as (ObservationSet, analysis time index, member ids, attempt number); the
replica samples the block, writes it into the run store through its sink (`actors.writer`),
and returns two things: a small `UnitReport` for the coordinator (the unit, whether this
attempt wrote it, timings) and the block's `BlockStats` for the aggregator (partial moments,
H x per member). Torch tensors and member fields never leave the replica.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ensemble_da.assimilation import BlockResult, CycleInputs, TrajectoryInputs, WorkUnit
from ensemble_da.errors import InputError
from ensemble_da.stats import BlockStats

__all__ = ["ModelReplica", "RunBinding", "UnitReport", "OPERATORS_KEPT"]

# Observation operators a replica keeps (its last few (time, pass) pairs).
OPERATORS_KEPT = 4


@dataclass
class UnitReport:
    """What the coordinator (the driver) receives for a unit: never a field.

    written: False when another attempt of the unit holds the claim (nothing was written).
    diagnostics: seconds (sampling), write_s, pid, replica, cg_residual_max.
    """

    unit: WorkUnit
    attempt: int
    written: bool
    diagnostics: dict[str, float] = field(default_factory=dict)


def _ray_context() -> dict[str, Any]:
    """Node id and GPU ids when running inside a Ray worker; empty otherwise."""
    if "ray" not in sys.modules:
        return {}
    import ray

    if not ray.is_initialized():
        return {}
    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}


def select_device(device: str, gpus_per_replica: float, cuda_available: bool) -> str:
    """The torch device of a replica (`cluster.device`); InputError for a GPU replica without CUDA."""
    if device == "cpu" or (device == "auto" and gpus_per_replica <= 0):
        return "cpu"
    if not cuda_available:
        raise InputError(
            f"replica was given {gpus_per_replica:g} GPU(s) but sees no CUDA device "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); install a CUDA build of torch on "
            "the GPU nodes, or set cluster.device=cpu to use GPUs only as scheduling slots"
        )
    # Inside a Ray actor with num_gpus > 0, CUDA_VISIBLE_DEVICES holds only our GPU(s).
    return "cuda:0"


@dataclass(frozen=True)
class RunBinding:
    """Which run a replica works for: its `ReplicaSpec` (`RunConfig.replica_spec()`, as JSON data),
    the sink of its store and the prior factory, under a token unique to the run. The driver
    passes it with every call, so a replica kept for the next run of a session (a sweep), or
    restarted by Ray with its first run's constructor arguments, serves the run that calls it."""

    token: str
    config: dict
    sink: Any
    prior_factory: Callable | None = None


class ModelReplica:
    """Loads the prior once, samples member blocks and writes them.

    Parameters
    ----------
    config : dict
        The run's `ReplicaSpec` (`RunConfig.replica_spec().model_dump(mode="json")`): plain data
        for the actor, and only what a replica needs.
    index : int
        The replica's number (for progress and diagnostics).
    sink : DirectSink or WriterSink
        Where blocks go (`actors.writer`).
    prior_factory : callable(device) -> Denoiser, optional
        Builds the prior instead of `config.model` (benchmarks use a stand-in denoiser).
    token : str, optional
        The run's `RunBinding` token; a call with another binding rebinds the replica.

    A failure while loading is kept and raised by `info()`/`sample()` instead of killing the
    actor, so a replica with `max_restarts=-1` does not restart forever on a bad config.
    """

    def __init__(self, config: dict, index: int, sink, prior_factory: Callable | None = None, token: str | None = None):
        self.index = index
        self.pid = os.getpid()
        self.started = time.time()
        self._prior_key: tuple | None = None
        self._prior = None
        self.prior_kept = False
        self._bind(RunBinding(token or "", config, sink, prior_factory))

    def _bind(self, binding: RunBinding | None) -> None:
        """Serve `binding`'s run (None: the current one). The prior is kept when the new run's
        model, grid, device and prior factory are the same: it is a function of them only."""
        if binding is None or binding.token == getattr(self, "token", None):
            return
        start = time.time()
        self.token, self.sink = binding.token, binding.sink
        self._operators: OrderedDict[tuple[int, bool], Any] = OrderedDict()
        self._error: BaseException | None = None
        try:
            self._load(binding.config, binding.prior_factory)
        except BaseException as exc:  # noqa: BLE001 - reported through info()/sample()
            self._error = exc
        self.load_seconds = time.time() - start

    def _load(self, config: dict, prior_factory: Callable | None) -> None:
        import torch
        from threadpoolctl import threadpool_limits

        from ensemble_da.assimilation import Assimilator
        from ensemble_da.config import ReplicaSpec, prior_key

        cfg = ReplicaSpec.model_validate(config)
        self.config = cfg
        # Every thread pool (torch's OpenMP, numpy's BLAS) gets cpus_per_replica threads, in Ray
        # workers and in-process alike: reductions split over a different number of threads
        # round differently, and members must not depend on where they ran.
        threadpool_limits(limits=cfg.threads)
        torch.set_num_threads(cfg.threads)
        self.device = select_device(cfg.device, cfg.gpus, torch.cuda.is_available())
        key = (prior_key(cfg.model, cfg.grid), self.device, prior_factory)
        self.prior_kept = key == self._prior_key
        if not self.prior_kept:
            self._prior_key, self._prior = None, None
            prior = prior_factory(self.device) if prior_factory is not None else None
            self.assimilator = Assimilator(cfg, prior=prior, device=self.device)
            self._prior_key, self._prior = key, self.assimilator.prior
        else:
            self.assimilator = Assimilator(cfg, prior=self._prior, device=self.device)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def info(self, binding: RunBinding | None = None) -> dict[str, Any]:
        """Where this replica runs: pid, host, device, torch threads, Ray node and GPU ids."""
        self._bind(binding)
        self._check()
        import torch

        return {
            "index": self.index,
            "pid": self.pid,
            "host": socket.gethostname(),
            "device": self.device,
            "threads": torch.get_num_threads(),
            "load_seconds": self.load_seconds,
            "prior_kept": self.prior_kept,
            **_ray_context(),
        }

    def _operator(self, obs, t_index: int, background: bool):
        """H over all observations of time `t_index` (assimilated and held out), physical fields.
        Kept per (time, pass): the background pass sees every observation, the analysis only
        those that passed background QC. Only the OPERATORS_KEPT most recently used are kept
        (units come in time order), so a replica's memory does not grow with the run's times;
        one needed again is built again, the same."""
        key = (t_index, background)
        if key in self._operators:
            self._operators.move_to_end(key)
        else:
            from ensemble_da.obs.operators import build_operator

            a = self.assimilator
            self._operators[key] = build_operator(obs, a.grid, a.normalization, self.config.observation_sets())
            while len(self._operators) > OPERATORS_KEPT:
                self._operators.popitem(last=False)
        return self._operators[key]

    def check_store(self, binding: RunBinding | None = None) -> None:
        """Fail (InputError) when this replica cannot reach the run store it is to write into."""
        self._bind(binding)
        self._check()
        self.sink.check()

    def sample(self, obs, t_index: int, members: Sequence[int], attempt: int = 0,
               background: bool = False, binding: RunBinding | None = None) -> tuple[UnitReport, BlockStats]:
        """Sample `members` for analysis time `t_index` given `obs` (the time's ObservationSet;
        the config's guidance decides whether it is assimilated), write the block, and return
        (UnitReport, BlockStats). `background`: draw the unguided prior and write nothing."""
        self._bind(binding)
        self._check()
        members, extra = list(members), None
        if isinstance(obs, CycleInputs):
            block, extra = self._cycle(obs, t_index, members, background)
        elif isinstance(obs, TrajectoryInputs):
            block = self.assimilator.sample_trajectory(obs, members)
        else:
            block = self.assimilator.sample(None if background else obs, t_index, members)
        t0 = time.perf_counter()
        written = True if background else self.sink.write(block.unit, attempt, block.analysis, extra)
        diagnostics = {**block.diagnostics, "write_s": time.perf_counter() - t0, "pid": float(self.pid),
                       "replica": float(self.index)}
        at_t = block.analysis[:, 0] if block.analysis.ndim == 4 else block.analysis  # a trajectory: its time 0
        stats = BlockStats.of(at_t, self._operator(getattr(obs, "observations", obs), t_index, background),
                              block.diagnostics.get("cg_residual_max", float("nan")))
        return UnitReport(block.unit, attempt, bool(written), diagnostics), stats

    def cycle(self, inputs: CycleInputs, t_index: int, members: Sequence[int], attempt: int = 0,
              binding: RunBinding | None = None) -> tuple[UnitReport, BlockStats, BlockStats]:
        """A cycled unit in one call (`CycleInputs.flow`): the background of `members` at `t_index`
        (the forecast of their analyses at t − 1, read from the store), then their analysis, written;
        (UnitReport, the analysis' BlockStats, the background's BlockStats)."""
        self._bind(binding)
        self._check()
        t0 = time.perf_counter()
        background, _ = self._cycle(inputs, t_index, list(members), True)
        b_stats = BlockStats.of(background.analysis, self._operator(inputs.observations, t_index, True))
        forecast_s = time.perf_counter() - t0
        report, stats = self.sample(inputs, t_index, members, attempt)
        report.diagnostics["forecast_s"] = forecast_s
        return report, stats, b_stats

    def _cycle(self, inputs: CycleInputs, t: int, members: list[int], background: bool):
        """Time t of a cycled run (DESIGN.md §10): the background (the forecast of the members'
        analyses at t − 1, read from the store) or the analysis (the window given the members'
        carried states, read from the store); (BlockResult, extra member fields to write)."""
        a, cfg = self.assimilator, self.config
        window = cfg.window_length()
        if background:
            previous = None if t == 0 else self.sink.read("analysis", t - 1, tuple(members))
            return BlockResult(WorkUnit(t, tuple(members)), a.forecast(t, members, previous)), None
        carried = None
        if inputs.step.conditioned:
            carried = self.sink.read("analysis" if window == 1 else "carried_state", t - 1, tuple(members))
        block, carry = a.sample_cycle(inputs, members, carried)
        return block, ({"carried_state": carry} if cfg.cycle.carry and window > 1 else None)
