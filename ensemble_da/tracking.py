"""MLflow tracking of a run (DESIGN.md §7, §8): params = the flattened config, metrics with the
§7 names (one batch per analysis time, step = time index), artifacts = config, summary, figures.

Runs of one experiment are comparable in the MLflow UI: the same metric names, params flattened
from the config, and tags naming what a run is (`run_tags`: prior kind, guidance method, nside,
members). A new SQLite store is safe under concurrent first use (a UQ sweep starting many runs
at once): creating the schema and the experiment happens under a file lock beside the database
(`<db>.lock`), since MLflow's own schema creation is not safe against a second process
(`table … already exists`).

A grown ensemble (`--resume --set ensemble.members=N`) gets a new MLflow run (`Tracker(...,
grown_from=old_run_id)`): params cannot change in MLflow, and a second batch of metrics at the
same steps would mix two ensembles in one history.

Only the driver/aggregator uses this. Tracking never stops a run: the first failure (store
unreachable, bad URI) is recorded in `Tracker.error`, later calls do nothing, and the run
finishes and says that tracking failed. The store is `tracking.uri`, else MLFLOW_TRACKING_URI,
else `sqlite:///<DIR>/mlflow.db` with artifacts under `<DIR>/mlartifacts`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

__all__ = ["Tracker", "flatten", "resolve_tracking_uri", "run_tags", "store_lock", "INHERITED_TAGS"]

# Tags a grown run's new MLflow run takes from the run it replaces (with every `sweep.<key>`, and
# its run name): its place in a sweep.
INHERITED_TAGS = ("mlflow.parentRunId", "sweep_index")
MAX_PARAM_LENGTH = 6000
_BATCH = 100
# Longest wait for another process creating the same SQLite store (schema creation takes ~1 s).
STORE_LOCK_TIMEOUT_S = 300.0


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → {"a.b.c": "value"}; a list of sections by each one's `name` (else its index),
    other lists and None as their YAML-ish text."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):  # a list of sections (observation sets): by name, else index
                out.update(flatten(item, f"{name}.{item.get('name', i)}."))
        else:
            out[name] = str(value)[:MAX_PARAM_LENGTH]
    return out


def resolve_tracking_uri(configured: str | None, run_dir: Path) -> str:
    """The tracking store of a run: config, then MLFLOW_TRACKING_URI, then SQLite in the run dir."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def run_tags(config: Mapping[str, Any]) -> dict[str, str]:
    """Tags that make runs of one experiment comparable at a glance (from the resolved config tree):
    prior kind, guidance method, nside, members, observation source (`name:source` per set of several)."""
    obs = config["observations"]
    return {
        "prior": str(config["model"]["kind"]),
        "guidance": str(config["guidance"]["method"]),
        "nside": str(config["grid"]["nside"]),
        "members": str(config["ensemble"]["members"]),
        "observations": ",".join(f"{o.get('name', 'obs')}:{o['source']}" for o in obs) if isinstance(obs, list)
                        else str(obs["source"]),
    }


def store_lock(uri: str):
    """A file lock serialising first use of a SQLite store (`<db>.lock`); a no-op for other stores."""
    import contextlib

    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    from filelock import FileLock

    db = Path(uri[len("sqlite:///"):])
    return FileLock(str(db) + ".lock", timeout=STORE_LOCK_TIMEOUT_S)


class Tracker:
    """One MLflow run, failure-tolerant.

    Parameters
    ----------
    uri : str
        Tracking URI (see `resolve_tracking_uri`).
    experiment : str
        Experiment name (created if missing).
    run_name : str
    run_dir : Path
        The run directory (artifact root of a default SQLite store).
    run_id : str, optional
        Continue this MLflow run (`--resume`) instead of starting a new one.
    grown_from : str, optional
        Start a new run that replaces this one (a grown ensemble: params cannot change, and one
        metric history per run): in its experiment, with its name, its `INHERITED_TAGS` (sweep
        parent and tags) and the tag `grown_from`.
    """

    def __init__(self, uri: str, experiment: str, run_name: str, run_dir: Path, run_id: str | None = None,
                 grown_from: str | None = None):
        self.uri = uri
        self.run_id: str | None = None
        self.error: str | None = None
        # An unreachable server must not hold a run for minutes of HTTP retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        try:
            from mlflow import MlflowClient

            # MLflow announces its SQLite schema migrations at INFO; our users need only failures.
            logging.getLogger("mlflow").setLevel(logging.WARNING)
            logging.getLogger("alembic").setLevel(logging.WARNING)

            with store_lock(uri):
                self.client = MlflowClient(tracking_uri=uri)
                if grown_from is None or not self._follow(grown_from):
                    self._start(experiment, run_name, run_dir, run_id)
                    if grown_from is not None:  # a run the store does not know: still say what it grew from
                        self.client.set_tag(self.run_id, "grown_from", grown_from)
        except Exception as exc:  # noqa: BLE001 - tracking must not stop the run
            self._fail(exc)

    def _start(self, experiment: str, run_name: str, run_dir: Path, run_id: str | None) -> None:
        """Continue `run_id` or create the experiment (if new) and a run; the first call on a
        new SQLite store also creates its schema (hence under `store_lock`)."""
        if run_id is not None:
            try:
                self.client.update_run(run_id, status="RUNNING")
                self.run_id = run_id
                return
            except Exception:  # noqa: BLE001 - a run the store does not know: start anew
                pass
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = None
            if self.uri.startswith("sqlite:///") and Path(self.uri[len("sqlite:///"):]).parent == Path(run_dir).resolve():
                location = (Path(run_dir).resolve() / "mlartifacts").as_uri()
            exp_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            exp_id = exp.experiment_id
        self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id

    def _follow(self, old_id: str) -> bool:
        """A new run in `old_id`'s experiment, with its inherited tags and `grown_from`; False when
        the store does not know `old_id`."""
        try:
            old = self.client.get_run(old_id)
        except Exception:  # noqa: BLE001 - deleted, or another store
            return False
        tags = {k: v for k, v in old.data.tags.items() if k in INHERITED_TAGS or k.startswith("sweep.")}
        self.run_id = self.client.create_run(old.info.experiment_id, tags={**tags, "grown_from": old_id},
                                             run_name=old.info.run_name).info.run_id
        return True

    @property
    def ok(self) -> bool:
        return self.error is None and self.run_id is not None

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.error = f"{type(exc).__name__}: {first[:300]}"

    def log_params(self, params: Mapping[str, str]) -> None:
        """Log params (e.g. `flatten(config)`); skipped on a resumed run that already has them."""
        if not self.ok:
            return
        from mlflow.entities import Param

        try:
            have = self.client.get_run(self.run_id).data.params
            items = [Param(k, v) for k, v in params.items() if k not in have]
            for i in range(0, len(items), _BATCH):
                self.client.log_batch(self.run_id, params=items[i : i + _BATCH])
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """One batch of scalar metrics at `step` (the analysis time index)."""
        if not self.ok:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        try:
            for i in range(0, len(items), _BATCH):
                self.client.log_batch(self.run_id, metrics=items[i : i + _BATCH])
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def log_artifacts(self, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        if not self.ok:
            return
        try:
            for p in paths:
                self.client.log_artifact(self.run_id, str(p), artifact_path=artifact_path)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if not self.ok:
            return
        try:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, v)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def end(self, status: str = "FINISHED") -> None:
        """Close the MLflow run (FINISHED, FAILED or KILLED)."""
        if not self.ok:
            return
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
