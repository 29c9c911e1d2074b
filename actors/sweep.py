"""`ensemble-da sweep`: every combination of a grid of config values, run in one session.

A sweep is planned first: the grid (`--grid KEY=V1,V2,...`, values parsed as YAML, or a
`sweep:` section of the config file) is expanded into its combinations and every combination's
config (CONFIG, then the `--set` overrides, then the grid values) is validated, so an unknown key,
a value the config rejects, an empty list or a swept sigma of a channel no run observes is one
`InputError` before anything runs. Then the runs go one after another through `run_pipeline`
into `DIR/runs/<NN>/` (each a complete run directory, the members those of a standalone run
with the same settings), inside ONE Ray session when the configs use `cluster.address: local`
(`ray_session` leaves an existing connection open, so each run reuses it). The MLflow runs of
the sweep are children (tag `mlflow.parentRunId`) of one parent run in one experiment, tracked
in `DIR/mlflow.db` unless `tracking.uri` (or MLFLOW_TRACKING_URI) says otherwise.

Outputs: `sweep.json` (the plan, for `--resume`), `sweep.parquet` and `sweep.csv` (one row per
run: a typed column per swept key, `members`, a column per summary.json metric, `run_dir`,
`run_id`) and `sweep.html` (every metric against every swept key, and the table).
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from ensemble_da.config import RunConfig, apply_overrides, default_config_path, validate_tree
from ensemble_da.errors import InputError
from ensemble_da.io import STORE_NAME

from actors.ray_backend.pool import ReplicaPool
from actors.run_state import write_json
from actors.session_cache import SessionCache

__all__ = ["SweepRun", "SweepPlan", "parse_grid", "plan_sweep", "parallel_runs", "run_sweep", "sweep_table",
           "metric_families", "SWEEP_FILE"]

SWEEP_FILE = "sweep.json"


@dataclass
class SweepRun:
    index: int
    params: dict[str, Any]
    config: RunConfig
    out_dir: Path

    @property
    def finished(self) -> bool:
        return (self.out_dir / "summary.json").is_file() and _store_complete(self.out_dir)


@dataclass
class SweepPlan:
    out_dir: Path
    grid: dict[str, list]
    runs: list[SweepRun]
    tracking_uri: str
    experiment: str
    # The `--set KEY=VALUE` overrides, applied to the config before the grid.
    overrides: list[str] = field(default_factory=list)
    # Runs that failed in the last `run_sweep` (index → the one-line error).
    failures: dict[int, str] = field(default_factory=dict)
    # What the user should know before it runs (a `--grid` key replacing the file's `sweep:` values).
    notes: list[str] = field(default_factory=list)


def _store_complete(run_dir: Path) -> bool:
    if not (run_dir / STORE_NAME / "zarr.json").is_file():
        return False
    import zarr

    return bool(zarr.open_group(str(run_dir / STORE_NAME), mode="r").attrs.get("complete"))


def parse_grid(items: Sequence[str]) -> dict[str, list]:
    """`KEY=V1,V2,...` items into {key: [values]} (each value parsed as YAML)."""
    grid: dict[str, list] = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"--grid expects KEY=V1,V2,..., got {item!r}")
        key, text = (s.strip() for s in item.split("=", 1))
        if not key:
            raise InputError(f"--grid {item!r}: no key")
        if key in grid:
            raise InputError(f"--grid {key}: given twice")
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise InputError(f"--grid {key}: empty list of values")
        values = []
        for p in parts:
            try:
                values.append(yaml.safe_load(p))
            except yaml.YAMLError as exc:
                raise InputError(f"--grid {key}: value {p!r} is not valid YAML ({str(exc).splitlines()[0]})") from None
        grid[key] = _distinct(f"--grid {key}", values)
    return grid


def _distinct(where: str, values: list) -> list:
    """`values`, refused when one is given twice (two identical runs would look like a result)."""
    seen = []
    for v in values:
        if v in seen:
            raise InputError(f"{where}: value {json.dumps(v)} is given twice")
        seen.append(v)
    return values


def _read_tree(config_path: Path | None) -> tuple[dict, dict[str, list], str]:
    """The config file's tree without its `sweep:` section, that section's grid, and the source
    name; the file is read with `run`'s checks (duplicate keys, tabs, an empty file)."""
    from ensemble_da.config import read_yaml_file

    path = Path(config_path) if config_path is not None else default_config_path()
    if not path.is_file():
        raise InputError(f"config file not found: {path}")
    tree = read_yaml_file(path)
    section = tree.pop("sweep", None) or {}
    if not isinstance(section, dict):
        raise InputError(f"{path}: sweep: must be a mapping KEY: [values]")
    grid = {}
    for key, values in section.items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise InputError(f"{path}: sweep: {key}: empty list of values")
        grid[str(key)] = _distinct(f"{path}: sweep: {key}", values)
    return tree, grid, str(path)


