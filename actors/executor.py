"""The executor protocol: how a run's work units get sampled, in this process or on Ray.

`open_executor(config)` picks one from `cluster.address`: `inprocess` runs one `ModelReplica` in
this process (no Ray is imported); anything else runs the `Coordinator`'s Ray replicas. Both
deliver the same results for the same units, so a run's store does not depend on the executor.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Protocol, Sequence

import numpy as np

from ensemble_da.assimilation import BlockResult, WorkUnit
from ensemble_da.config import RunConfig

from actors.replica import ModelReplica

__all__ = ["Executor", "ReplicaStats", "InProcessExecutor", "open_executor"]


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
        Units re-run after a replica failed.
    """

    stats: list[ReplicaStats]
    retries: int

    def run(
        self,
        units: Sequence[WorkUnit],
        observations: Sequence[Any],
        on_result: Callable[[BlockResult], None],
        on_progress: Callable[["Executor"], None] | None = None,
    ) -> None:
        """Sample every unit; `observations[t]` is the ObservationSet of time t (None: the prior).
        `on_result` is called once per unit, in this thread, in completion order."""
        ...

    def shutdown(self) -> None:
        """Release the replicas."""
        ...


class InProcessExecutor:
    """One `ModelReplica` in this process: the `inprocess` executor."""

    def __init__(self, config: RunConfig):
        self.replica = ModelReplica(config.model_dump(mode="json"), 0)
        self.stats = [ReplicaStats(0, info=self.replica.info())]
        self.retries = 0

    def run(self, units, observations, on_result, on_progress=None) -> None:
        for unit in units:
            start = time.perf_counter()
            result = self.replica.sample(observations[unit.t_index], unit.t_index, unit.members)
            self.stats[0].members += len(unit.members)
            self.stats[0].busy_seconds += time.perf_counter() - start
            on_result(result)
            if on_progress is not None:
                on_progress(self)

    def shutdown(self) -> None:
        pass


def open_executor(config: RunConfig) -> tuple[Callable[[], Executor], ContextManager]:
    """(factory, session) for the executor `cluster.address` asks for: enter the session (Ray up,
    or nothing in-process) first, then call the factory to start the replicas."""
    if config.cluster.address == "inprocess":
        return (lambda: InProcessExecutor(config)), contextlib.nullcontext()
    from actors.coordinator import Coordinator
    from actors.runtime import ray_session

    cl = config.cluster
    session = ray_session(cl.address, num_cpus=int(np.ceil(cl.replicas * cl.cpus_per_replica)))
    return (lambda: Coordinator(config)), session
