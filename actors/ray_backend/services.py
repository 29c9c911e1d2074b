"""The Ray side of a run besides the replicas: the store writer (claim ledger, and the writer of
blocks in `cluster.store: writer` mode), the aggregator actors and their scoring tasks, placed
so that every process that touches the store can reach it.

- The writer (claim ledger) and the aggregators hold the run's state, so they live on the
  driver's node (node affinity): a lost worker node takes only replicas with it.
- `shared` store: replicas write their blocks; scoring tasks run anywhere.
- `writer` store: the store is on the driver's disk, so scoring tasks run on the driver's node
  too; replicas send blocks to the writer.

None of these actors reserves a CPU (they would otherwise compete with the replicas for the
slots of a local Ray, and wait for them); they do little work per member.
"""

from __future__ import annotations

import pickle
import uuid
from typing import Callable, Sequence

from ensemble_da.config import RunConfig

from actors.aggregator import Aggregator, TimeInputs, TimeResult, score_cells
from actors.executor import Runtime
from actors.ray_backend.pool import ReplicaPool
from actors.writer import DirectSink, NamedActor, StoreWriter, WriterSink

__all__ = ["start_ray_runtime", "RayAggregation", "RayScoreMap"]

SCORE_TASKS_IN_FLIGHT = 4


def _placement(node_id: str | None) -> dict:
    if node_id is None:
        return {}
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)}


class RayScoreMap:
    """Runs `score_cells` calls as Ray tasks (at most SCORE_TASKS_IN_FLIGHT at once), results in
    call order; on `node_id` when given (a store on that node's disk)."""

    def __init__(self, node_id: str | None):
        self.node_id = node_id

    def __call__(self, calls: list[tuple]) -> list:
        import ray

        task = ray.remote(score_cells).options(num_cpus=0, **_placement(self.node_id))
        refs, out = [], []
        for args in calls:
            refs.append(task.remote(*args))
            if len(refs) >= SCORE_TASKS_IN_FLIGHT:
                out.append(ray.get(refs.pop(0)))
        return out + ray.get(refs)


class RayAggregation:
    """The driver's handle on the aggregator actors (actor `t mod n` owns time t)."""

    def __init__(self, actors: list, on_time: Callable[[TimeResult], None]):
        import ray

        self._ray = ray
        self.actors = actors
        self.on_time = on_time
        self.pending: list = []
        self.results: dict[int, TimeResult] = {}
        self.bytes_received = 0

    def _take(self, refs) -> None:
        for results in self._ray.get(refs):
            self.bytes_received += len(pickle.dumps(results))
            for res in results:
                self.results[res.t_index] = res
                self.on_time(res)

    def catch_up(self, times: Sequence[int] | None = None) -> None:
        if times is None:
            self._take([a.catch_up.remote() for a in self.actors])
            return
        n = len(self.actors)
        # Tasks of one caller run on an actor in the order they were sent: blocks added before
        # this call are merged before it, those added after it wait for the blocks read back.
        self._take([self.actors[i].catch_up.remote([t for t in times if t % n == i])
                    for i in sorted({t % n for t in times})])

    def add_times(self, times: Sequence[TimeInputs]) -> None:
        n = len(self.actors)
        self._ray.get([a.add_times.remote([ti for ti in times if ti.t_index % n == i]) for i, a in enumerate(self.actors)])

    def add(self, unit, stats) -> None:
        self.pending.append(self.actors[unit.t_index % len(self.actors)].add.remote(unit, stats))

    def poll(self) -> None:
        if not self.pending:
            return
        ready, self.pending = self._ray.wait(self.pending, num_returns=len(self.pending), timeout=0)
        self._take(ready)

    def drain(self) -> None:
        refs, self.pending = self.pending, []
        self._take(refs)

    def shutdown(self) -> None:
        for a in self.actors:
            self._ray.kill(a)


def start_ray_runtime(config: RunConfig, store_url: str, prior_factory: Callable | None = None,
                      pool: ReplicaPool | None = None) -> Runtime:
    """The writer actor for the run store at `store_url` now; replicas (from `pool` when it
    keeps fitting ones) and aggregator actors on demand (Ray initialised)."""
    import ray

    from actors.ray_backend.coordinator import Coordinator

    cl = config.cluster
    driver_node = ray.get_runtime_context().get_node_id()
    local = driver_node if cl.store == "writer" else None
    name = f"ensemble-da-writer-{uuid.uuid4().hex}"
    writer = ray.remote(StoreWriter).options(name=name, num_cpus=0, **_placement(driver_node)).remote(store_url)
    by_name = NamedActor(name)  # what replicas get: a handle as a constructor argument makes Ray warn
    sink = WriterSink(by_name) if cl.store == "writer" else DirectSink(store_url, by_name)
    started: list[RayAggregation] = []

    def start_aggregation(times: Sequence[TimeInputs], on_time) -> RayAggregation:
        n = min(cl.aggregators, len(config.times))  # actor t mod n owns time t, also of times added later
        remote = ray.remote(Aggregator).options(num_cpus=0, **_placement(driver_node))
        actors = [remote.remote(store_url, [ti for ti in times if ti.t_index % n == i], config.seed,
                                RayScoreMap(local)) for i in range(n)]
        started.append(RayAggregation(actors, on_time))
        return started[-1]

    def close() -> None:
        for aggregation in started:
            aggregation.shutdown()
        ray.kill(writer)

    return Runtime(lambda: Coordinator(config, sink, writer, prior_factory, pool), start_aggregation, close)