def _validate(tree: dict, params: dict[str, Any], source: str, from_file: set[str],
              overrides: Sequence[str] = ()) -> RunConfig:
    """The config of one combination: `tree`, then the `--set` `overrides`, then the grid values.
    An error names the `--grid` item (the file's `sweep:` section for the keys in `from_file`), or
    the `--set` it came from."""
    import copy

    grid_overrides = [f"{k}={json.dumps(v)}" for k, v in params.items()]
    t = copy.deepcopy(tree)
    try:
        apply_overrides(t, [*overrides, *grid_overrides])
        return validate_tree(RunConfig, t, source, [*overrides, *grid_overrides])
    except InputError as exc:
        text = str(exc)
        for key in params:
            if text.startswith(f"--set {key}:"):
                where = f"{source}: sweep: {key}:" if key in from_file else f"--grid {key}:"
                raise InputError(where + text[len(f"--set {key}:"):]) from None
        raise


def _show_values(values: list) -> str:
    """A grid's values as written after `--grid KEY=`: `0.5,2.0`, `"mmps","dps"`."""
    return ",".join(json.dumps(v) for v in values)


def _align_grid(grid: dict[str, list], stored: dict[str, list], out_dir: Path) -> dict[str, list]:
    """For `--resume`: `grid` in the order of the sweep's own `stored` grid (its keys and values),
    so each combination keeps its run directory; InputError naming the keys or values that differ."""
    show = _show_values
    problems = [f"{k}={show(v)} is not in the sweep's grid" for k, v in grid.items() if k not in stored]
    problems += [f"the sweep's grid has {k}={show(v)}, not given here" for k, v in stored.items() if k not in grid]
    problems += [f"{k}={show(grid[k])} here but {k}={show(v)} in the sweep" for k, v in stored.items()
                 if k in grid and (len(grid[k]) != len(v) or any(x not in v for x in grid[k]))]
    if problems:
        raise InputError(f"--resume: the grid differs from the sweep in {out_dir}: {'; '.join(problems)}; "
                         f"resume with the sweep's grid (or give CONFIG, its --set and --resume --out {out_dir} "
                         "without --grid: the sweep's own grid is used)")
    return {k: sorted(grid[k], key=v.index) for k, v in stored.items()}


def _sigma_channel(key: str, config: RunConfig) -> tuple[str, list[str]] | None:
    """(channel, that set's `observations.channels`) when `key` is an observation set's
    `sigma.<channel>` (`observations.sigma.T850`, `observations.<set>.sigma.T850`), else None."""
    parts = key.split(".")
    if parts[0] != "observations" or len(parts) not in (3, 4) or parts[-2] != "sigma":
        return None
    sets = config.observation_sets()
    if len(parts) == 4:
        names = [o.name for o in sets]
        sets = [sets[names.index(parts[1]) if parts[1] in names else int(parts[1])]]
    return parts[-1], list(sets[0].channels)


def _refuse_ineffective(runs: list["SweepRun"], source: str, from_file: set[str]) -> None:
    """A swept `observations.sigma.<C>` of a channel no run observes is ignored by every run (the
    observations' errors are looked up for `observations.channels` only), so its values would give
    identical runs: InputError. Checked on the configs alone (no prior is built)."""
    for key in runs[0].params:
        found = [_sigma_channel(key, r.config) for r in runs]
        if found[0] is None or any(ch in channels for ch, channels in found):
            continue
        ch, channels = found[0]
        where = f"{source}: sweep: {key}:" if key in from_file else f"--grid {key}:"
        raise InputError(f"{where} {ch!r} is not an observed channel (observations.channels: {channels}), so every "
                         "run ignores this sigma and its values would give identical runs; sweep the sigma of an "
                         "observed channel")


