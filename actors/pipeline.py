"""The `ensemble-da run` job (DESIGN.md §7, §8; issue 3): config → work units → replicas →
store + streaming statistics → MLflow, summary, figures.

One pipeline, two executors: `cluster.address: inprocess` samples in this process with one
`ModelReplica` (no Ray is imported); any other address runs the same units on Ray replicas
through the `Coordinator`. Both deliver the same `BlockResult`s for the same units, which this
module alone writes (one writer: chunks are never shared) and aggregates in a fixed order, so the
two give the same store.

Everything that can be wrong with the input (config, files, channels, the run directory) is
checked before the run directory is touched.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import yaml

import ensemble_da
from ensemble_da.assimilation import BlockResult, WorkUnit, exact_posteriors
from ensemble_da.config import RunConfig, config_from_tree, load_config
from ensemble_da.errors import InputError
from ensemble_da.io import STORE_NAME, RunStore, StoreLayout
from ensemble_da.obs.operators import ObservationOperator

from actors.aggregator import Aggregator, TimeResult
from actors.coordinator import ReplicaStats
from actors.replica import ModelReplica

__all__ = ["run_pipeline", "run_from_cli", "RunResult", "InProcessExecutor", "RESUME_FREE_KEYS"]

# Config sections that may change between a run and its `--resume`: where it runs and where it
# is tracked. Everything else decides the members (and the store's chunking) and must match.
RESUME_FREE_KEYS = ("cluster.address", "cluster.replicas", "cluster.gpus_per_replica",
                    "cluster.cpus_per_replica", "cluster.placement", "tracking.")
STATE_FILE = "run_state.json"


@dataclass
class RunResult:
    """What a finished run leaves: its directory, summary (as in summary.json), per-channel table."""

    out_dir: Path
    summary: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)


class InProcessExecutor:
    """One `ModelReplica` in this process: the `inprocess` counterpart of the Coordinator."""

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


# --- checks before anything is written ------------------------------------------------------
def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_resume_config(stored: RunConfig, given: RunConfig, out_dir: Path) -> None:
    a, b = _flat(stored.model_dump(mode="json")), _flat(given.model_dump(mode="json"))
    for key in sorted(set(a) | set(b)):
        if key.startswith(RESUME_FREE_KEYS):
            continue
        if a.get(key) != b.get(key):
            raise InputError(
                f"--resume: config key {key!r} is {b.get(key)!r} but the run in {out_dir} used "
                f"{a.get(key)!r}; resume with the same config"
            )


def _stored_config(out_dir: Path) -> RunConfig:
    path = out_dir / "config.yaml"
    try:
        tree = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"--resume: cannot read {path}: {exc}") from None
    return config_from_tree(tree or {}, str(path))


_ADDRESS = re.compile(r"^(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d+$")


def _check_cluster(config: RunConfig) -> None:
    """The `cluster:` values that pydantic's types do not pin down."""
    cl = config.cluster
    if cl.address not in ("local", "inprocess", "auto") and not _ADDRESS.match(cl.address):
        raise InputError(
            f"cluster.address {cl.address!r} is not one of local, inprocess, auto, host:port, ray://host:port"
        )
    for key, value, low in (("replicas", cl.replicas, 1), ("cpus_per_replica", cl.cpus_per_replica, 1),
                            ("members_per_unit", cl.members_per_unit, 1)):
        if value < low:
            raise InputError(f"cluster.{key} must be >= {low}, got {value}")
    if cl.gpus_per_replica < 0:
        raise InputError(f"cluster.gpus_per_replica must be >= 0, got {cl.gpus_per_replica}")


def _check_out_dir(out_dir: Path, resume: bool) -> None:
    if resume:
        if not (out_dir / "config.yaml").is_file() or not (out_dir / STORE_NAME / "zarr.json").is_file():
            raise InputError(f"--resume: {out_dir} is not a run directory (no config.yaml / {STORE_NAME})")
    elif out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"output directory {out_dir} already exists; choose another --out or add --resume")


