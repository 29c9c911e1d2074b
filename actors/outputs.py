"""The end of a run (DESIGN.md §7): the `observations` group, figures, `summary.json`, MLflow
artifacts, the store marked complete, and the per-channel rows of the table the CLI prints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ensemble_da.config import RunConfig
from ensemble_da.io import RunStore
from ensemble_da.report import TERMINAL_KEYS

from actors.aggregator import observations_dataset
from actors.run_state import write_json

__all__ = ["RunResult", "finish_run"]


@dataclass
class RunResult:
    """What a finished run leaves: its directory, summary (as in summary.json), per-channel rows
    (channel, prior_spread and the `report.TERMINAL_KEYS` metrics, means over analysis times)."""

    out_dir: Path
    summary: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)


def _figures(config: RunConfig, out_dir: Path, store: RunStore, results: dict, times: Sequence,
             channels: Sequence[str]) -> list[Path]:
    """Maps of mean and spread per time (at most `report.MAX_MAP_TIMES` of them) and the rank
    histogram over all times (PNG)."""
    from ensemble_da.figures import plot_mean_spread, plot_rank_histogram
    from ensemble_da.report import map_times

    fig_dir = out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    figures = []
    for t in map_times(len(times)):
        when = times[t]
        stamp = np.datetime_as_string(when, unit="m")
        figures.append(plot_mean_spread(
            fig_dir / f"mean_spread_t{t}.png", store.group["ensemble_mean"][t], store.group["ensemble_spread"][t],
            channels, title=f"{config.run_name} {stamp}",
        ))
    ranks = [r.rank_counts for r in results.values() if r.rank_counts is not None]
    if ranks:
        figures.append(plot_rank_histogram(fig_dir / "rank_histogram.png", np.sum(ranks, axis=0), channels,
                                           title="rank of truth among members (all times)"))
    return figures


def _report(out_dir: Path, tracker, summary: dict[str, Any]) -> None:
    """report.html and its figures (MLflow artifacts `report.html`, `figures/report/*.png`). The
    run's outputs are complete without it: a failure is recorded in summary.json, not raised."""
    from ensemble_da.report import write_report

    try:
        page = write_report(out_dir)
    except Exception as exc:  # noqa: BLE001 - a finished run stays finished
        summary["report_error"] = f"{type(exc).__name__}: {exc}"
        write_json(out_dir / "summary.json", summary)
        return
    tracker.log_artifacts(sorted((out_dir / "figures" / "report").glob("*.png")), artifact_path="figures/report")
    tracker.log_artifacts([page])


def finish_run(config: RunConfig, out_dir: Path, store: RunStore, observations, aggregation, tracker, times,
               channels: Sequence[str], prior_spread: np.ndarray | None, counts: dict[str, int],
               timings: dict[str, float], executor, t_start: float, qc: dict[str, float],
               observation_columns: dict[str, np.ndarray] | None = None) -> RunResult:
    """Write the observations group, figures and summary.json, log artifacts, mark the store
    complete, write the report page, and return the run's result.

    `qc` holds the quality-control counts summed over analysis times (`qc/<name>`);
    `observation_columns` more per-observation variables (obs,) for the observations group."""
    t_finish = time.perf_counter()
    results = aggregation.results
    dataset = observations_dataset(observations, results)
    for name, values in (observation_columns or {}).items():
        dataset[name] = ("obs", values)
    store.write_observations(dataset)
    figures = _figures(config, out_dir, store, results, times, channels)
    by_time = {np.datetime_as_string(times[t], unit="s"): results[t].metrics for t in range(len(times))}
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
        "members": config.ensemble.members,
        "times": len(times),
        "members_done": counts["done"],  # member-times: members × times when complete
        "members_sampled": counts["sampled"],
        "retries": getattr(executor, "retries", 0),
        "reissued": getattr(executor, "reissued", 0),
        "replicas_lost": len(getattr(executor, "lost", ())),
        "driver_bytes_received": getattr(executor, "bytes_received", 0) + aggregation.bytes_received,
        "timings_s": {**timings, "units_wall_s": getattr(executor, "run_seconds", 0.0),
                      "outputs_s": time.perf_counter() - t_finish},
        "replicas": [{**s.info, "members": s.members, "busy_s": s.busy_seconds, "restarts": s.restarts}
                     for s in getattr(executor, "stats", [])],
        "by_time": by_time,
        "prior_spread": None if prior_spread is None else dict(zip(channels, map(float, prior_spread))),
    }
    tracker.log_artifacts([out_dir / "config.yaml"])
    tracker.log_artifacts(figures, artifact_path="figures")
    write_json(out_dir / "summary.json", summary)
    tracker.log_artifacts([out_dir / "summary.json"])
    _report(out_dir, tracker, summary)
    tracker.end("FINISHED")
    if tracker.error and summary["tracking_error"] != tracker.error:
        summary["tracking_error"] = tracker.error
        write_json(out_dir / "summary.json", summary)
    rows = [
        {"channel": name, "prior_spread": None if prior_spread is None else float(prior_spread[c]),
         **{k: mean_metrics.get(f"{k}/{name}") for k in TERMINAL_KEYS}}
        for c, name in enumerate(channels)
    ]
    return RunResult(out_dir, summary, rows)
