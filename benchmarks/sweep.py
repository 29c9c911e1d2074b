"""The demo sweep: 3 observation errors x 2 seeds, in one Ray session vs the same runs in-process.

    PYTHONPATH=. python benchmarks/sweep.py [--out DIR]

Runs the packaged demo config with `observations.sigma.T850` in {0.5, 1.0, 2.0} and `seed` in
{0, 1}: first each run alone in-process (`cluster.address: inprocess`, one replica, no Ray),
timed one by one; then the whole grid with `ensemble-da sweep`'s code path on a local Ray (Ray
started once for the six runs, its start included in the time). Prints the per-run table
(in-process wall time, the sweep's metrics) and the ratio Ray sweep / sum of in-process times
(goal: <= 1.3). Both on the same machine in one process, one after the other.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from actors.run import run_pipeline  # noqa: E402
from actors.sweep import plan_sweep, run_sweep  # noqa: E402

GRID = ["observations.sigma.T850=0.5,1.0,2.0", "seed=0,1"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="where to keep the sweep directory (default: a temp dir)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="eda-sweep-bench-"))
    out = args.out or work / "sweep"
    plan = plan_sweep(None, GRID, out)

    inproc = {}
    for run in plan.runs:
        cfg = run.config.model_copy(deep=True)
        cfg.cluster.address = "inprocess"
        t0 = time.perf_counter()
        run_pipeline(cfg, work / "inprocess" / run.out_dir.name, progress=False)
        inproc[run.index] = time.perf_counter() - t0

    t0 = time.perf_counter()
    table = run_sweep(plan, progress=False)
    ray_s = time.perf_counter() - t0
    total = sum(inproc.values())

    cols = ["observations.sigma.T850", "seed", "rmse/T850", "spread/T850", "ssr/T850", "oa_rmse/T850",
            "exact_var_ratio/T850"]
    print("| sigma T850 (K) | seed | in-process s | rmse/T850 | spread/T850 | ssr/T850 | oa_rmse/T850 | exact_var_ratio/T850 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, row in table.iterrows():
        vals = [row[c] for c in cols]
        print(f"| {vals[0]:g} | {vals[1]} | {inproc[i]:.1f} | " + " | ".join(f"{v:.3f}" for v in vals[2:]) + " |")
    print()
    print(f"in-process, sum of the 6 runs: {total:.1f} s")
    print(f"Ray sweep (one session, Ray start included): {ray_s:.1f} s")
    print(f"ratio Ray / in-process sum: {ray_s / total:.2f} (goal <= 1.3)")
    print(f"cores: {os.cpu_count()}")
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