# --- the run ------------------------------------------------------------------------------
def run_pipeline(
    config: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    on_unit: Callable[[BlockResult, Any], None] | None = None,
) -> RunResult:
    """Run `config` into `out_dir` (DESIGN.md §7) and return its summary.

    Parameters
    ----------
    config : RunConfig
    out_dir : path
        The run directory; must not exist (or be empty) unless `resume`.
    resume : bool
        Sample only the (time, member) pairs missing from `out_dir`.
    progress : bool
        Show the rich progress bar (on stderr).
    on_unit : callable(BlockResult, executor), optional
        Called after each unit is written and aggregated; tests use it to interrupt a run or to
        break a replica part-way (the executor's `stats[i].info` says where replica i runs).
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    _check_cluster(config)
    _check_out_dir(out_dir, resume)
    if resume:
        _check_resume_config(_stored_config(out_dir), config, out_dir)

    # Inputs first: a bad channel, file or value fails here, before out_dir is touched.
    from ensemble_da.obs.inputs import prepare_inputs
    from ensemble_da.priors import load_prior
    from ensemble_da.truth import osse_truths

    prior = load_prior(config.model, config.grid)
    inputs = prepare_inputs(config, prior, osse_truths(prior, config))
    kind = config.observations.operator
    operators = [ObservationOperator.build(o, prior.grid, prior.normalization, kind) for o in inputs.observations]
    exact = exact_posteriors(prior, inputs.observations, kind)
    prior_spread = prior.prior_spread().mean(-1) if hasattr(prior, "prior_spread") else None
    channels = tuple(prior.normalization.channels)
    guided = config.guidance.method != "none"
    sample_obs = [o if guided else None for o in inputs.observations]

    # Ray (when used) is up before the run directory is touched: an unreachable cluster address
    # is a bad input too.
    factory, session = _executor(config)
    with session:
        return _run(config, out_dir, resume, progress, on_unit, t_start, factory, inputs, sample_obs, operators,
                    exact, prior_spread, channels)


def _run(config, out_dir, resume, progress, on_unit, t_start, factory, inputs, sample_obs, operators, exact,
         prior_spread, channels) -> RunResult:
    """The part of `run_pipeline` that writes: store, tracking, sampling, statistics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        store = RunStore(out_dir / STORE_NAME)
        state = json.loads((out_dir / STATE_FILE).read_text()) if (out_dir / STATE_FILE).is_file() else {}
    else:
        (out_dir / "config.yaml").write_text(config.to_yaml())
        layout = StoreLayout(inputs.times, config.ensemble.members, channels, config.grid.nside,
                             config.cluster.members_per_unit)
        attrs = {
            "run_name": config.run_name,
            "guidance": config.guidance.method,
            "seed": config.seed,
            "ensemble_da_version": ensemble_da.__version__,
            "config": config.to_yaml(),
        }
        store = RunStore.create(
            out_dir / STORE_NAME, layout, attrs, truth=inputs.truth,
            exact_mean=None if exact is None else exact[0], exact_spread=None if exact is None else exact[1],
        )
        state = {}

    from ensemble_da.tracking import Tracker, flatten, resolve_tracking_uri

    uri = resolve_tracking_uri(config.tracking.uri, out_dir)
    tracker = Tracker(uri, config.tracking.experiment, config.run_name, out_dir,
                      run_id=state.get("run_id") if state.get("tracking_uri") == uri else None)
    state.update(run_id=tracker.run_id, tracking_uri=uri)
    state.setdefault("logged_times", [])
    _write_json(out_dir / STATE_FILE, state)
    tracker.log_params(flatten(config.model_dump(mode="json")))
    tracker.set_tags({"run_dir": str(out_dir.resolve()), "ensemble_da_version": ensemble_da.__version__})

    timings = {"sampling_s": 0.0, "writing_s": 0.0, "aggregating_s": 0.0}

    def on_time(res: TimeResult) -> None:
        if res.t_index not in state["logged_times"]:
            qc = inputs.qc_per_time[res.t_index].metrics() if inputs.qc_per_time else {}
            tracker.log_metrics({**res.metrics, **qc}, step=res.t_index)
            if tracker.ok:
                state["logged_times"].append(res.t_index)
                _write_json(out_dir / STATE_FILE, state)

    aggregator = Aggregator(store, inputs.observations, operators, truth=inputs.truth, exact=exact,
                            seed=config.seed, on_time=on_time)
    t0 = time.perf_counter()
    aggregator.catch_up()
    timings["aggregating_s"] += time.perf_counter() - t0

    done = store.done()
    units = [
        WorkUnit(t, tuple(range(lo, hi)))
        for t in range(len(inputs.times))
        for lo, hi in store.layout.blocks()
        if not done[t, lo:hi].all()
    ]
    total = int(done.size)
    counts = {"done": int(done.sum()), "sampled": 0}

    def on_result(res: BlockResult) -> None:
        t0 = time.perf_counter()
        store.write_block(res.unit.t_index, res.unit.members, res.analysis)
        t1 = time.perf_counter()
        aggregator.add(res.unit.t_index, res.unit.members, res.analysis)
        t2 = time.perf_counter()
        timings["writing_s"] += t1 - t0
        timings["aggregating_s"] += t2 - t1
        timings["sampling_s"] += float(res.diagnostics.get("seconds", 0.0))
        counts["done"] += len(res.unit.members)
        counts["sampled"] += len(res.unit.members)
        if on_unit is not None:
            on_unit(res, executor)

    status = "FAILED"
    executor = None
    try:
        with _progress(progress, total, counts["done"]) as show:
            if units:
                executor = factory()
                try:
                    show(executor, counts["done"])
                    executor.run(units, sample_obs, on_result, lambda ex: show(ex, counts["done"]))
                finally:
                    executor.shutdown()
        if not aggregator.finished:
            raise RuntimeError("some analysis times were not finished; the run is incomplete")
        result = _finish(config, out_dir, store, aggregator, tracker, inputs.times, channels, prior_spread,
                         counts, timings, executor, t_start, inputs.qc.metrics())
        status = "FINISHED"
        return result
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if status != "FINISHED":
            tracker.end(status)


