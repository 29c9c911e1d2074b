"""The `ensemble-da run` job (DESIGN.md §7, §8): the steps of a run, in order, in one place.

1. check the config, the run directory and (with `--resume`) that the config is the run's own;
2. build the prior and the inputs (observations per time, truth, exact posterior) — a bad
   channel, file or value fails here, before the run directory is touched;
3. start the executor's session (Ray up, or nothing for `inprocess`): an unreachable cluster
   is a bad input too; with `diagnostics.background`, draw the background ensemble of every
   time and screen the observations against it (`actors.background`);
4. create the store (or open it to resume) and the MLflow run;
5. list the work units still missing and run them on the replicas, which write their member
   blocks; the aggregators merge what the replicas return, and each finished time is logged to
   MLflow once (by the driver, the only process that talks to MLflow);
6. finish: observations group, figures, summary.json, store marked complete, report.html.

One run, two executors (`actors.backends`): in-process and Ray give the same store.
"""

from __future__ import annotations

import contextlib

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import ensemble_da
from ensemble_da.assimilation import ExactReference, WorkUnit, exact_posteriors
from ensemble_da.config import RunConfig
from ensemble_da.diagnostics import Background
from ensemble_da.exact import ExactPosteriorUnavailable
from ensemble_da.io import STORE_NAME, RunStore, StoreLayout
from ensemble_da.obs.operators import build_operator

from actors.aggregator import TimeInputs, TimeResult
from actors.background import draw_background
from actors.time_modes import reanalysis_units, run_cycle, run_cycle_flow, run_reanalysis
from actors.checks import check_time_mode, check_cluster, check_out_dir, check_resume_config, check_resume_inputs, input_identity
from actors.backends import open_runtime
from actors.session_cache import SessionCache
from actors.grow import check_grow, grow_store
from actors.outputs import RunResult, finish_run
from actors.progress import progress_bar
from actors.replica import UnitReport
from actors.run_state import RunState
from actors.stopwatch import Stopwatch

__all__ = ["run_pipeline"]


