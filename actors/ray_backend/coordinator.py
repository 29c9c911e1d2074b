"""Coordinator: the Ray executor (`actors.executor.Executor`). It places model replicas on the
Ray cluster and keeps each busy with a small queue of work units.

- Placement: one placement-group bundle per replica ({CPU: cpus_per_replica, GPU:
  gpus_per_replica}), strategy from `cluster.placement`; each replica is an actor scheduled
  into its own bundle, so with `gpus_per_replica: 1` replicas get distinct GPUs. A cluster that
  cannot place them within `cluster.placement_timeout_s` is a one-line error naming the
  resources asked for and those the cluster has.
- Queues: every replica holds up to `cluster.units_in_flight` units (default 2), so it starts the
  next unit as soon as it finishes one; the driver only receives `UnitReport`s (a few hundred
  bytes) and passes each unit's statistics on to the aggregators by reference, never fetching
  them, so no member field and no field-sized statistic reaches the driver.
- Faults: replicas are actors with `max_restarts=-1, max_task_retries=-1`: a replica process
  that dies is restarted and Ray re-runs its unit (same attempt, same claim). A replica whose
  node is gone is lost: its units are given to the other replicas at once (their attempts are
  abandoned in the claim ledger), and if Ray can place it again elsewhere it rejoins; with no
  spare capacity the run finishes on the survivors. The same holds while the replicas are still
  loading their prior: one whose placement-group bundle has lost its node is lost at once (it
  rejoins if Ray places it again), so start-up never waits on a replica that cannot come.
- Stragglers: when a unit has run longer than `cluster.straggler_factor` × the median unit time
  and a replica is idle, the unit is issued again there; whichever attempt claims the block
  first writes it and is delivered, the other writes nothing (`actors.writer`); zarr writes
  every chunk atomically (temporary file, then rename), so no chunk is ever torn.
Seeds depend only on (run seed, time, member) (DESIGN.md §3), so a unit sampled again is bit for
bit the first; each (time, member) is delivered exactly once.
"""

from __future__ import annotations

import pickle
import statistics
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from actors.executor import ReplicaStats
from actors.ray_backend.pool import ReplicaPool, release
from actors.replica import ModelReplica, RunBinding, UnitReport
from actors.schedule import UnitQueue
from ensemble_da.assimilation import WorkUnit, flows
from ensemble_da.config import RunConfig
from ensemble_da.errors import InputError

__all__ = ["Coordinator"]

NODE_CHECK_S = 1.0


@dataclass
class _Attempt:
    id: int
    replica: int
    unit: WorkUnit
    report: Any  # ObjectRef of the UnitReport
    stats: Any  # ObjectRef of the BlockStats (handed to the aggregators, never fetched here)
    started: float | None = None  # when the replica began it (its queue ahead was empty)
    background: Any = None  # ObjectRef of a cycled unit's background BlockStats (fetched: the driver reduces it)