def _executor(config: RunConfig):
    """(factory, context manager) for the executor the config asks for."""
    import contextlib

    if config.cluster.address == "inprocess":
        return (lambda: InProcessExecutor(config)), contextlib.nullcontext()
    from actors.coordinator import Coordinator
    from actors.runtime import ray_session

    cl = config.cluster
    session = ray_session(cl.address, num_cpus=int(np.ceil(cl.replicas * cl.cpus_per_replica)))
    return (lambda: Coordinator(config)), session


def _progress(enabled: bool, total: int, done: int):
    """Context manager yielding show(executor, done): a rich bar of members done / total,
    with per-replica throughput and the retry count."""
    import contextlib

    if not enabled:
        return contextlib.nullcontext(lambda ex, d: None)

    @contextlib.contextmanager
    def bar():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("members"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.description}"), console=Console(stderr=True), transient=False,
        ) as prog:
            task = prog.add_task("starting replicas", total=total, completed=done)

            def show(ex, d: int) -> None:
                rates = " ".join(f"r{s.index}:{s.members_per_second:.2f}/s" for s in ex.stats)
                prog.update(task, completed=d, description=f"{rates} retries:{ex.retries}")

            yield show

    return bar()


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
    tmp.replace(path)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def _finish(config, out_dir, store, aggregator, tracker, times, channels, prior_spread, counts, timings,
            executor, t_start, qc: dict[str, float]) -> RunResult:
    """Observations group, figures, summary.json, MLflow artifacts, and the store marked complete.

    `qc` holds the quality-control counts summed over analysis times (`qc/<name>`)."""
    from ensemble_da.figures import plot_mean_spread, plot_rank_histogram

    store.write_observations(aggregator.observations_dataset())
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    figures = []
    for t, when in enumerate(times):
        stamp = np.datetime_as_string(when, unit="m")
        figures.append(plot_mean_spread(
            fig_dir / f"mean_spread_t{t}.png", store.group["ensemble_mean"][t], store.group["ensemble_spread"][t],
            channels, title=f"{config.run_name} {stamp}",
        ))
    ranks = [r.rank_counts for r in aggregator.results.values() if r.rank_counts is not None]
    if ranks:
        figures.append(plot_rank_histogram(fig_dir / "rank_histogram.png", np.sum(ranks, axis=0), channels,
                                           title="rank of truth among members (all times)"))
    by_time = {np.datetime_as_string(times[t], unit="s"): aggregator.results[t].metrics for t in range(len(times))}
    keys = list(dict.fromkeys(k for m in by_time.values() for k in m))
    mean_metrics = {k: float(np.nanmean([m.get(k, np.nan) for m in by_time.values()])) for k in keys}
    store.finalize({"members_done": counts["done"]})
    summary: dict[str, Any] = {
        **mean_metrics,
        **qc,
        "run_name": config.run_name,
        "run_id": tracker.run_id,
        "tracking_uri": tracker.uri,
        "tracking_error": tracker.error,
        "wall_time_s": time.perf_counter() - t_start,
        "members_done": counts["done"],
        "members_sampled": counts["sampled"],
        "retries": getattr(executor, "retries", 0),
        "timings_s": timings,
        "replicas": [{**s.info, "members": s.members, "busy_s": s.busy_seconds, "restarts": s.restarts}
                     for s in getattr(executor, "stats", [])],
        "by_time": by_time,
        "prior_spread": None if prior_spread is None else dict(zip(channels, map(float, prior_spread))),
    }
    tracker.log_artifacts([out_dir / "config.yaml"])
    tracker.log_artifacts(figures, artifact_path="figures")
    _write_json(out_dir / "summary.json", summary)
    tracker.log_artifacts([out_dir / "summary.json"])
    tracker.end("FINISHED")
    if tracker.error and summary["tracking_error"] != tracker.error:
        summary["tracking_error"] = tracker.error
        _write_json(out_dir / "summary.json", summary)
    rows = []
    for c, name in enumerate(channels):
        rows.append({
            "channel": name,
            "prior_spread": None if prior_spread is None else float(prior_spread[c]),
            **{k: mean_metrics.get(f"{k}/{name}") for k in
               ("rmse", "spread", "ssr", "exact_mean_err", "exact_var_ratio", "oa_rmse", "heldout_oa_rmse")},
        })
    return RunResult(out_dir, summary, rows)


