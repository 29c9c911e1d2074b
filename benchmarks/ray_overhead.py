"""Costs of the distributed runtime, measured in one run and printed as ratios (issue 3).

1. Ray overhead: the same work units on 1 Ray replica vs in-process (goal <= 1.15x), timed from
   "replicas loaded" to "last unit delivered" (start-up is reported separately); the runs are
   interleaved and repeated, and the best of each is kept, so other load on the machine skews
   the ratios less.
2. Scaling: 2 single-thread Ray replicas vs 1 on this machine, members per second (goal >= 1.7x).
3. Aggregator cost per member block vs sampling cost per block, from an in-process run of the
   demo's science settings (goal <= 5%); the zarr write per block is reported beside it.
4. Peak memory of the demo (`ensemble-da run`, all processes: driver, Ray, replicas).

Usage: .venv/bin/python benchmarks/ray_overhead.py [--steps 16] [--members 8] [--skip-demo]
Timings depend on what else runs on the machine; compare ratios within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local Ray on loopback
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from actors.executor import InProcessExecutor  # noqa: E402
from actors.run import run_pipeline  # noqa: E402
from ensemble_da.assimilation import WorkUnit  # noqa: E402
from ensemble_da.config import load_config  # noqa: E402
from ensemble_da.obs.inputs import prepare_inputs  # noqa: E402
from ensemble_da.truth import osse_truths  # noqa: E402
from ensemble_da.priors import load_prior  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class NullSink:
    """Replicas keep their blocks: these timings are of sampling and transport, as before the
    replicas wrote their own blocks (the write is measured in the aggregator run below)."""

    def check(self) -> None:
        pass

    def write(self, unit, attempt, analysis) -> bool:
        return True


def demo_config(steps: int, members: int, units_of: int, **cluster):
    over = [f"sampler.steps={steps}", f"ensemble.members={members}", f"cluster.members_per_unit={units_of}",
            'times=["2020-01-01T00:00"]']
    over += [f"cluster.{k}={v}" for k, v in cluster.items()]
    return load_config(None, over)


def units_and_obs(config):
    prior = load_prior(config.model, config.grid)
    inputs = prepare_inputs(config, prior, osse_truths(prior, config))
    m, k = config.ensemble.members, config.cluster.members_per_unit
    units = [WorkUnit(0, tuple(range(lo, min(lo + k, m)))) for lo in range(0, m, k)]
    return units, inputs.observations


def timed_run(executor, units, obs, pids) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the replica processes `pids`) to run `units`."""
    procs = [psutil.Process(p) for p in pids]
    cpu0 = sum(sum(p.cpu_times()[:2]) for p in procs)
    start = time.perf_counter()
    executor.run(units, obs, lambda report, stats: None)
    wall = time.perf_counter() - start
    return wall, sum(sum(p.cpu_times()[:2]) for p in procs) - cpu0


def ray_runs(args) -> dict:
    """Best of `args.repeat` interleaved timings of the same units: in-process, 1 and 2 Ray replicas."""
    from actors.ray_backend.coordinator import Coordinator
    from actors.ray_backend.session import ray_session

    out: dict = {}
    cfg = {n: demo_config(args.steps, args.members, args.units_of, replicas=n, address="local") for n in (1, 2)}
    units, obs = units_and_obs(cfg[1])
    t0 = time.perf_counter()
    local = InProcessExecutor(cfg[1], NullSink())
    out["inprocess_start_s"] = time.perf_counter() - t0

    with tempfile.TemporaryDirectory(prefix="eda-ray-", dir="/tmp") as tmp:
        os.environ["RAY_TMPDIR"] = tmp
        t0 = time.perf_counter()
        with ray_session("local", num_cpus=3):  # room for both coordinators' replicas (idle ones cost no CPU)
            out["ray_init_s"] = time.perf_counter() - t0
            coordinators = {}
            for n in (1, 2):
                t0 = time.perf_counter()
                coordinators[n] = Coordinator(cfg[n], NullSink(), None)
                coordinators[n].replica_info()
                out[f"ray{n}_start_s"] = time.perf_counter() - t0
            pids = {"inprocess": [os.getpid()]}
            pids.update({f"ray{n}": [s.info["pid"] for s in co.stats] for n, co in coordinators.items()})
            runners = {"inprocess": local, "ray1": coordinators[1], "ray2": coordinators[2]}
            times: dict[str, list[float]] = {f"{k}_s": [] for k in runners}
            cpu: dict[str, list[float]] = {f"{k}_cpu_s": [] for k in runners}
            for _ in range(args.repeat):
                for key, runner in runners.items():
                    wall, used = timed_run(runner, units, obs, pids[key])
                    times[f"{key}_s"].append(wall)
                    cpu[f"{key}_cpu_s"].append(used)
            out.update({k: min(v) for k, v in times.items()})
            out.update({k: min(v) for k, v in cpu.items()})
            out["all_s"] = times
            out["ray2_members_per_replica"] = [s.members for s in coordinators[2].stats]
            for co in coordinators.values():
                co.shutdown()
    return out


