"""The demo at 20,000 observations per time against the same run at 1,000 (DESIGN.md §5): peak RSS
and wall time of the whole CLI, in-process (goal: RSS ≤ 1.5×, wall ≤ 3×).

Each run is `ensemble-da run` (the packaged demo: Gaussian prior nside 16, 3 channels, 16 members,
2 times, 32 steps, MMPS with 3 GMRES iterations) with `cluster.address=inprocess`, as its own
process; peak RSS is that process's (os.wait4), wall time from start to exit. The sizes run in
turn, `--repeats` times, and the table gives medians. The exact reference is switched off
(`diagnostics.exact=false`) by default: it judges the analysis and grows with the observations
(README "The Gaussian prior beyond nside 16"); `--exact` keeps it, to show its share.

    python benchmarks/obs_scaling.py [--obs 1000 20000] [--repeats 3] [--exact]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = Path(sys.executable).with_name("ensemble-da")


def one_run(num_obs: int, exact: bool, out: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one in-process demo run with `num_obs` per time."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(CLI), "run", "--out", str(out), "--set", "cluster.address=inprocess",
           "--set", f"observations.num_obs={num_obs}", "--set", f"diagnostics.exact={'true' if exact else 'false'}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"error: the run with {num_obs} observations failed: {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--obs", type=int, nargs="+", default=[1000, 20000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--exact", action="store_true", help="keep the exact reference (diagnostics.exact)")
    args = parser.parse_args()
    rows: dict[int, list[tuple[float, float]]] = {n: [] for n in args.obs}
    with tempfile.TemporaryDirectory(prefix="obs-scaling-") as tmp:
        for _ in range(args.repeats):
            for n in args.obs:
                rows[n].append(one_run(n, args.exact, Path(tmp) / f"run{n}"))
    base_wall = statistics.median(w for w, _ in rows[args.obs[0]])
    base_rss = statistics.median(r for _, r in rows[args.obs[0]])
    print(f"demo in-process, exact reference {'on' if args.exact else 'off'}, medians of {args.repeats} runs")
    print(f"{'obs/time':>9} {'wall s':>8} {'x':>6} {'peak RSS MiB':>13} {'x':>6}")
    for n in args.obs:
        wall = statistics.median(w for w, _ in rows[n])
        rss = statistics.median(r for _, r in rows[n])
        print(f"{n:>9} {wall:>8.1f} {wall / base_wall:>6.2f} {rss:>13.0f} {rss / base_rss:>6.2f}")


if __name__ == "__main__":
    main()
