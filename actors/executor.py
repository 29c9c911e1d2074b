"""The executor protocol: how a run's work units get sampled and reduced, and its in-process
implementation (one `ModelReplica` and one `Aggregator` in this process, no Ray imported).

`actors.backends.open_runtime` picks the backend; the Ray one is `actors.ray_backend.services`. Both give
the same store and metrics for the same units: replicas write the same blocks, aggregators merge
them in the same order.
"""

from __future__ import annotations

import pickle
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

from ensemble_da.assimilation import WorkUnit, flows
from ensemble_da.config import RunConfig

from actors.aggregator import Aggregator, TimeInputs, TimeResult
from actors.replica import ModelReplica, RunBinding, UnitReport
from actors.schedule import UnitQueue
from actors.writer import DirectSink, StoreWriter

__all__ = ["Executor", "Aggregation", "ReplicaStats", "InProcessExecutor", "LocalAggregation", "Runtime",
           "start_inprocess"]


@dataclass
class ReplicaStats:
    """Per-replica counts the progress bar and summary.json show."""

    index: int
    members: int = 0
    busy_seconds: float = 0.0
    restarts: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def members_per_second(self) -> float:
        return self.members / self.busy_seconds if self.busy_seconds > 0 else 0.0


class Executor(Protocol):
    """Runs work units on model replicas.

    Attributes
    ----------
    stats : list of ReplicaStats
        One per replica.
    retries : int
        Units run again (a replica failed or was lost, or a straggler was re-issued).
    bytes_received : int
        Pickled size of everything the driver received from replicas (UnitReports).
    """

    stats: list[ReplicaStats]
    retries: int
    bytes_received: int

    def run(
        self,
        units: Sequence[WorkUnit],
        observations: Sequence[Any],
        on_result: Callable[[UnitReport, Any], None],
        on_progress: Callable[["Executor"], None] | None = None,
        background: bool = False,
        after: Mapping[WorkUnit, WorkUnit] | None = None,
        max_lead: int | None = None,
        on_background: Callable[[UnitReport, Any], None] | None = None,
    ) -> None:
        """Sample and write every unit; `observations[t]` is the ObservationSet of time t.
        `on_result(report, stats)` is called once per unit (the attempt that wrote it), in this
        thread; `stats` is the unit's BlockStats or a reference to it for the aggregators.
        `background`: sample the unguided prior, write nothing, and hand `stats` as BlockStats.
        `after`: unit → the unit it waits for; `max_lead`: how many times a unit may run ahead of
        the earliest missing one (`actors.schedule.UnitQueue`). A cycled unit
        (`CycleInputs.flow`) forecasts and analyses its block in one call and hands its
        background BlockStats to `on_background(report, stats)` just before `on_result`."""
        ...

    def shutdown(self) -> None:
        """Release the replicas."""
        ...


class Aggregation(Protocol):
    """The driver's handle on the aggregators: feed blocks, collect finished times."""

    results: dict[int, TimeResult]
    bytes_received: int

    def catch_up(self, times: Sequence[int] | None = None) -> None:
        """Merge the blocks already in the store of `times` (default: every registered time)."""
        ...

    def add_times(self, times: Sequence[TimeInputs]) -> None:
        """Register more analysis times (before any of their blocks is added)."""
        ...

    def add(self, unit: WorkUnit, stats: Any) -> None: ...

    def poll(self) -> None:
        """Hand finished times to `on_time` without waiting."""
        ...

    def drain(self) -> None:
        """Wait for every block handed over so far to be merged."""
        ...


class InProcessExecutor:
    """One `ModelReplica` in this process: the `inprocess` executor."""

    def __init__(self, config: RunConfig, sink, prior_factory: Callable | None = None, cache=None):
        binding = RunBinding(uuid.uuid4().hex, config.replica_spec().model_dump(mode="json"), sink, prior_factory)
        if cache is not None and cache.local_replica is not None:
            self.replica = cache.local_replica  # a session's: it keeps its prior for an unchanged config
            self.replica.info(binding)
        else:
            self.replica = ModelReplica(binding.config, 0, sink, prior_factory, binding.token)
            if cache is not None:
                cache.local_replica = self.replica
        self.stats = [ReplicaStats(0, info=self.replica.info())]
        self.retries = 0
        self.bytes_received = 0
        self.run_seconds = 0.0

    def run(self, units, observations, on_result, on_progress=None, background: bool = False, after=None,
            max_lead=None, on_background=None) -> None:
        t0 = time.perf_counter()
        self._run(UnitQueue(units, after, max_lead), observations, on_result, on_progress, background, on_background)
        self.run_seconds += time.perf_counter() - t0

    def _run(self, queue: UnitQueue, observations, on_result, on_progress, background, on_background) -> None:
        attempt = 0
        while (unit := queue.pop(0)) is not None:
            start = time.perf_counter()
            inputs = observations[unit.t_index]
            if flows(inputs) and not background:
                report, stats, b_stats = self.replica.cycle(inputs, unit.t_index, unit.members, attempt)
                if on_background is not None:
                    on_background(report, b_stats)
            else:
                report, stats = self.replica.sample(inputs, unit.t_index, unit.members, attempt, background)
            attempt += 1
            queue.delivered(unit, 0)
            self.stats[0].members += len(unit.members)
            self.stats[0].busy_seconds += time.perf_counter() - start
            self.bytes_received += len(pickle.dumps(report))
            on_result(report, stats)
            if on_progress is not None:
                on_progress(self)

    def shutdown(self) -> None:
        pass


class LocalAggregation:
    """One `Aggregator` for every time, in this process."""

    def __init__(self, aggregator: Aggregator, on_time: Callable[[TimeResult], None]):
        self.aggregator = aggregator
        self.on_time = on_time
        self.results = aggregator.results
        self.bytes_received = 0

    def catch_up(self, times: Sequence[int] | None = None) -> None:
        for res in self.aggregator.catch_up(times):
            self.on_time(res)

    def add_times(self, times: Sequence[TimeInputs]) -> None:
        self.aggregator.add_times(times)

    def add(self, unit: WorkUnit, stats) -> None:
        for res in self.aggregator.add(unit, stats):
            self.on_time(res)

    def poll(self) -> None:
        pass

    def drain(self) -> None:
        pass


@dataclass
class Runtime:
    """A started runtime. The run store need not exist yet (a background pass runs before it is
    created): the executor is started on demand, the aggregation once the store exists."""

    start_executor: Callable[[], Executor]
    start_aggregation: Callable[[Sequence[TimeInputs], Callable[[TimeResult], None]], Aggregation]
    close: Callable[[], None] = lambda: None


def start_inprocess(config: RunConfig, store_url: str, prior_factory: Callable | None = None, cache=None) -> Runtime:
    """The in-process runtime for the run store at `store_url` (`cache`: a session's, whose
    replica it reuses)."""
    sink = DirectSink(store_url, StoreWriter(store_url))
    return Runtime(lambda: InProcessExecutor(config, sink, prior_factory, cache),
                   lambda times, on_time: LocalAggregation(Aggregator(store_url, times, config.seed), on_time))
