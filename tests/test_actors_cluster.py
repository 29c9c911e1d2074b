"""The Ray runtime on a real multi-node cluster (`ray.cluster_utils.Cluster`: a head and three
worker nodes with one logical GPU each), all on 127.0.0.1 (RAY-LOOPBACK.md).

Shown: replicas land on distinct GPUs of distinct nodes and the store equals the in-process run
for the same seeds, while the driver receives only small reports (never a member field); a
replica process killed mid-unit, a frozen replica (a straggler), a run resumed on Ray with the
writer-actor store, and a worker node lost with no spare capacity all leave a complete store,
every unit delivered once, identical to the fault-free run; a cluster that cannot place the
replicas is one clear error.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import tempfile
import threading
import time

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before ray is imported: loopback only
os.environ["RAY_AUTH_MODE"] = "disabled"

import pytest  # noqa: E402

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from actors.run import run_pipeline  # noqa: E402
from actors.ray_backend.session import import_ray_loopback  # noqa: E402
from ensemble_da.errors import InputError  # noqa: E402
import ray_helpers  # noqa: E402
from ray_helpers import (  # noqa: E402
    UNITS, SlowLoadingPrior, assert_same_store, config, is_loopback, listening_addresses,
)

ray = import_ray_loopback()
from ray.cluster_utils import Cluster  # noqa: E402

# Ray workers cannot import this test folder: what they get from ray_helpers (the stand-in
# prior factory) travels by value.
ray.cloudpickle.register_pickle_by_value(ray_helpers)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    # A short private temp dir: Ray's socket paths must stay under the unix-socket length limit,
    # and a stale session file elsewhere cannot capture this cluster.
    temp = tempfile.mkdtemp(prefix="eda-ray-", dir="/tmp")
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp
    c = Cluster(
        initialize_head=True,
        head_node_args=dict(
            num_cpus=1, num_gpus=0,
            # Fast failure detection: a removed node is noticed in seconds.
            _system_config={"health_check_period_ms": 500, "health_check_timeout_ms": 500,
                            "health_check_failure_threshold": 2},
        ),
    )
    try:
        for _ in range(3):
            c.add_node(num_cpus=1, num_gpus=1)
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False, logging_level="warning")
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
    if old is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = old
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """The same run in-process (no Ray): the reference every Ray run must equal."""
    out = tmp_path_factory.mktemp("inprocess") / "run"
    run_pipeline(config(), out, progress=False)
    return out


def test_replicas_on_distinct_gpus_and_nodes_equal_inprocess(cluster, baseline, tmp_path):
    seen = {}
    reports = []

    def watch(result, executor):
        seen.setdefault("listen", listening_addresses())
        reports.append(result)

    # No re-issue of slow units: on a busy CI machine a slow unit is not a fault to count here.
    cfg = config(address=cluster.address, replicas=2, gpus_per_replica=1, placement="SPREAD", straggler_factor=0)
    result = run_pipeline(cfg, tmp_path / "run", progress=False, on_unit=watch)
    infos = result.summary["replicas"]
    assert len(infos) == 2
    worker_nodes = {n.node_id for n in cluster.worker_nodes}
    assert all(len(i["gpu_ids"]) == 1 for i in infos)
    assert len({i["node_id"] for i in infos}) == 2 and {i["node_id"] for i in infos} <= worker_nodes
    assert len({(i["node_id"], i["gpu_ids"][0]) for i in infos}) == 2
    assert all(i["device"] == "cpu" for i in infos)  # cluster.device=cpu: logical GPUs as scheduling slots
    assert seen["listen"] and all(is_loopback(ip) for ip in seen["listen"]), seen["listen"]
    assert result.summary["retries"] == 0
    assert_same_store(baseline, tmp_path / "run")
    # What crosses to the driver: a report per unit with scalars only, smaller than one member
    # field (3 channels x 192 cells float32 = 2304 bytes); statistics go to the aggregators.
    member_bytes = 3 * 192 * 4
    assert len(reports) == UNITS
    for rep in reports:
        assert all(isinstance(v, float) for v in rep.diagnostics.values())
        assert not any(isinstance(v, np.ndarray) for v in vars(rep).values())
        assert len(pickle.dumps(rep)) < member_bytes / 2
    assert result.summary["driver_bytes_received"] / 12 < member_bytes


def _exactly_gpu_workers(cluster, n: int) -> None:
    """Make the cluster have exactly `n` worker nodes (one logical GPU each): a node-loss test
    must know the spare capacity, whatever the tests before it removed."""
    while len(cluster.worker_nodes) < n:
        cluster.add_node(num_cpus=1, num_gpus=1)
    while len(cluster.worker_nodes) > n:
        cluster.remove_node(next(iter(cluster.worker_nodes)))
    cluster.wait_for_nodes()


def _within(seconds: float, fn, *args, **kwargs):
    """fn(*args, **kwargs) in a thread; its result, or a test failure (not a hang) after `seconds`."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    t0 = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the run hung: still going after {seconds:g} s"
    out["seconds"] = time.monotonic() - t0
    if "error" in out:
        raise out["error"]
    return out["value"], out["seconds"]