# --- the command line -------------------------------------------------------------------------
TABLE_COLUMNS = [
    ("channel", "channel"), ("prior_spread", "prior spread"), ("rmse", "RMSE"), ("spread", "spread"),
    ("ssr", "SSR"), ("exact_mean_err", "exact_mean_err"), ("exact_var_ratio", "exact_var_ratio"),
    ("oa_rmse", "O−A RMS"), ("heldout_oa_rmse", "held-out O−A"),
]


def results_table(rows: Sequence[dict[str, Any]]):
    """The per-channel table printed at the end of a run (means over analysis times)."""
    from rich.table import Table

    table = Table(title="analysis vs truth and exact posterior, mean over analysis times (physical units)",
                  caption="RMSE: ensemble mean vs truth; spread: mean ensemble std; O−A: obs minus analysis mean")
    for key, title in TABLE_COLUMNS:
        table.add_column(title, justify="left" if key == "channel" else "right")
    for row in rows:
        table.add_row(*[row[k] if k == "channel" else ("—" if row.get(k) is None or not np.isfinite(row[k])
                                                        else f"{row[k]:.3f}") for k, _ in TABLE_COLUMNS])
    return table


def run_from_cli(config_path: Path | None, overrides: list[str], out: Path | None, resume: bool) -> RunResult:
    """`ensemble-da run`: resolve config and run directory, run, print the table and where things are."""
    from rich.console import Console

    if resume and out is None:
        raise InputError("--resume needs --out DIR (the run directory to continue)")
    if resume and config_path is None and (out / "config.yaml").is_file():
        config_path = out / "config.yaml"
    config = load_config(config_path, overrides)
    if out is None:
        out = Path("runs") / f"{config.run_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    result = run_pipeline(config, out, resume=resume)
    console = Console(width=None if Console().is_terminal else 132)
    console.print(results_table(result.rows))
    s = result.summary
    console.print(f"members: {s['members_done']} ({s['members_sampled']} sampled now, {s['retries']} retries) "
                  f"in {s['wall_time_s']:.1f} s")
    console.print(f"run directory: {out}")
    if s["tracking_error"]:
        Console(stderr=True).print(f"warning: MLflow tracking failed ({s['tracking_uri']}): {s['tracking_error']}; "
                                   "the run's outputs are complete in the run directory", markup=False)
    else:
        console.print(f"MLflow: {s['tracking_uri']} run {s['run_id']}")
    return result