def plan_sweep(config_path: Path | None, grid_items: Sequence[str], out_dir: Path, resume: bool = False,
               overrides: Sequence[str] = ()) -> SweepPlan:
    """Expand and validate the sweep (InputError before anything runs or is written). `overrides`
    (`--set KEY=VALUE`) apply to the config before the grid, as for `ensemble-da run`."""
    if resume and not (out_dir / SWEEP_FILE).is_file():
        raise InputError(f"--resume: {out_dir} is not a sweep directory (no {SWEEP_FILE})")
    tree, grid, source = _read_tree(config_path)
    from_file, notes = set(grid), []
    for key, values in parse_grid(grid_items).items():
        if key in grid and grid[key] != values:
            notes.append(f"--grid {key}={_show_values(values)} replaces the values "
                         f"{_show_values(grid[key])} of {source}'s sweep: section")
        grid[key] = values  # the command line wins over the file's sweep: section
        from_file.discard(key)
    if resume:
        stored = dict(json.loads((out_dir / SWEEP_FILE).read_text())["grid"])
        grid = _align_grid(grid, stored, out_dir) if grid else stored  # `--resume --out DIR` alone: its own grid
    if not grid:
        raise InputError("sweep: no grid (give --grid KEY=V1,V2,... or a sweep: section in the config file)")
    keys = list(grid)
    runs = []
    combos = list(itertools.product(*(grid[k] for k in keys)))
    width = max(2, len(str(len(combos) - 1)))
    for i, combo in enumerate(combos):
        params = dict(zip(keys, combo))
        cfg = _validate(tree, params, source, from_file, overrides)
        runs.append(SweepRun(i, params, cfg, out_dir / "runs" / f"{i:0{width}d}"))
    _refuse_ineffective(runs, source, from_file)
    from ensemble_da.tracking import resolve_tracking_uri

    first = runs[0].config
    uri = resolve_tracking_uri(first.tracking.uri, out_dir)
    return SweepPlan(out_dir, grid, runs, uri, first.tracking.experiment, list(overrides), notes=notes)


def _plan_record(plan: SweepPlan) -> dict[str, Any]:
    return {"grid": plan.grid, "set": plan.overrides,
            "runs": [{"index": r.index, "params": r.params, "run_dir": str(r.out_dir), "config": r.config.to_yaml()}
                     for r in plan.runs]}


def _check_resume(plan: SweepPlan, resume: bool) -> dict[str, Any]:
    path = plan.out_dir / SWEEP_FILE
    if resume:
        if not path.is_file():
            raise InputError(f"--resume: {plan.out_dir} is not a sweep directory (no {SWEEP_FILE})")
        stored = json.loads(path.read_text())
        from actors.checks import config_differences, describe_differences

        for then, run in zip(stored["runs"], plan.runs):  # the grid is the sweep's own (`_align_grid`)
            diffs = config_differences(yaml.safe_load(then["config"]), yaml.safe_load(run.config.to_yaml()))
            if diffs:
                where = f"the sweep in {plan.out_dir} (run {run.out_dir.name})"
                raise InputError(f"--resume: {describe_differences(diffs, where)}; "
                                 "resume with the same CONFIG and --set")
        return stored
    if plan.out_dir.exists() and (not plan.out_dir.is_dir() or any(plan.out_dir.iterdir())):
        raise InputError(f"output directory {plan.out_dir} already exists; choose another --out or add --resume")
    return {}


