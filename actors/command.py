"""`ensemble-da run` on the command line: resolve the config and run directory, run, then print
the per-channel table and where the outputs and the MLflow run are."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ensemble_da.config import load_config
from ensemble_da.errors import InputError
from ensemble_da.obs.qc import QCCounts
from ensemble_da.report import TABLE_COLUMNS as REPORT_COLUMNS, TERMINAL_KEYS

from actors.checks import NothingToResume
from actors.outputs import RunResult
from actors.run import run_pipeline

__all__ = ["run_from_cli", "results_table", "sanity_warnings", "TABLE_COLUMNS"]

# Below this many steps the probability-flow ODE is under-resolved: measured on the Gaussian demo,
# the ensemble variance is 7x the exact posterior's at 4 steps, 2.3x at 6, 1.1x at 16, 1.02x at 32.
MIN_RESOLVED_STEPS = 16
# An ensemble whose variance is off by more than this factor from the exact posterior is not a
# posterior sample, whatever Monte-Carlo error a small ensemble has.
EXACT_VAR_RATIO_RANGE = (0.5, 2.0)

# (row key, title): the run's `RunResult.rows`, with the report's titles for its metrics.
TABLE_COLUMNS = [("channel", "channel"), ("prior_spread", "prior spread"),
                 *((key, title) for key, title in REPORT_COLUMNS if key in TERMINAL_KEYS)]


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


# Observations removed by the readers' QC (`QCCounts.REMOVED`) or by the background check (per
# channel): the run still succeeds, so each is worth a warning line.
QC_REMOVED = tuple(f"qc/{k}" for k in QCCounts.REMOVED)
BACKGROUND_REJECTED = "qc/background_rejected/"


def sanity_warnings(steps: int, summary: dict[str, Any]) -> list[str]:
    """One-line warnings for an analysis that finished but should not be trusted as it is: too few
    sampler steps, (with the exact posterior) an ensemble variance far from the exact one, or
    observations removed by quality control."""
    out = []
    if steps < MIN_RESOLVED_STEPS:
        out.append(f"warning: sampler.steps={steps} is below {MIN_RESOLVED_STEPS}: the sampling ODE is under-resolved and "
                   "the ensemble spread is unreliable (Gaussian demo: variance 7x the exact at 4 steps, 2.3x at 6, "
                   "1.1x at 16); use 18-32 steps")
    lo, hi = EXACT_VAR_RATIO_RANGE
    for key in sorted(k for k in summary if k.startswith("exact_var_ratio/")):
        ratio = summary[key]
        if ratio is not None and not lo <= ratio <= hi:
            out.append(f"warning: {key} = {ratio:.3g}: the ensemble variance is far from the exact posterior's, so the "
                       "analysis is not a posterior sample (raise sampler.steps, or check the guidance settings)")
    dropped = {k.removeprefix("qc/"): int(v) for k, v in summary.items()
               if v and (k in QC_REMOVED or k.startswith(BACKGROUND_REJECTED))}
    if dropped:
        out.append(f"warning: quality control removed {sum(dropped.values())} of {int(summary.get('qc/read', 0))} "
                   f"observations read ({', '.join(f'{k}: {v}' for k, v in dropped.items())}); the analysis used the rest "
                   "(counts per reason in summary.json, qc/*)")
    return out


def run_from_cli(config_path: Path | None, overrides: list[str], out: Path | None, resume: bool) -> RunResult | None:
    """`ensemble-da run`: resolve config and run directory, run, print the table and where things are
    (None, after a `note:` line, when `--resume` finds the run complete with the same config)."""
    from rich.console import Console

    if resume and out is None:
        raise InputError("--resume needs --out DIR (the run directory to continue)")
    own_config = not (resume and config_path is None and (out / "config.yaml").is_file())
    if not own_config:
        config_path = out / "config.yaml"  # the run's resolved config: its warnings were shown when it started
    config = load_config(config_path, overrides)
    if out is None:
        out = Path("runs") / f"{config.run_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    errors = Console(stderr=True)
    try:
        result = run_pipeline(config, out, resume=resume)
    except NothingToResume as done:
        errors.print(f"note: {str(done).removeprefix('--resume: ')}; run directory: {out}", markup=False, soft_wrap=True)
        return None
    except KeyboardInterrupt:
        errors.print(f"error: interrupted; the members already written are kept: continue with "
                     f"ensemble-da run --resume --out {out}", markup=False, soft_wrap=True)
        raise SystemExit(130) from None
    console = Console(width=None if Console().is_terminal else 132)
    console.print(results_table(result.rows))
    s = result.summary
    times = len(config.times)
    console.print(f"members: {config.ensemble.members} at {times} analysis time{'s' if times > 1 else ''}, "
                  f"{s['members_done']} member-times ({s['members_sampled']} sampled now, {s['retries']} retries) "
                  f"in {s['wall_time_s']:.1f} s")
    console.print(f"run directory: {out}")
    for line in sanity_warnings(config.sampler.steps, s):
        errors.print(line, markup=False, soft_wrap=True)
    if s["tracking_error"]:
        errors.print(f"warning: MLflow tracking failed ({s['tracking_uri']}): {s['tracking_error']}; "
                                   "the run's outputs are complete in the run directory", markup=False, soft_wrap=True)
    else:
        console.print(f"MLflow: {s['tracking_uri']} run {s['run_id']}")
    return result