def run_pipeline(
    config: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    on_unit: Callable[[UnitReport, Any], None] | None = None,
    prior_factory: Callable | None = None,
    tags: dict[str, str] | None = None,
    session: SessionCache | None = None,
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
    on_unit : callable(UnitReport, executor), optional
        Called after each unit is written and handed to the aggregators; tests use it to
        interrupt a run or to break a replica part-way (the executor's `stats[i].info` says
        where replica i runs).
    prior_factory : callable(device) -> Denoiser, optional
        The prior of the driver (inputs) and of every replica instead of the one `config.model`
        describes (benchmarks use a stand-in denoiser); must be picklable for Ray.
    tags : dict, optional
        Extra MLflow tags of the run (a sweep's child runs get `mlflow.parentRunId`).
    session : SessionCache, optional
        What the runs of one session (a sweep) share: the driver's priors by config and the Ray
        replicas (`ReplicaPool`), reused while the prior's config is unchanged.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    # 1. checks
    check_cluster(config)
    grow_from = check_grow(config, out_dir) if resume else None  # more members for a finished run
    if resume and (out_dir / "config.yaml").is_file():  # a changed key is named before "complete"
        check_resume_config(config, out_dir, free=("ensemble.members",) if grow_from is not None else ())
    check_out_dir(out_dir, resume, grow=grow_from is not None)
    # 2. prior and inputs
    from ensemble_da.obs.inputs import prepare_inputs
    from ensemble_da.priors import load_prior
    from ensemble_da.truth import osse_truths

    if prior_factory is not None:
        prior = prior_factory("cpu")
    elif session is not None:
        prior = session.prior(config)
    else:
        prior = load_prior(config.model, config.grid)
    check_time_mode(config, prior, resume)
    with session.inputs_lock if session is not None else contextlib.nullcontext():
        inputs = prepare_inputs(config, prior, osse_truths(prior, config))
    sets = config.observation_sets()
    prior_spread = prior.prior_spread().mean(-1) if hasattr(prior, "prior_spread") else None
    channels = tuple(prior.normalization.channels)
    watch = Stopwatch(sampling_s=0.0, writing_s=0.0, aggregating_s=0.0)
    watch.add("prepare_s", time.perf_counter() - t_start)
    # 3. executor session
    start_runtime, ray_or_none = open_runtime(config, str((out_dir / STORE_NAME).resolve()), prior_factory, session)
    with ray_or_none:
        with watch.time("runtime_start_s"):
            runtime = start_runtime()
        executor = background = None
        try:
            if config.diagnostics.background and config.mode == "analysis":
                # The background of every time first, then its QC; the analysis assimilates what passed.
                with watch.time("replicas_start_s"):
                    executor = runtime.start_executor()
                with watch.time("background_s"):
                    background = draw_background(executor, config, inputs.observations)
                inputs = dataclasses.replace(inputs, observations=background.observations)
        except BaseException:
            if executor is not None:
                executor.shutdown()
            runtime.close()
            raise
        with watch.time("exact_s"):
            operators = [build_operator(o, prior.grid, prior.normalization, sets) for o in inputs.observations]
            try:
                exact = _exact_references(config, prior, inputs.observations)
            except ExactPosteriorUnavailable as exc:
                exact = None  # a reference for the analysis, not part of it: the run goes on without it
                print(f"warning: {exc}; the run continues without exact_mean/exact_spread and exact_* metrics",
                      file=sys.stderr)
        # 4. store and tracking
        with watch.time("store_tracking_s"):
            out_dir.mkdir(parents=True, exist_ok=True)
            store = _open_store(config, out_dir, resume, inputs, channels, exact,
                                input_identity(prior, inputs.observations))
            if grow_from is not None:
                store = grow_store(store, config, out_dir)
            state = RunState(out_dir)
            if grow_from is not None:
                state.data["logged_times"] = []  # the grown ensemble's metrics go to a new MLflow run
            tracker = _start_tracking(config, out_dir, state, tags, grow=grow_from is not None)
        time_aware = config.mode != "analysis"

        if config.mode == "cycle":
            background = Background([], [], [])  # filled time by time (`run_cycle`)

        def on_time(res: TimeResult) -> None:
            qc = inputs.qc_per_time[res.t_index].metrics() if inputs.qc_per_time else {}
            if background is not None:
                res.metrics.update(background.time_metrics(res.t_index, channels, res.hx_mean))
            residuals = [res.metrics.get("mmps_residual/max", np.nan), state.residual_max(res.t_index)]
            if np.isfinite(residuals).any():  # blocks read back from the store bring none of their own
                res.metrics["mmps_residual/max"] = float(np.nanmax(residuals))
            state.log_time_once(tracker, res.t_index, {**res.metrics, **qc})

        # A cycled run learns each time's observations (after its QC) only when the time comes.
        times = [] if config.mode == "cycle" else [
            TimeInputs(t, obs, operators[t], None if inputs.truth is None else inputs.truth[t],
                       None if exact is None else (exact[0][t], exact[1][t]), sets,
                       None if exact is None or exact.bias is None else exact.bias[t])
            for t, obs in enumerate(inputs.observations)
        ]
        status = "FAILED"
        try:
            with watch.time("aggregators_start_s"):
                aggregation = runtime.start_aggregation(times, on_time)
                done = store.done()
                # The blocks a resumed run has on disk are merged first. A fresh run has none: it
                # does not wait here for the aggregators to start, which then overlaps the
                # replicas' start. (A reanalysis reduces every block from the store once they are
                # all there.)
                if not time_aware and done.any():
                    with watch.time("aggregating_s"):
                        aggregation.catch_up()

            # 5. the units still missing: sampled and written by the replicas, merged by the aggregators
            units = [
                WorkUnit(t, tuple(range(lo, hi)))
                for t in range(len(inputs.times))
                for lo, hi in store.layout.blocks()
                if not done[t, lo:hi].all()
            ]
            counts = {"done": int(done.sum()), "sampled": 0}
            cycled = None

            # A reanalysis unit writes its members at every time (and is reduced from the store).
            pairs_per_member = len(inputs.times) if config.mode == "reanalysis" else 1

            def on_result(report: UnitReport, stats) -> None:
                state.note_residual(report.unit.t_index, float(report.diagnostics.get("cg_residual_max", np.nan)))
                if config.mode != "reanalysis":
                    with watch.time("aggregating_s"):
                        aggregation.add(report.unit, stats)
                watch.add("writing_s", report.diagnostics.get("write_s", 0.0))
                watch.add("sampling_s", report.diagnostics.get("seconds", 0.0))
                counts["done"] += len(report.unit.members) * pairs_per_member
                counts["sampled"] += len(report.unit.members) * pairs_per_member
                if on_unit is not None:
                    on_unit(report, executor)

            with progress_bar(progress, int(done.size), counts["done"]) as show:
                if units or executor is not None:
                    if executor is None:
                        with watch.time("replicas_start_s"):
                            executor = runtime.start_executor()
                    with watch.time("units_s"):
                        try:
                            show(executor, counts["done"])

                            def on_progress(ex) -> None:
                                aggregation.poll()
                                show(ex, counts["done"])

                            if config.mode == "cycle":
                                cycle = run_cycle if config.cycle.first_guess_check else run_cycle_flow
                                cycled = cycle(config, prior, inputs.observations, inputs.truth, executor,
                                               aggregation, background, on_result, on_progress, store, done)
                            elif config.mode == "reanalysis":
                                run_reanalysis(inputs.observations, store, executor, aggregation, on_result,
                                               on_progress)
                            else:
                                executor.run(units, inputs.observations, on_result, on_progress)
                        finally:
                            executor.shutdown()
            with watch.time("drain_s"), watch.time("aggregating_s"):
                aggregation.drain()
            if len(aggregation.results) != len(inputs.times):
                raise RuntimeError("some analysis times were not finished; the run is incomplete")
            # 6. finish
            qc = inputs.qc_metrics()
            if cycled is not None:  # its background and exact fields are in the store, time by time
                inputs = dataclasses.replace(inputs, observations=cycled.observations)
            elif background is not None:
                store.write_fields(background.fields(store.group["ensemble_mean"][...]))
            if background is not None:
                qc.update(background.qc_totals())
            result = finish_run(config, out_dir, store, inputs.observations, aggregation, tracker, inputs.times,
                                channels, prior_spread, counts, dict(watch), executor, t_start, qc,
                                None if background is None else background.observation_columns())
            status = "FINISHED"
            return result
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            runtime.close()
            if status != "FINISHED":
                tracker.end(status)


def _open_store(config: RunConfig, out_dir: Path, resume: bool, inputs, channels, exact, identity) -> RunStore:
    """The run's store: opened to resume (if its prior and observations are the run's own), else
    created from the config (with config.yaml)."""
    if resume:
        store = RunStore(out_dir / STORE_NAME)
        check_resume_inputs(store.group.attrs.get("input_identity"), identity, out_dir)
        return store
    (out_dir / "config.yaml").write_text(config.to_yaml())
    layout = StoreLayout(inputs.times, config.ensemble.members, channels, config.grid.nside,
                         config.cluster.members_per_unit)
    attrs = {
        "run_name": config.run_name,
        "guidance": config.guidance.method,
        "seed": config.seed,
        "ensemble_da_version": ensemble_da.__version__,
        "config": config.to_yaml(),
        "input_identity": identity,
    }
    carried = config.mode == "cycle" and config.cycle.carry and config.window_length() > 1
    return RunStore.create(
        out_dir / STORE_NAME, layout, attrs, truth=inputs.truth,
        exact_mean=None if exact is None else exact[0], exact_spread=None if exact is None else exact[1],
        member_fields=("carried_state",) if carried else (),
    )


def _exact_references(config: RunConfig, prior, observations) -> ExactReference | None:
    """Exact (mean, spread) per time, physical (time, channel, cell), known before sampling: each
    time alone (analysis), the RTS smoother (reanalysis); a cycle's filter runs with the cycle."""
    sets = config.observation_sets()
    if not config.diagnostics.exact:
        return None
    if config.mode == "analysis":
        return exact_posteriors(prior, observations, sets)
    from ensemble_da.kalman import rts_smoother
    from ensemble_da.priors.gaussian_markov import GaussianMarkovPrior

    if config.mode == "cycle" or not isinstance(prior, GaussianMarkovPrior):
        return None
    ops = [build_operator(o.assimilated_only(), prior.grid, prior.normalization, sets) for o in observations]
    return ExactReference(*rts_smoother(prior, ops).physical(prior))


def _start_tracking(config: RunConfig, out_dir: Path, state: RunState, tags: dict[str, str] | None = None,
                    grow: bool = False):
    """The run's MLflow run (continued on `--resume` when tracked at the same URI; a new one that
    replaces it when the ensemble `grow`s), params and tags."""
    from ensemble_da.tracking import Tracker, flatten, resolve_tracking_uri, run_tags

    uri = resolve_tracking_uri(config.tracking.uri, out_dir)
    previous = state.run_id_for(uri)
    tracker = Tracker(uri, config.tracking.experiment, config.run_name, out_dir,
                      run_id=None if grow else previous, grown_from=previous if grow else None)
    state.set_tracking(uri, tracker.run_id)
    tree = config.model_dump(mode="json")
    tracker.log_params(flatten(tree))
    tracker.set_tags({"run_dir": str(out_dir.resolve()), "ensemble_da_version": ensemble_da.__version__,
                      **run_tags(tree), **(tags or {})})
    return tracker
