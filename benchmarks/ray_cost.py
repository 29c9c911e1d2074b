"""What the Ray path costs a whole run (issue 19.5): marginal seconds per member of the whole CLI.

`ensemble-da run` on the demo (Gaussian OSSE, nside 16, MMPS, 2 analysis times) with M_small and
M_large members, in-process, on 1 Ray replica and on 2; each run a separate process, the sizes and
runtimes interleaved and repeated, the median kept. The marginal cost per member,
(wall(M_large) − wall(M_small)) / (M_large − M_small), takes out everything paid once (Ray's start,
imports, the prior, the report), and the same difference of each phase of summary.json's
`timings_s` says where a marginal second goes.

Goals (2 quiet cores): Ray 1 replica / in-process ≤ 1.15; 1 replica / 2 replicas ≥ 1.7.

Usage: .venv/bin/python benchmarks/ray_cost.py [--small 8] [--large 24] [--repeat 2]
Timings depend on what else runs on the machine; compare ratios within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "ensemble_da.cli"]
RUNTIMES = {
    "in-process": ["cluster.address=inprocess", "cluster.replicas=1"],
    "Ray, 1 replica": ["cluster.replicas=1"],
    "Ray, 2 replicas": ["cluster.replicas=2"],
}
PHASES = ["prepare_s", "runtime_start_s", "replicas_start_s", "background_s", "exact_s", "store_tracking_s",
          "aggregators_start_s", "units_s", "drain_s", "outputs_s"]


def one_run(tmp: Path, name: str, members: int, index: int) -> dict[str, float]:
    """Wall seconds of one whole CLI run, and its summary's phase timings."""
    out = tmp / f"{name.replace(' ', '').replace(',', '_')}-{members}-{index}"
    sets = [f"ensemble.members={members}", *RUNTIMES[name]]
    cmd = [*CLI, "run", "--out", str(out), *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "RAY_TMPDIR": str(tmp)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name}, {members} members failed ({proc.returncode}): {proc.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    timings = summary["timings_s"]
    row = {"wall_s": wall, "run_s": summary["wall_time_s"], **{p: timings.get(p, 0.0) for p in PHASES}}
    row["busy_s"] = sum(r["busy_s"] for r in summary["replicas"])
    row["rest_s"] = wall - row["run_s"]  # interpreter start, imports, Ray shutdown, the report
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=8)
    ap.add_argument("--large", type=int, default=24)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start", flush=True)

    runs: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="eda-raycost-", dir="/tmp") as tmp:
        for i in range(args.repeat):
            for members in (args.small, args.large):
                for name in RUNTIMES:
                    row = one_run(Path(tmp), name, members, i)
                    runs.setdefault((name, members), []).append(row)
                    print(f"  {name:16s} M={members:3d}: {row['wall_s']:6.1f} s", flush=True)

    def median(name: str, members: int, key: str) -> float:
        return statistics.median(r[key] for r in runs[(name, members)])

    dm = args.large - args.small
    marginal = {n: {k: (median(n, args.large, k) - median(n, args.small, k)) / dm
                    for k in ["wall_s", "busy_s", *PHASES, "rest_s"]} for n in RUNTIMES}
    fixed = {n: median(n, args.small, "wall_s") - args.small * marginal[n]["wall_s"] for n in RUNTIMES}

    print(f"\nwhole CLI, demo (2 times, nside 16, MMPS), medians of {args.repeat}; "
          f"marginal = (M={args.large} − M={args.small}) / {dm}, seconds per member")
    cols = ["wall_s", "busy_s", *PHASES, "rest_s"]
    print(f"| runtime | wall M={args.small} | wall M={args.large} | fixed | " + " | ".join(cols) + " |")
    print("|---" * (4 + len(cols)) + "|")
    for n in RUNTIMES:
        print(f"| {n} | {median(n, args.small, 'wall_s'):.1f} | {median(n, args.large, 'wall_s'):.1f} | "
              f"{fixed[n]:.1f} | " + " | ".join(f"{marginal[n][k]:.3f}" for k in cols) + " |")
    print(f"\nphases of the M={args.small} runs (medians, seconds; rest = interpreter, imports, report, Ray shutdown)")
    print("| runtime | " + " | ".join(["wall_s", *PHASES, "rest_s"]) + " |")
    print("|---" * (2 + len(PHASES) + 1) + "|")
    for n in RUNTIMES:
        print(f"| {n} | " + " | ".join(f"{median(n, args.small, k):.1f}" for k in ["wall_s", *PHASES, "rest_s"]) + " |")
    ip, r1, r2 = (marginal[n]["wall_s"] for n in RUNTIMES)
    print("\n| measure | value | goal |\n|---|---|---|")
    print(f"| Ray 1 replica / in-process, marginal s per member | {r1 / ip:.2f}× | ≤ 1.15× |")
    print(f"| 1 replica / 2 replicas, marginal s per member | {r1 / r2:.2f}× | ≥ 1.7× |")
    print(f"| Ray's fixed cost over in-process (1 replica) | {fixed['Ray, 1 replica'] - fixed['in-process']:.1f} s | – |")


if __name__ == "__main__":
    main()