class Coordinator:
    """Runs work units on `cluster.replicas` Ray actors (Ray must be initialised).

    Parameters
    ----------
    config : RunConfig
    sink : DirectSink or WriterSink
        How replicas write their blocks (`actors.writer`).
    ledger : actor handle of StoreWriter, optional
        The claim ledger (abandoned attempts are reported to it).
    prior_factory : callable(device) -> Denoiser, optional
        Passed to the replicas (benchmarks).
    pool : ReplicaPool, optional
        Replicas kept from an earlier run of the session: taken when their placement fits, given
        back at `shutdown` when the runs ended cleanly.
    """

    def __init__(self, config: RunConfig, sink, ledger, prior_factory: Callable | None = None,
                 pool: ReplicaPool | None = None):
        import ray
        from ray.util import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self._ray = ray
        self.config = config
        self.ledger = ledger
        cl = config.cluster
        bundle = {"CPU": float(cl.cpus_per_replica)}
        if cl.gpus_per_replica > 0:
            bundle["GPU"] = float(cl.gpus_per_replica)
        self.binding = RunBinding(uuid.uuid4().hex, config.replica_spec().model_dump(mode="json"), sink, prior_factory)
        self.pool, self.pool_key, self.clean = pool, (cl.replicas, tuple(sorted(bundle.items())), cl.placement), True
        kept = None if pool is None else pool.take(self.pool_key)
        if kept is not None:
            self.placement_group, self.replicas = kept
        else:
            self._start_replicas(ray, config, bundle, placement_group, PlacementGroupSchedulingStrategy)
        self.stats = [ReplicaStats(i) for i in range(cl.replicas)]
        # info() calls not yet answered (replicas loading their prior, or lost and maybe placed
        # again) → replica index; the run's loop lets a late one join.
        self.pending: dict[Any, int] = {r.info.remote(self.binding): i for i, r in enumerate(self.replicas)}
        self.retries = 0
        self.reissued = 0
        self.lost: set[int] = set()
        self.bytes_received = 0
        self.run_seconds = 0.0  # in run(), replicas loaded: from the first unit issued to the last delivered
        self.store_checked = False
        self.max_consecutive_failures = 5

    def _start_replicas(self, ray, config: RunConfig, bundle: dict, placement_group, strategy) -> None:
        """Place `cluster.replicas` bundles and start a replica actor in each."""
        cl = config.cluster
        total = ray.cluster_resources()
        for key, need in bundle.items():
            if total.get(key, 0.0) < need * cl.replicas and cl.address == "local":
                raise InputError(
                    f"cluster.replicas={cl.replicas} x {key}={need} does not fit this machine "
                    f"({total.get(key, 0.0):g} {key} available)"
                )
        self.placement_group = placement_group([dict(bundle) for _ in range(cl.replicas)], strategy=cl.placement)
        try:
            ray.get(self.placement_group.ready(), timeout=cl.placement_timeout_s)
        except ray.exceptions.GetTimeoutError:
            ray.util.remove_placement_group(self.placement_group)
            have = {k: v for k, v in total.items() if k in ("CPU", "GPU")}
            raise InputError(
                f"the Ray cluster could not place {cl.replicas} replicas x {bundle} ({cl.placement}) within "
                f"cluster.placement_timeout_s={cl.placement_timeout_s:g} s; the cluster has {have}"
            ) from None
        remote = ray.remote(ModelReplica)
        b = self.binding
        self.replicas = [
            remote.options(
                num_cpus=cl.cpus_per_replica,
                num_gpus=cl.gpus_per_replica,
                max_restarts=-1,
                max_task_retries=-1,
                scheduling_strategy=strategy(self.placement_group, placement_group_bundle_index=i),
            ).remote(b.config, i, b.sink, b.prior_factory, b.token)
            for i in range(cl.replicas)
        ]

    def _get(self, refs):
        """ray.get, with a bad input met inside a replica raised as itself (one line, no remote traceback)."""
        try:
            return self._ray.get(refs)
        except self._ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, InputError):
                raise exc.cause from None
            raise

    def joined(self, r: int) -> bool:
        """Replica r has loaded its prior and reported where it runs."""
        return "pid" in self.stats[r].info

    def bundle_nodes(self) -> dict[int, str | None]:
        """Replica index → the alive Ray node holding its placement-group bundle (None: no alive node)."""
        table = self._ray.util.placement_group_table(self.placement_group).get("bundles_to_node_id", {})
        alive = {n["NodeID"] for n in self._ray.nodes() if n.get("Alive")}
        return {i: table.get(i) if table.get(i) in alive else None for i in range(len(self.replicas))}

    def mark_lost(self, r: int, node_id: str | None = None) -> None:
        """Replica r is lost (its node is gone); an `info()` call watches for Ray placing it again."""
        self.lost.add(r)
        if node_id and "node_id" not in self.stats[r].info:
            self.stats[r].info = {**self.stats[r].info, "index": r, "node_id": node_id}
        if r not in self.pending.values():
            self.pending[self.replicas[r].info.remote(self.binding)] = r

    def take_info(self, ref) -> bool:
        """Record the answer of a pending `info()` call; False when its replica died instead."""
        r = self.pending.pop(ref)
        try:
            info = self._get(ref)
        except self._ray.exceptions.RayActorError:
            self.lost.add(r)
            return False
        if self.joined(r):
            self.stats[r].restarts += 1  # placed again after it was lost
        self.stats[r].info = info
        self.lost.discard(r)
        return True

    def replica_info(self) -> list[dict[str, Any]]:
        """Wait until every replica has loaded its prior or is lost; their pid, node, device, GPU ids.

        A replica whose bundle has no alive node (its node removed, no room to place it again)
        does not hold up the start: it is lost and rejoins should Ray place it later. Raises
        RuntimeError when no replica has loaded within `cluster.placement_timeout_s` of all being lost.
        """
        nodes = self.bundle_nodes()
        last_node = dict(nodes)
        all_lost_since = None
        while any(r not in self.lost for r in self.pending.values()):
            ready, _ = self._ray.wait(list(self.pending), num_returns=1, timeout=NODE_CHECK_S)
            for ref in ready:
                self.take_info(ref)
            nodes = self.bundle_nodes()
            for r in list(self.pending.values()):
                if nodes[r] is None and r not in self.lost:
                    self.mark_lost(r, last_node.get(r))
                last_node[r] = nodes[r] or last_node.get(r)
            if any(self.joined(r) for r in range(len(self.replicas))):
                continue
            all_lost = all(r in self.lost for r in range(len(self.replicas)))
            all_lost_since = (all_lost_since or time.perf_counter()) if all_lost else None
            if all_lost_since and time.perf_counter() - all_lost_since > self.config.cluster.placement_timeout_s:
                raise RuntimeError("every model replica was lost while loading its prior; giving up")
        if not any(self.joined(r) for r in range(len(self.replicas))):
            raise RuntimeError("every model replica was lost while loading its prior; giving up")
        return [s.info for s in self.stats]

    def run(
        self,
        units: Sequence[WorkUnit],
        observations: Sequence[Any],
        on_result: Callable[[UnitReport, Any], None],
        on_progress: Callable[["Coordinator"], None] | None = None,
        background: bool = False,
        after: Mapping[WorkUnit, WorkUnit] | None = None,
        max_lead: int | None = None,
        on_background: Callable[[UnitReport, Any], None] | None = None,
    ) -> None:
        """Run `units`; `observations[t]` is the ObservationSet of time t. `on_result(report,
        stats_ref)` is called once per unit, in completion order, in this thread.
        `background`: unguided prior draws, nothing written; `on_result` gets the BlockStats
        themselves (per-block moments and H x: the driver reduces the background).
        `after`, `max_lead`: the units' order (`actors.schedule.UnitQueue`). A cycled unit
        (`CycleInputs.flow`) forecasts and analyses its block in one call; `on_background(report,
        stats)` gets its background BlockStats just before `on_result`."""
        if any(r not in self.lost for r in self.pending.values()):
            self.replica_info()
        if not background and not self.store_checked:
            # The store exists now: every replica must reach it (shared mode) before writing.
            self.check_store([r for r in range(len(self.replicas)) if self.joined(r) and r not in self.lost])
            self.store_checked = True
        start = time.perf_counter()
        queue = UnitQueue(units, after, max_lead)
        self.clean = False  # until the loop returns: a replica may still be busy with this run
        _Run(self, queue, observations, on_result, on_progress, background, on_background).loop()
        self.clean = True
        self.run_seconds += time.perf_counter() - start

    def check_store(self, replicas: Sequence[int]) -> None:
        """Every replica in `replicas` can reach the run store (InputError if not); one whose node
        goes meanwhile is lost instead of waited for."""
        calls = {self.replicas[r].check_store.remote(self.binding): r for r in replicas}
        while calls:
            ready, _ = self._ray.wait(list(calls), num_returns=len(calls), timeout=NODE_CHECK_S)
            for ref in ready:
                r = calls.pop(ref)
                try:
                    self._get(ref)
                except self._ray.exceptions.RayActorError:
                    self.mark_lost(r)
            nodes = self.bundle_nodes()
            for ref, r in list(calls.items()):
                if nodes[r] is None:
                    calls.pop(ref)
                    self.mark_lost(r)

    def _account(self, r: int, report: UnitReport, seconds: float, delivered: bool) -> None:
        """Count a finished attempt: its time always, its members only when it is the one delivered
        (a re-issued straggler's twin is work, not members)."""
        s = self.stats[r]
        pid = int(report.diagnostics.get("pid", 0))
        if s.info and pid and pid != s.info.get("pid"):
            # The actor restarted while this unit was in flight and Ray re-ran it.
            s.restarts += 1
            self.retries += 1
            s.info = {**s.info, "pid": pid}
        s.members += len(report.unit.members) if delivered else 0
        s.busy_seconds += seconds

    def shutdown(self) -> None:
        """Give the replicas back to the pool when every run ended cleanly and none was lost, else
        stop them and release their placement group."""
        if self.pool is not None and self.clean and not self.lost:
            self.pool.give(self.pool_key, self.placement_group, self.replicas)
        else:
            release(self.placement_group, self.replicas)