@contextlib.contextmanager
def _session(plan: SweepPlan):
    """The sweep's `SessionCache` (priors and replicas reused from run to run), inside one Ray
    session for the whole sweep when every run asks for a local Ray."""
    addresses = {r.config.cluster.address for r in plan.runs}
    if addresses == {"local"} and not all(r.finished for r in plan.runs):
        from actors.ray_backend.session import ray_session

        cache = SessionCache(replicas=ReplicaPool())  # Ray replicas live only as long as this session

        cpus = max(int(-(-r.config.cluster.replicas * r.config.cluster.cpus_per_replica // 1)) for r in plan.runs)
        with ray_session("local", num_cpus=cpus):
            try:
                yield cache
            finally:
                cache.close()
    else:
        yield SessionCache()


def parallel_runs(plan: SweepPlan, cache: SessionCache, max_parallel: int | None = None) -> int:
    """How many of the sweep's runs go at once: on the sweep's own Ray, as many as the cluster's
    free CPUs and GPUs hold (each run's replicas × cpus_per_replica / gpus_per_replica, the
    largest of the sweep's runs), at most `max_parallel` and the runs left; else 1 (in-process
    runs share one process and its replica)."""
    todo = [r for r in plan.runs if not r.finished]
    if cache.replicas is None or len(todo) < 2 or max_parallel == 1:
        return 1
    import ray

    free = ray.available_resources()
    need = {"CPU": max(r.config.cluster.replicas * r.config.cluster.cpus_per_replica for r in todo),
            "GPU": max(r.config.cluster.replicas * r.config.cluster.gpus_per_replica for r in todo)}
    fits = min(int(free.get(k, 0.0) // v) for k, v in need.items() if v > 0)
    return max(1, min(fits, len(todo), max_parallel or len(todo)))


def run_sweep(plan: SweepPlan, *, resume: bool = False, progress: bool = True, prior_factory=None, warn=None,
              max_parallel: int | None = None):
    """Run the planned sweep; returns the table (pandas DataFrame). Runs already finished are
    skipped with `resume`; a run left part-way is resumed; a run that failed before is run again.
    On the sweep's own local Ray, `parallel_runs` runs go at once (each in a driver thread, its
    own Coordinator and replicas); a run's members do not depend on what runs beside it.

    A run that fails on its inputs or diverges (InputError) or stops short (RuntimeError) is a
    result of the study: its row has `status` failed and the one-line `error`, its MLflow child
    ends FAILED, and the other runs go on (`SweepPlan.failures` after the call). `warn(line)`
    receives the runs' `warning:` lines (default: stderr), each naming its run.
    """
    from concurrent.futures import ThreadPoolExecutor

    from ensemble_da.tracking import Tracker

    stored = _check_resume(plan, resume)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    record = _plan_record(plan)
    failed_before = {int(k) for k in stored.get("failures", {})}
    tracker = Tracker(plan.tracking_uri, plan.experiment, f"{plan.runs[0].config.run_name}-sweep", plan.out_dir,
                      run_id=stored.get("parent_run_id") if stored.get("tracking_uri") == plan.tracking_uri else None)
    record.update(parent_run_id=tracker.run_id, tracking_uri=plan.tracking_uri, failures={})
    write_json(plan.out_dir / SWEEP_FILE, record)
    tracker.log_params({f"grid.{k}": json.dumps(v) for k, v in plan.grid.items()} | {"runs": str(len(plan.runs))})
    tracker.set_tags({"run_dir": str(plan.out_dir.resolve()), "sweep": "parent"})
    plan.failures = {}
    status = "FAILED"
    try:
        with _progress(progress, len(plan.runs)) as (show, console), _session(plan) as cache:
            say = warn or (lambda line: console.print(line, markup=False, soft_wrap=True))
            todo = [r for r in plan.runs if not r.finished]
            board = _Board(show, len(plan.runs) - len(todo))
            show(board.done, "")
            context = _RunContext(plan, tracker.run_id or "", record, failed_before, cache, prior_factory, say, board)
            workers = parallel_runs(plan, cache, max_parallel)
            if workers == 1:
                for run in todo:
                    context.run(run)
            else:
                pool = ThreadPoolExecutor(workers, thread_name_prefix="sweep-run")
                try:
                    for future in [pool.submit(context.run, run) for run in todo]:
                        future.result()
                except BaseException:
                    # Interrupted: nothing new starts; the runs under way stop when the session's
                    # Ray goes down (they resume with --resume).
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
                pool.shutdown()
        table = sweep_table(plan)
        write_outputs(plan, table)
        tracker.log_artifacts([plan.out_dir / n for n in ("sweep.csv", "sweep.parquet", "sweep.html")])
        status = "FINISHED"
        return table
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end(status)


@dataclass
class _Board:
    """The progress bar's state, shared by the runs going at once: runs done and those running."""

    show: Any
    done: int
    running: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, name: str) -> None:
        with self.lock:
            self.running.append(name)
            self.show(self.done, "; ".join(self.running))

    def finish(self, name: str) -> None:
        with self.lock:
            self.running.remove(name)
            self.done += 1
            self.show(self.done, "; ".join(self.running))


@dataclass
class _RunContext:
    """What every run of one `run_sweep` call shares; `run(run)` runs one (from any thread)."""

    plan: SweepPlan
    parent_run_id: str
    record: dict[str, Any]
    failed_before: set[int]
    cache: SessionCache
    prior_factory: Any
    say: Any
    board: _Board
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, run: SweepRun) -> None:
        from actors.command import sanity_warnings
        from actors.run import run_pipeline

        name = f"run {run.out_dir.name} (" + ", ".join(f"{k}={v}" for k, v in run.params.items()) + ")"
        self.board.start(name)
        if run.index in self.failed_before and run.out_dir.exists():
            shutil.rmtree(run.out_dir)  # its members are drawn again, the same as before
        cfg = run.config.model_copy(deep=True)
        cfg.tracking.uri = self.plan.tracking_uri
        part_way = (run.out_dir / STORE_NAME / "zarr.json").is_file()
        tags = {"mlflow.parentRunId": self.parent_run_id, "sweep_index": str(run.index),
                "mlflow.runName": f"{cfg.run_name}-{run.out_dir.name}",
                **{f"sweep.{k}": json.dumps(v) for k, v in run.params.items()}}
        try:
            result = run_pipeline(cfg, run.out_dir, resume=part_way, progress=False,
                                  prior_factory=self.prior_factory, tags=tags, session=self.cache)
        except (InputError, RuntimeError) as exc:
            message = " ".join(str(exc).split())
            with self.lock:
                self.plan.failures[run.index] = message
                self.record["failures"][str(run.index)] = message
                write_json(self.plan.out_dir / SWEEP_FILE, self.record)
            self.say(f"warning: {name} failed: {message}")
        else:
            for line in sanity_warnings(cfg.sampler.steps, result.summary):
                self.say(f"warning: {name}: {line.removeprefix('warning: ')}")
        finally:
            self.board.finish(name)


@contextlib.contextmanager
def _progress(enabled: bool, total: int):
    """(show(done, text), console): the runs bar on stderr; lines printed through `console` stay
    above the bar."""
    from rich.console import Console

    console = Console(stderr=True)
    if not enabled:
        yield (lambda d, text: None), console
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("runs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=console) as prog:
        task = prog.add_task("", total=total)
        yield (lambda d, text: prog.update(task, completed=d, description=text)), console


def _members(run: SweepRun) -> int:
    """Members of the run as it is on disk (its resolved config.yaml: a run grown after the sweep
    has more than planned), else as planned."""
    path = run.out_dir / "config.yaml"
    if run.finished and path.is_file():
        return int(yaml.safe_load(path.read_text())["ensemble"]["members"])
    return run.config.ensemble.members


def sweep_table(plan: SweepPlan):
    """One row per run: the swept keys (typed), status, error, `members`, every numeric
    summary.json metric (`qc/*` counts as integers), run_dir, run_id."""
    import pandas as pd

    rows = []
    failures = plan.failures
    for run in plan.runs:
        if run.index in failures or not run.finished:
            rows.append({**run.params, "status": "failed", "error": failures.get(run.index, "did not finish"),
                         "members": _members(run), "run_dir": str(run.out_dir), "run_id": None})
            continue
        summary = json.loads((run.out_dir / "summary.json").read_text())
        metrics = {k: v for k, v in summary.items()
                   if "/" in k and isinstance(v, (int, float)) and not isinstance(v, bool)}
        rows.append({**run.params, "status": "finished", "error": "", "members": _members(run), **metrics,
                     "run_dir": str(run.out_dir), "run_id": summary.get("run_id")})
    table = pd.DataFrame(rows)
    first = [*plan.grid, "status", "error", "members"]
    table = table[[*first, *[c for c in table.columns if c not in first]]]
    table["members"] = table["members"].astype("int64")
    for key in plan.grid:  # typed: ints stay integers, strings strings
        values = [r.params[key] for r in plan.runs]
        if all(isinstance(v, bool) for v in values):
            table[key] = table[key].astype(bool)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            table[key] = table[key].astype("int64")
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            table[key] = table[key].astype("float64")
        else:
            table[key] = table[key].map(lambda v: v if isinstance(v, str) else json.dumps(v)).astype(str)
    for col in [c for c in table.columns if c.startswith("qc/")]:  # counts: int64 (Int64 beside a failed run's NaN)
        known = table[col].dropna()
        if (known == known.round()).all():
            table[col] = table[col].astype("Int64" if table[col].isna().any() else "int64")
    return table


def write_outputs(plan: SweepPlan, table) -> None:
    table.to_csv(plan.out_dir / "sweep.csv", index=False)
    table.to_parquet(plan.out_dir / "sweep.parquet", index=False)
    (plan.out_dir / "sweep.html").write_text(sweep_html(plan, table))


def metric_families(table) -> dict[str, list[str]]:
    """The table's numeric summary metrics by family (the name before the first `/`), in column
    order: {"rmse": ["rmse/T850", ...], "qc": ["qc/read", ...], ...}."""
    import pandas as pd

    families: dict[str, list[str]] = {}
    for col in table.columns:
        if "/" in col and pd.api.types.is_numeric_dtype(table[col]):
            families.setdefault(col.split("/", 1)[0], []).append(col)
    return families


def sweep_html(plan: SweepPlan, table) -> str:
    """Per swept key, a grid of metric-vs-value panels (a row per metric family, a panel per
    metric of it: every numeric summary metric), then the table."""
    import collections

    from matplotlib.figure import Figure

    families = metric_families(table)
    # A row of panels per family, as wide as the commonest family (the channels), 3 to 6 panels.
    ncol = min(6, max(3, collections.Counter(len(m) for m in families.values()).most_common(1)[0][0])) \
        if families else 0
    cells = []  # (row, column, metric)
    for metrics in families.values():
        row0 = cells[-1][0] + 1 if cells else 0
        cells += [(row0 + i // ncol, i % ncol, m) for i, m in enumerate(metrics)]
    keys = list(plan.grid)
    parts = [f"<h1>Sweep: {len(table)} runs</h1>"]
    for key in keys:
        if not cells:
            break
        others = [k for k in keys if k != key]
        nrow = cells[-1][0] + 1
        fig = Figure(figsize=(3.2 * ncol, 2.4 * nrow))
        axes = fig.subplots(nrow, ncol, squeeze=False)
        groups = list(table.groupby(others)) if others else [((), table)]
        used = set()
        for r, c, metric in cells:
            ax = axes[r, c]
            used.add((r, c))
            for label, sub in groups:
                sub = sub.sort_values(key)
                lab = ", ".join(f"{k}={v}" for k, v in zip(others, label if isinstance(label, tuple) else (label,)))
                ax.plot(sub[key].astype(str) if sub[key].dtype == object else sub[key],
                        sub[metric].astype("float64"), "o-", label=lab or None)
            ax.set_title(metric, fontsize=9)
            ax.set_xlabel(key, fontsize=8)
            ax.tick_params(labelsize=7)
        for r in range(nrow):
            for c in range(ncol):
                if (r, c) not in used:
                    axes[r, c].axis("off")
        if others:
            axes[0, 0].legend(fontsize=6)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        parts.append(f"<h2>metrics vs {key}</h2><img src='data:image/png;base64,"
                     f"{base64.b64encode(buf.getvalue()).decode()}'>")
    parts.append("<h2>table</h2>" + table.to_html(index=False, float_format=lambda v: f"{v:.4g}"))
    return "<!doctype html><html><head><meta charset='utf-8'><title>sweep</title></head><body>" \
           + "".join(parts) + "</body></html>"
