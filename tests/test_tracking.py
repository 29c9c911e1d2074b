"""MLflow tracking (ensemble_da/tracking.py) against a real SQLite store, read back with
MlflowClient; and an unreachable store, which must not stop anything."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ensemble_da.config import RunConfig
from ensemble_da.tracking import Tracker, flatten, resolve_tracking_uri, run_tags


def test_flatten_config():
    flat = flatten(RunConfig().model_dump(mode="json"))
    assert flat["model.kind"] == "gaussian"
    assert flat["cluster.replicas"] == "2"
    assert flat["times"] == "['2020-01-01T00:00']"
    assert flat["tracking.uri"] == "None"


def test_default_uri_is_sqlite_in_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(None, tmp_path) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("sqlite:///x.db", tmp_path) == "sqlite:///x.db"


def test_params_metrics_artifacts_read_back(tmp_path):
    uri = resolve_tracking_uri(None, tmp_path)
    tracker = Tracker(uri, "exp", "run-a", tmp_path)
    assert tracker.ok, tracker.error
    params = {f"p{i}": str(i) for i in range(150)}  # more than one batch of 100
    tracker.log_params(params)
    tracker.log_metrics({"rmse/T850": 1.5, "ssr/T850": 0.9}, step=0)
    tracker.log_metrics({"rmse/T850": 1.25}, step=1)
    art = tmp_path / "summary.json"
    art.write_text("{}")
    tracker.log_artifacts([art])
    tracker.end()

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run-a"
    assert run.data.params == params
    history = client.get_metric_history(tracker.run_id, "rmse/T850")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(0, 1.5), (1, 1.25)]
    assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["summary.json"]
    assert (tmp_path / "mlartifacts").is_dir()  # the default store keeps artifacts in the run dir

    # --resume continues the same MLflow run and does not log its params twice.
    again = Tracker(uri, "exp", "run-a", tmp_path, run_id=tracker.run_id)
    assert again.run_id == tracker.run_id
    again.log_params(params)
    again.end()
    assert client.get_run(tracker.run_id).data.params == params


def test_unreachable_store_is_reported_not_raised(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    start = time.perf_counter()
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    tracker = Tracker("http://127.0.0.1:9", "exp", "run", tmp_path)
    assert not tracker.ok and tracker.error
    tracker.log_params({"a": "1"})
    tracker.log_metrics({"rmse/T850": 1.0}, step=0)
    tracker.log_artifacts([tmp_path])
    tracker.end()
    assert time.perf_counter() - start < 60  # no minutes of retries (a bound, not a benchmark)


@pytest.mark.parametrize("uri", ["sqlite:///{tmp}/a-file/mlflow.db", "notascheme://x"])
def test_bad_store_uri_is_reported(tmp_path, uri):
    (tmp_path / "a-file").write_text("not a directory")
    tracker = Tracker(uri.format(tmp=tmp_path), "exp", "run", tmp_path)
    assert not tracker.ok and tracker.error


_CONCURRENT_RUN = r"""
import sys, time
from pathlib import Path
import mlflow  # imported before the start signal, so the processes really start together
from ensemble_da.tracking import Tracker

uri, tmp, name = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
(tmp / f"ready-{name}").touch()
while not (tmp / "go").exists():
    time.sleep(0.005)
tracker = Tracker(uri, "sweep", name, tmp)
tracker.log_params({"member": name})
tracker.log_metrics({"rmse/T850": float(name[-1])}, step=0)
tracker.end()
print(tracker.error or "ok")
"""


@pytest.mark.slow  # 3 Python processes importing MLflow
def test_concurrent_first_use_of_a_new_sqlite_store(tmp_path):
    """A UQ sweep starts several runs at once on a store that does not exist yet: every run is
    tracked (without the lock MLflow's schema creation races: `table ... already exists`)."""
    import os
    import subprocess
    import sys

    n = 3
    uri = f"sqlite:///{tmp_path / 'sweep.db'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", _CONCURRENT_RUN, uri, str(tmp_path), f"run{i}"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    deadline = time.time() + 120
    while sum((tmp_path / f"ready-run{i}").exists() for i in range(n)) < n and time.time() < deadline:
        time.sleep(0.05)
    (tmp_path / "go").touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert [o[0].strip() for o in outs] == ["ok"] * n, [o[1][-2000:] for o in outs]

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("sweep")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"run{i}" for i in range(n)]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert sorted(r.data.metrics["rmse/T850"] for r in runs) == [float(i) for i in range(n)]


def test_run_tags_name_prior_guidance_grid_members():
    cfg = RunConfig.model_validate({"grid": {"nside": 32}, "ensemble": {"members": 64},
                                    "guidance": {"method": "mmps"}, "model": {"kind": "gaussian"}})
    assert run_tags(cfg.model_dump(mode="json")) == {
        "prior": "gaussian", "guidance": "mmps", "nside": "32", "members": "64", "observations": "synthetic"}