class _Run:
    """The state of one `Coordinator.run`: queue, attempts in flight per replica, deliveries."""

    def __init__(self, co: Coordinator, queue: UnitQueue, observations, on_result, on_progress, background: bool,
                 on_background=None):
        ray = co._ray
        self.co, self.ray = co, ray
        self.background = background
        self.on_result, self.on_progress, self.on_background = on_result, on_progress, on_background
        times = sorted({u.t_index for u in queue.missing})
        self.flow = {t: flows(observations[t]) for t in times}
        self.obs_refs = {t: ray.put(observations[t]) for t in times}
        self.queue = queue
        self.missing: set[WorkUnit] = queue.missing
        self.inflight: dict[Any, _Attempt] = {}
        self.per_replica: list[deque[_Attempt]] = [deque() for _ in co.replicas]
        self.revive = co.pending  # info() calls on replicas lost or still loading → their index
        self.failures = [0] * len(co.replicas)
        self.durations: list[float] = []
        self.next_id = 0
        self.next_node_check = 0.0
        self.no_replica_since: float | None = None
        cl = co.config.cluster
        self.depth, self.factor, self.timeout = cl.units_in_flight, cl.straggler_factor, cl.placement_timeout_s

    # --- bookkeeping ---------------------------------------------------------------------
    def usable(self, r: int) -> bool:
        co = self.co
        return co.joined(r) and r not in co.lost and self.failures[r] < co.max_consecutive_failures

    def live_attempts(self, unit: WorkUnit) -> list[_Attempt]:
        return [a for a in self.inflight.values() if a.unit == unit]

    def submit(self, r: int, unit: WorkUnit) -> None:
        replica, background = self.co.replicas[r], None
        args = (self.obs_refs[unit.t_index], unit.t_index, unit.members, self.next_id)
        if self.flow[unit.t_index] and not self.background:
            report, stats, background = replica.cycle.options(num_returns=3).remote(*args, self.co.binding)
        else:
            report, stats = replica.sample.options(num_returns=2).remote(*args, self.background, self.co.binding)
        a = _Attempt(self.next_id, r, unit, report, stats, background=background)
        self.next_id += 1
        if not self.per_replica[r]:
            a.started = time.perf_counter()
        self.per_replica[r].append(a)
        self.inflight[report] = a

    def drop(self, a: _Attempt) -> None:
        self.inflight.pop(a.report, None)
        q = self.per_replica[a.replica]
        if a in q:
            was_head = q[0] is a
            q.remove(a)
            if was_head and q:
                q[0].started = time.perf_counter()

    def requeue(self, unit: WorkUnit) -> None:
        if not self.live_attempts(unit):
            self.queue.requeue(unit)

    # --- the loop --------------------------------------------------------------------------
    def loop(self) -> None:
        while self.missing:
            self.feed()
            ready, _ = self.ray.wait(list(self.inflight) + list(self.revive), num_returns=1, timeout=0.2)
            for ref in ready:
                if ref in self.revive:
                    self.revived(ref)
                elif ref in self.inflight:
                    self.finished(self.inflight[ref])
            self.check_nodes()
            self.reissue_stragglers()
            self.check_alive()
            if self.on_progress is not None:
                self.on_progress(self.co)
        self.check_nodes(force=True)  # the summary counts replicas lost even after their units were re-issued

    def can_take(self, r: int) -> bool:
        return self.usable(r) and len(self.per_replica[r]) < self.depth

    def feed(self) -> None:
        for r in range(len(self.co.replicas)):
            while self.can_take(r):
                unit = self.queue.pop(r, self.can_take)
                if unit is None:
                    break
                if unit in self.missing:
                    self.submit(r, unit)

    def finished(self, a: _Attempt) -> None:
        co = self.co
        self.drop(a)
        try:
            report: UnitReport = co._get(a.report)
        except self.ray.exceptions.RayActorError:
            # The replica is gone for good or unreachable: another one re-runs the unit.
            co.retries += 1
            self.failures[a.replica] += 1
            self.call_ledger("abandon", [a.id])
            self.requeue(a.unit)
            return
        self.failures[a.replica] = 0
        co.bytes_received += len(pickle.dumps(report))
        seconds = float(report.diagnostics.get("seconds", 0.0))
        self.durations.append(seconds)
        delivered = report.written and a.unit in self.missing
        co._account(a.replica, report, seconds, delivered)
        if delivered:
            self.queue.delivered(a.unit, a.replica)
            if a.background is not None and self.on_background is not None:
                self.on_background(report, self.ray.get(a.background))
            self.on_result(report, self.ray.get(a.stats) if self.background else a.stats)
        elif not report.written and a.unit in self.missing:
            # Another attempt holds the claim but has not delivered: a straggler (maybe frozen
            # between claiming and writing). Abandon it so the next attempt may write; should
            # it still write, its chunks are the same bytes (zarr writes each chunk atomically).
            holders = self.live_attempts(a.unit)
            self.call_ledger("abandon", [h.id for h in holders])
            self.queue.requeue(a.unit)

    def call_ledger(self, method: str, *args) -> None:
        if self.co.ledger is not None:
            getattr(self.co.ledger, method).remote(*args)

    def check_nodes(self, force: bool = False) -> None:
        """Replicas whose node is gone are lost: their units go to the others now."""
        now = time.perf_counter()
        if now < self.next_node_check and not force:
            return
        self.next_node_check = now + NODE_CHECK_S
        alive = {n["NodeID"] for n in self.ray.nodes() if n.get("Alive")}
        for r, s in enumerate(self.co.stats):
            if r in self.co.lost or s.info.get("node_id") in alive or "node_id" not in s.info:
                continue
            self.co.mark_lost(r)
            attempts = list(self.per_replica[r])
            for a in attempts:
                self.drop(a)
            self.call_ledger("abandon", [a.id for a in attempts])
            for a in attempts:
                self.co.retries += 1
                self.requeue(a.unit)

    def revived(self, ref) -> None:
        r = self.revive[ref]
        if self.co.take_info(ref) and self.co.store_checked and not self.background:
            self.co.check_store([r])

    def reissue_stragglers(self) -> None:
        """Issue again, on an idle replica, the units of a replica whose current unit has run
        longer than straggler_factor × the median unit time."""
        if not self.factor or not self.durations or self.queue.has_ready():
            return
        idle = [r for r in range(len(self.co.replicas)) if self.usable(r) and not self.per_replica[r]]
        if not idle:
            return
        limit = self.factor * statistics.median(self.durations)
        now = time.perf_counter()
        for q in self.per_replica:
            if not q or q[0].started is None or now - q[0].started <= limit:
                continue
            for a in list(q):
                if idle and a.unit in self.missing and len(self.live_attempts(a.unit)) == 1:
                    self.submit(idle.pop(0), a.unit)
                    self.co.reissued += 1
                    self.co.retries += 1

    def check_alive(self) -> None:
        """Give up when no replica has been usable for placement_timeout_s."""
        if any(self.usable(r) for r in range(len(self.co.replicas))):
            self.no_replica_since = None
            return
        now = time.perf_counter()
        if self.no_replica_since is None:
            self.no_replica_since = now
        elif now - self.no_replica_since > self.timeout:
            raise RuntimeError("every model replica has failed or was lost; giving up")
