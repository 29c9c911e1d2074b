"""Coordinator: the Ray executor (`actors.executor.Executor`). It places model replicas on the
Ray cluster and hands them work units pull-style (issue 3, item 2).

- Placement: one placement-group bundle per replica ({CPU: cpus_per_replica, GPU:
  gpus_per_replica}), strategy SPREAD/PACK/STRICT_* from `cluster.placement`; each replica is an
  actor scheduled into its own bundle, so with `gpus_per_replica: 1` replicas get distinct GPUs.
- Pull-style: every replica holds exactly one unit; the one that finishes gets the next, so fast
  and slow replicas both stay busy.
- Faults: replicas are actors with `max_restarts=-1, max_task_retries=-1`: a replica that dies
  (process killed, node lost) is restarted — on another node when its node is gone, Ray
  re-schedules the bundle — and its unit is re-run there. Should an error still reach us
  (`RayActorError`), the unit goes back to the queue. Seeds depend only on (run seed, time,
  member) (DESIGN.md §3) and units keep their member blocks, so a re-run unit is bit-for-bit
  the lost one; results of a unit already delivered are dropped, so each (time, member) is
  delivered exactly once.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable, Sequence

from actors.executor import ReplicaStats
from actors.replica import ModelReplica
from ensemble_da.assimilation import BlockResult, WorkUnit
from ensemble_da.config import RunConfig
from ensemble_da.errors import InputError

__all__ = ["Coordinator"]


class Coordinator:
    """Runs work units on `cluster.replicas` Ray actors (Ray must be initialised).

    Parameters
    ----------
    config : RunConfig
    ready_timeout_s : float
        How long to wait for the placement group (cluster resources) before giving up.
    """

    def __init__(self, config: RunConfig, ready_timeout_s: float = 300.0):
        import ray
        from ray.util import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self._ray = ray
        self.config = config
        cl = config.cluster
        if cl.replicas < 1:
            raise InputError(f"cluster.replicas must be >= 1, got {cl.replicas}")
        bundle = {"CPU": float(cl.cpus_per_replica)}
        if cl.gpus_per_replica > 0:
            bundle["GPU"] = float(cl.gpus_per_replica)
        total = ray.cluster_resources()
        for key, need in bundle.items():
            if total.get(key, 0.0) < need * cl.replicas and cl.address == "local":
                raise InputError(
                    f"cluster.replicas={cl.replicas} x {key}={need} does not fit this machine "
                    f"({total.get(key, 0.0):g} {key} available)"
                )
        self.placement_group = placement_group([dict(bundle) for _ in range(cl.replicas)], strategy=cl.placement)
        try:
            ray.get(self.placement_group.ready(), timeout=ready_timeout_s)
        except ray.exceptions.GetTimeoutError:
            ray.util.remove_placement_group(self.placement_group)
            raise InputError(
                f"the Ray cluster could not place {cl.replicas} replicas x {bundle} with strategy "
                f"{cl.placement} within {ready_timeout_s:g} s (resources: {total})"
            ) from None
        remote = ray.remote(ModelReplica)
        tree = config.model_dump(mode="json")
        self.replicas = [
            remote.options(
                num_cpus=cl.cpus_per_replica,
                num_gpus=cl.gpus_per_replica,
                max_restarts=-1,
                max_task_retries=-1,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.placement_group, placement_group_bundle_index=i
                ),
            ).remote(tree, i)
            for i in range(cl.replicas)
        ]
        self.stats = [ReplicaStats(i) for i in range(cl.replicas)]
        self.retries = 0
        self.max_consecutive_failures = 5

    def _get(self, refs):
        """ray.get, with a bad input met inside a replica raised as itself (one line, no remote traceback)."""
        try:
            return self._ray.get(refs)
        except self._ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, InputError):
                raise exc.cause from None
            raise

    def replica_info(self) -> list[dict[str, Any]]:
        """Wait until every replica has loaded its prior; their pid, node, device, GPU ids."""
        infos = self._get([r.info.remote() for r in self.replicas])
        for s, info in zip(self.stats, infos):
            s.info = info
        return infos

    def run(
        self,
        units: Sequence[WorkUnit],
        observations: Sequence[Any],
        on_result: Callable[[BlockResult], None],
        on_progress: Callable[["Coordinator"], None] | None = None,
    ) -> None:
        """Run `units`; `observations[t]` is the ObservationSet of time t (None: the prior).

        `on_result` is called once per unit, in completion order, in this thread.
        """
        ray = self._ray
        if not all(s.info for s in self.stats):
            self.replica_info()
        obs_refs = {t: ray.put(observations[t]) for t in sorted({u.t_index for u in units})}
        queue = deque(units)
        delivered: set[WorkUnit] = set()
        idle = deque(range(len(self.replicas)))
        failures = [0] * len(self.replicas)
        inflight: dict[Any, tuple[int, WorkUnit, float]] = {}
        while queue or inflight:
            while idle and queue:
                r, unit = idle.popleft(), queue.popleft()
                ref = self.replicas[r].sample.remote(obs_refs[unit.t_index], unit.t_index, unit.members)
                inflight[ref] = (r, unit, time.perf_counter())
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for ref in ready:
                r, unit, started = inflight.pop(ref)
                try:
                    result: BlockResult = self._get(ref)
                except ray.exceptions.RayActorError:
                    # The replica is gone for good or unreachable: another one re-runs the unit.
                    self.retries += 1
                    queue.appendleft(unit)
                    failures[r] += 1
                    if failures[r] < self.max_consecutive_failures:
                        idle.append(r)
                    elif not idle and not inflight:
                        raise RuntimeError("every model replica has failed repeatedly; giving up") from None
                    time.sleep(min(0.5 * failures[r], 5.0))
                    continue
                failures[r] = 0
                idle.append(r)
                self._account(r, result, time.perf_counter() - started)
                if result.unit in delivered:
                    continue
                delivered.add(result.unit)
                on_result(result)
            if on_progress is not None:
                on_progress(self)

    def _account(self, r: int, result: BlockResult, seconds: float) -> None:
        s = self.stats[r]
        pid = int(result.diagnostics.get("pid", 0))
        if s.info and pid and pid != s.info.get("pid"):
            # The actor restarted while this unit was in flight and Ray re-ran it.
            s.restarts += 1
            self.retries += 1
            s.info = {**s.info, "pid": pid}
        s.members += len(result.unit.members)
        s.busy_seconds += seconds

    def shutdown(self) -> None:
        """Stop the replicas and release their placement group."""
        ray = self._ray
        for r in self.replicas:
            try:
                ray.kill(r, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        try:
            ray.util.remove_placement_group(self.placement_group)
        except Exception:  # noqa: BLE001
            pass