def _remove_nodes_while_loading(cluster, marks, replicas: int, remove: int, removed: list) -> threading.Thread:
    """Once `replicas` replicas have begun loading their prior (SlowLoadingPrior marks), remove
    (hard, as a crash) the nodes of the first `remove` of them, by node id."""

    def target():
        deadline = time.monotonic() + 300  # replicas start slowly on a loaded machine
        while len(list(marks.iterdir())) < replicas and time.monotonic() < deadline:
            time.sleep(0.05)
        for node_id in sorted(p.name for p in marks.iterdir())[:remove]:
            node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
            cluster.remove_node(node, allow_graceful=False)
            removed.append(node_id)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def _other_replica(result, executor):
    index = int(result.diagnostics["replica"])
    return next(s for s in executor.stats if s.index != index)


def test_replica_killed_mid_unit(cluster, baseline, tmp_path):
    delivered = []

    def kill_other(result, executor):
        delivered.append(result.unit)
        if len(delivered) == 2:
            # The other replica is busy with its unit (pull-style): kill its process.
            os.kill(int(_other_replica(result, executor).info["pid"]), signal.SIGKILL)

    cfg = config(address=cluster.address, replicas=2, gpus_per_replica=1)
    result = run_pipeline(cfg, tmp_path / "run", progress=False, on_unit=kill_other)
    assert result.summary["retries"] >= 1
    assert len(delivered) == len(set(delivered)) == UNITS
    assert_same_store(baseline, tmp_path / "run")


def _wait_until_stopped(process: psutil.Process, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while process.status() != psutil.STATUS_STOPPED:
        assert time.monotonic() < deadline, f"process {process.pid} did not stop"
        time.sleep(0.01)


def test_a_frozen_replica_is_a_straggler_whose_units_are_reissued(cluster, baseline, tmp_path):
    delivered, frozen, stopped = [], [], []

    def freeze_other(result, executor):
        delivered.append(result.unit)
        if len(delivered) == 1:
            # The other replica holds units (2 in flight): stop its process, as a hung GPU would.
            pid = int(_other_replica(result, executor).info["pid"])
            os.kill(pid, signal.SIGSTOP)
            frozen.append(psutil.Process(pid))
            _wait_until_stopped(frozen[0])  # the signal is delivered asynchronously
        else:  # a later delivery: the frozen process must still be stopped
            stopped.append(frozen[0].status() == psutil.STATUS_STOPPED)

    cfg = config(address=cluster.address, replicas=2, gpus_per_replica=1, straggler_factor=2.0)
    try:
        result = run_pipeline(cfg, tmp_path / "run", progress=False, on_unit=freeze_other)
    finally:
        if frozen and frozen[0].is_running():
            frozen[0].send_signal(signal.SIGCONT)
    # Every unit after the first was delivered while the frozen replica was stopped: the ones it
    # held were re-issued and finished elsewhere.
    assert len(stopped) == UNITS - 1 and all(stopped)
    assert result.summary["reissued"] >= 1
    assert len(delivered) == len(set(delivered)) == UNITS
    assert_same_store(baseline, tmp_path / "run")


def test_resume_on_ray_with_the_writer_store(cluster, baseline, tmp_path):
    out = tmp_path / "run"
    delivered = []

    def interrupt(result, executor):
        delivered.append(result.unit)
        if len(delivered) == 3:  # half of the units written in-process
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config(), out, progress=False, on_unit=interrupt)
    cfg = config(address=cluster.address, replicas=2, gpus_per_replica=1, store="writer")
    result = run_pipeline(cfg, out, resume=True, progress=False)
    assert result.summary["members_sampled"] == 6 and result.summary["members_done"] == 12
    assert_same_store(baseline, out)