def aggregator_share(args) -> dict:
    """In-process run with the demo's science and unit size: seconds spent sampling, writing and
    aggregating (one time, so the per-time scores are shared by fewer blocks than in the demo)."""
    demo = load_config(None)
    per_unit = demo.cluster.members_per_unit
    cfg = demo_config(demo.sampler.steps, 2 * per_unit, per_unit, address="inprocess", replicas=1)
    with tempfile.TemporaryDirectory() as tmp:
        res = run_pipeline(cfg, Path(tmp) / "run", progress=False)
    return {"blocks": 2, "per_unit": per_unit, "steps": demo.sampler.steps, **res.summary["timings_s"]}


def demo_peak_memory(interval: float = 0.25) -> dict:
    """Run the demo as a subprocess and sample the RSS and PSS of its whole process tree."""
    with tempfile.TemporaryDirectory(prefix="eda-demo-", dir="/tmp") as tmp:
        env = {**os.environ, "RAY_TMPDIR": tmp}
        env.pop("RAY_AUTH_MODE", None)  # as a user runs it
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(REPO / ".venv/bin/ensemble-da"), "run", "--out", f"{tmp}/run"],
                                cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        peak = {"rss": 0, "pss": 0, "procs": 0}
        root = psutil.Process(proc.pid)
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                try:
                    procs = [root] + root.children(recursive=True)
                except psutil.NoSuchProcess:
                    break
                rss = pss = 0
                for p in procs:
                    try:
                        info = p.memory_full_info()
                        rss, pss = rss + info.rss, pss + info.pss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
                if pss > peak["pss"]:
                    peak.update(pss=pss, procs=len(procs))
                peak["rss"] = max(peak["rss"], rss)
                stop.wait(interval)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        stdout, stderr = proc.communicate()
        stop.set()
        th.join()
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"demo failed ({proc.returncode}): {stderr[-2000:]}")
        summary = json.loads(Path(f"{tmp}/run/summary.json").read_text())
    return {"wall_s": wall, "peak_rss_gib": peak["rss"] / 2**30, "peak_pss_gib": peak["pss"] / 2**30,
            "procs_at_peak": peak["procs"], "table": stdout, "summary_timings": summary["timings_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=16, help="sampler steps for the Ray runs")
    ap.add_argument("--members", type=int, default=8, help="members for the Ray runs")
    ap.add_argument("--units-of", type=int, default=2, help="members per work unit for the Ray runs")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved repeats of the Ray/in-process runs (best kept)")
    ap.add_argument("--skip-demo", action="store_true")
    args = ap.parse_args()

    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    r = ray_runs(args)
    m = args.members
    a = aggregator_share(args)
    rows = [
        ("Ray overhead: 1 Ray replica / in-process (time)", r["ray1_s"] / r["inprocess_s"], "<= 1.15"),
        ("Scaling: 2 replicas / 1 replica (members/s)", r["ray1_s"] / r["ray2_s"], ">= 1.7"),
        ("Aggregator / sampling, per member block", a["aggregating_s"] / a["sampling_s"], "<= 0.05"),
        ("Zarr write / sampling, per member block", a["writing_s"] / a["sampling_s"], "(info)"),
    ]
    print(f"\nunits: {m} members of nside 16, {args.steps} steps, mmps, blocks of {args.units_of}")
    print("all timings (s):", {k: [round(x, 2) for x in v] for k, v in r["all_s"].items()})
    print(f"best: in-process {r['inprocess_s']:.2f} s ({m / r['inprocess_s']:.2f} members/s); "
          f"1 Ray replica {r['ray1_s']:.2f} s; 2 Ray replicas {r['ray2_s']:.2f} s "
          f"(members per replica over all repeats {r['ray2_members_per_replica']})")
    print(f"replica CPU seconds per member (best): in-process {r['inprocess_cpu_s'] / m:.2f}, "
          f"1 Ray replica {r['ray1_cpu_s'] / m:.2f}, 2 Ray replicas {r['ray2_cpu_s'] / m:.2f}  "
          "(equal values: replicas do not slow each other; the rest of 2-vs-1 is cores taken by other load)")
    print(f"start-up: ray.init {r['ray_init_s']:.1f} s, 1 replica ready {r['ray1_start_s']:.1f} s, "
          f"2 replicas ready {r['ray2_start_s']:.1f} s, in-process replica {r['inprocess_start_s']:.1f} s")
    print(f"aggregator run: {a['blocks']} blocks of {a['per_unit']} members, {a['steps']} steps: sampling {a['sampling_s']:.2f} s, "
          f"aggregating {a['aggregating_s']:.3f} s, writing {a['writing_s']:.3f} s")
    if not args.skip_demo:
        d = demo_peak_memory()
        rows.append(("Demo peak memory, all processes, PSS (GiB)", d["peak_pss_gib"], "(report)"))
        rows.append(("Demo peak memory, all processes, RSS sum (GiB)", d["peak_rss_gib"], "(report)"))
        rows.append(("Demo wall time (s)", d["wall_s"], "< 120"))
        print(f"demo: {d['wall_s']:.1f} s wall, {d['procs_at_peak']} processes at peak; "
              f"its aggregator/sampling {d['summary_timings']['aggregating_s'] / d['summary_timings']['sampling_s']:.4f}")
        print(d["table"])
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure':<{width}}  {'value':>8}  goal")
    for name, value, goal in rows:
        print(f"{name:<{width}}  {value:8.3f}  {goal}")


if __name__ == "__main__":
    sys.exit(main())
