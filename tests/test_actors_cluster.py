"""The Ray runtime on a real multi-node cluster (`ray.cluster_utils.Cluster`: a head and three
worker nodes with one logical GPU each), all on 127.0.0.1 (RAY-LOOPBACK.md).

Shown: replicas land on distinct GPUs of distinct nodes and the store equals the in-process run
for the same seeds; a replica process killed mid-unit and a worker node removed mid-run both
leave a complete store, every unit delivered once, identical to the fault-free run.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before ray is imported: loopback only
os.environ["RAY_AUTH_MODE"] = "disabled"

import pytest  # noqa: E402

from actors.run import run_pipeline  # noqa: E402
from actors.runtime import import_ray_loopback  # noqa: E402
from ray_helpers import UNITS, assert_same_store, config, is_loopback, listening_addresses  # noqa: E402

ray = import_ray_loopback()
from ray.cluster_utils import Cluster  # noqa: E402

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

    def watch(result, executor):
        seen.setdefault("listen", listening_addresses())

    cfg = config(address=cluster.address, replicas=2, gpus_per_replica=1, placement="SPREAD")
    result = run_pipeline(cfg, tmp_path / "run", progress=False, on_unit=watch)
    infos = result.summary["replicas"]
    assert len(infos) == 2
    worker_nodes = {n.node_id for n in cluster.worker_nodes}
    assert all(len(i["gpu_ids"]) == 1 for i in infos)
    assert len({i["node_id"] for i in infos}) == 2 and {i["node_id"] for i in infos} <= worker_nodes
    assert len({(i["node_id"], i["gpu_ids"][0]) for i in infos}) == 2
    assert all(i["device"] == "cpu" for i in infos)  # logical GPUs only: the replica falls back to CPU
    assert seen["listen"] and all(is_loopback(ip) for ip in seen["listen"]), seen["listen"]
    assert result.summary["retries"] == 0
    assert_same_store(baseline, tmp_path / "run")


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


def test_worker_node_removed_mid_run(cluster, baseline, tmp_path):
    """Last in this module: it leaves the cluster one node short."""
    delivered = []

    def remove_node(result, executor):
        delivered.append(result.unit)
        if len(delivered) == 2:
            node_id = _other_replica(result, executor).info["node_id"]
            node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
            cluster.remove_node(node, allow_graceful=False)

    cfg = config(address=cluster.address, replicas=2, gpus_per_replica=1)
    result = run_pipeline(cfg, tmp_path / "run", progress=False, on_unit=remove_node)
    assert len(cluster.worker_nodes) == 2
    assert result.summary["retries"] >= 1
    assert len(delivered) == len(set(delivered)) == UNITS
    assert_same_store(baseline, tmp_path / "run")