def test_replicas_that_cannot_be_placed_are_one_clear_error(cluster, tmp_path):
    cfg = config(address=cluster.address, replicas=4, gpus_per_replica=1, placement_timeout_s=2)
    with pytest.raises(InputError) as err:
        run_pipeline(cfg, tmp_path / "run", progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "4 replicas" in msg and "'GPU': 1.0" in msg and "placement_timeout_s" in msg


def test_node_lost_without_spare_capacity_finishes_on_the_survivors(cluster, baseline, tmp_path):
    """Three replicas fill the three GPU nodes; one node is removed while its replica holds units,
    and no node can take it."""
    _exactly_gpu_workers(cluster, 3)
    delivered, victim, late = [], {}, []

    def remove_node(result, executor):
        delivered.append(result.unit)
        if victim and int(result.diagnostics["replica"]) == victim["index"]:
            late.append(result.unit)  # finished before its node went, collected after
        if len(delivered) == 2:
            idle = min(executor.stats, key=lambda s: s.members)  # has delivered least: holds units
            victim.update(index=idle.index, members=idle.members)
            node = next(n for n in cluster.worker_nodes if n.node_id == idle.info["node_id"])
            cluster.remove_node(node, allow_graceful=False)

    # No straggler re-issue: the survivors get the lost replica's units only through its node
    # being declared gone, which the summary must then count (a re-issue could otherwise finish
    # the run before Ray's health check marks the node dead).
    cfg = config(address=cluster.address, replicas=3, gpus_per_replica=1, straggler_factor=0)
    result = run_pipeline(cfg, tmp_path / "run", progress=False, on_unit=remove_node)
    assert len(cluster.worker_nodes) == 2
    summary = result.summary
    assert summary["replicas_lost"] == 1, summary["replicas"]
    # The lost replica held two units (units_in_flight): a result it had finished before its node
    # went may still be collected, but at least one unit was run again by the survivors.
    assert len(late) < 2 and summary["retries"] >= 1
    assert summary["replicas"][victim["index"]]["members"] == victim["members"] + 2 * len(late)
    assert len(delivered) == len(set(delivered)) == UNITS
    assert_same_store(baseline, tmp_path / "run")


def test_node_lost_while_replicas_start_finishes_on_the_survivors(cluster, baseline, tmp_path):
    """Three replicas fill the three GPU nodes; one node is removed while the replicas are still
    loading their prior (before any has reported in), and no node can take its replica."""
    _exactly_gpu_workers(cluster, 3)
    marks = tmp_path / "loading"
    marks.mkdir()
    cfg = config(address=cluster.address, replicas=3, gpus_per_replica=1)
    removed: list[str] = []
    remover = _remove_nodes_while_loading(cluster, marks, 3, 1, removed)
    result, seconds = _within(120, run_pipeline, cfg, tmp_path / "run", progress=False,
                              prior_factory=SlowLoadingPrior(cfg, marks, load_s=4.0))
    remover.join(5)
    assert len(removed) == 1 and len(cluster.worker_nodes) == 2
    summary = result.summary
    assert summary["replicas_lost"] == 1, summary["replicas"]
    lost = [r for r in summary["replicas"] if r.get("node_id") == removed[0]]
    assert len(lost) == 1 and lost[0]["members"] == 0
    assert sum(r["members"] for r in summary["replicas"]) == 12
    assert_same_store(baseline, tmp_path / "run")
    print(f"run with a node lost at start-up: {seconds:.1f} s")


def test_flowing_cycle_that_loses_a_node_mid_run_equals_the_fault_free_run(cluster, tmp_path):
    """A cycle without a per-time barrier (`cycle.first_guess_check: false`) on 2 replicas; the node
    of one is removed (hard) after 5 units, with its blocks part-way through the times. Its units
    run again on the survivor from the store, and every member, statistic and background field
    equals the fault-free in-process run."""
    from test_cycle_flow import _config as flow_config
    from test_cycle_resume import _assert_same_run

    _exactly_gpu_workers(cluster, 2)
    reference = tmp_path / "inprocess"
    run_pipeline(flow_config(), reference, progress=False)
    delivered, removed = [], []

    def remove_node(result, executor):
        delivered.append(result.unit)
        if len(delivered) == 5:
            other = _other_replica(result, executor)
            node = next(n for n in cluster.worker_nodes if n.node_id == other.info["node_id"])
            cluster.remove_node(node, allow_graceful=False)
            removed.append(other.index)

    cfg = flow_config(cluster.address, replicas=2, gpus_per_replica=1, straggler_factor=0)
    result = run_pipeline(cfg, tmp_path / "ray", progress=False, on_unit=remove_node)
    assert removed and result.summary["replicas_lost"] == 1, result.summary["replicas"]
    assert len(delivered) == len(set(delivered)) == 4 * 6
    _assert_same_run(reference, tmp_path / "ray")
