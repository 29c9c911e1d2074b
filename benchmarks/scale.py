"""The runtime at the users' scale (issue 11), measured in one run and printed as tables.

Every run here is a real `run_pipeline` on Ray (loopback) with a cheap stand-in denoiser, so what
is measured is the runtime, not a network: `ShrinkagePrior` is the exact denoiser of a white
N(0, I) prior, D(z, σ) = z / (1 + σ²) (one multiply per value), at HEALPix nside 64 × 45
channels (T at 45 pressure levels; 49,152 cells, 8.8 MB per member in float32). The simulated
cluster uses `SleepPrior`, whose "GPU" is a fixed sleep per denoiser call (no CPU).

1. Driver peak RSS, M = 16 vs M = 256 members (goal: ratio <= 1.2, independent of M), and the
   bytes the driver receives per member (goal: <= 1% of one member field).
2. Observations per analysis time, 10^3 vs 10^5: peak RSS of every process and time per member
   (goal: growth at most linear in the observations; guidance cost per call at 10^5 within 1.5x
   of 10^3). Guidance: regression (one VJP through the denoiser and H per call).
3. Simulated cluster: 8 / 32 / 64 replicas on a `ray.cluster_utils.Cluster` of several logical
   nodes, throughput / ideal (goal >= 0.9 at 64), timed from the first unit issued to the last
   delivered (replica start-up excluded).

Each configuration runs in its own process (so peak RSS is its own). Usage:
  .venv/bin/python benchmarks/scale.py [--members 16 256] [--obs 1000 100000] [--replicas 8 32 64]
  [--skip driver,obs,cluster]
The README's Ray overhead and 2-vs-1 replica ratios are benchmarks/ray_overhead.py.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHANNELS = [f"T{p}" for p in range(100, 1000, 20)]  # 45 pressure levels


class ShrinkagePrior:
    """Exact denoiser of z ~ N(0, I): D(z, σ) = z / (1 + σ²); `sleep_s` per call simulates a GPU."""

    sigma_min, sigma_max = 0.002, 80.0
    allows_autocast = False

    def __init__(self, nside: int, channels: list[str], sleep_s: float = 0.0):
        from ensemble_da.channels import Normalization
        from ensemble_da.grid import HealpixGrid

        self.grid = HealpixGrid(nside)
        self.normalization = Normalization(tuple(channels), np.full(len(channels), 250.0),
                                           np.full(len(channels), 10.0))
        self.sleep_s = sleep_s

    def __call__(self, z, sigma, condition=None):
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return z / (1 + sigma.reshape(-1, 1, 1) ** 2)

    def sample_truth(self, rng: np.random.Generator, n: int = 1) -> np.ndarray:
        z = rng.standard_normal((n, len(self.normalization.channels), self.grid.npix))
        return self.normalization.denormalize(z)


class PriorFactory:
    """Picklable `prior_factory` for run_pipeline (replicas build their own copy)."""

    def __init__(self, nside: int, channels: list[str], sleep_s: float = 0.0):
        self.args = (nside, channels, sleep_s)

    def __call__(self, device):
        return ShrinkagePrior(*self.args)


def config(members: int, nside: int, channels: list[str], num_obs: int, guidance: str, steps: int, **cluster):
    from ensemble_da.config import RunConfig

    return RunConfig.model_validate(dict(
        run_name="scale", seed=0, times=["2020-01-01T00:00"], grid=dict(nside=nside),
        model=dict(kind="gaussian", channels=channels, mean={c: 250.0 for c in channels},
                   std={c: 10.0 for c in channels}),
        sampler=dict(steps=steps, solver="euler", batch_size=cluster.get("members_per_unit", 8)),
        guidance=dict(method=guidance), ensemble=dict(members=members),
        observations=dict(channels=channels, num_obs=num_obs, sigma={c: 1.0 for c in channels},
                          osse_grid_deg=1.0, heldout_fraction=0.1),
        cluster={"address": "local", "replicas": 2, **cluster},
    ))


class TreeRSS:
    """Peak RSS of this process and of each descendant, sampled every `interval` s."""

    def __init__(self, interval: float = 0.2):
        self.peak: dict[str, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self.thread.start()

    @staticmethod
    def _role(p: psutil.Process) -> str:
        if p.pid == os.getpid():
            return "driver"
        name = " ".join(p.cmdline()[:1])
        for role in ("ModelReplica", "Aggregator", "StoreWriter", "score_cells"):
            if role in name:
                return role
        return "ray system"

    def _run(self, interval: float) -> None:
        me = psutil.Process()
        while not self.stop.is_set():
            per: dict[str, int] = {}
            for p in [me] + me.children(recursive=True):
                try:
                    role = self._role(p)
                    per[role] = max(per.get(role, 0), p.memory_info().rss)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            for role, rss in per.items():
                self.peak[role] = max(self.peak.get(role, 0), rss)
            self.stop.wait(interval)

    def close(self) -> dict[str, float]:
        self.stop.set()
        self.thread.join()
        return {k: v / 2**20 for k, v in self.peak.items()}


def child(args) -> None:
    """One configuration in this process; prints a JSON line."""
    from actors.run import run_pipeline

    cfg = config(args.members, 64, CHANNELS, args.num_obs, args.guidance, args.steps, members_per_unit=8)
    rss = TreeRSS()
    with tempfile.TemporaryDirectory(prefix="eda-scale-", dir="/tmp") as tmp:
        os.environ["RAY_TMPDIR"] = tmp
        res = run_pipeline(cfg, Path(tmp) / "run", progress=False, prior_factory=PriorFactory(64, CHANNELS))
    per_process = rss.close()
    s = res.summary
    print(json.dumps({
        "members": args.members, "num_obs": args.num_obs, "guidance": args.guidance,
        "driver_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "per_process_peak_rss_mib": per_process,
        "driver_bytes_per_member": s["driver_bytes_received"] / s["members_sampled"],
        "member_field_bytes": 4 * len(CHANNELS) * 12 * 64**2,
        "sampling_s_per_member": s["timings_s"]["sampling_s"] / s["members_sampled"],
        "units_wall_s": s["timings_s"]["units_wall_s"], "wall_s": s["wall_time_s"],
        "calls_per_member": args.steps,
    }))


def run_child(**kw) -> dict:
    argv = [sys.executable, __file__, "--child"] + [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    out = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def simulated_cluster(replicas: int, nodes: int, sleep_s: float, units_each: int, steps: int) -> dict:
    """`replicas` sleep-"GPU" replicas on a Cluster of `nodes` logical nodes: throughput / ideal."""
    from actors.run import run_pipeline
    from actors.ray_backend.session import import_ray_loopback

    ray = import_ray_loopback()
    from ray.cluster_utils import Cluster

    per_node = -(-replicas // nodes)
    with tempfile.TemporaryDirectory(prefix="eda-sim-", dir="/tmp") as tmp:
        os.environ["RAY_TMPDIR"] = tmp
        c = Cluster(initialize_head=True, head_node_args=dict(num_cpus=0))
        try:
            for _ in range(nodes):
                c.add_node(num_cpus=per_node, num_gpus=per_node)
            c.wait_for_nodes()
            ray.init(address=c.address, log_to_driver=False, logging_level="warning")
            members = replicas * units_each
            cfg = config(members, 1, ["T850"], 20, "none", steps, members_per_unit=1, replicas=replicas,
                         gpus_per_replica=1, device="cpu", address=c.address, aggregators=2)
            res = run_pipeline(cfg, Path(tmp) / "run", progress=False,
                               prior_factory=PriorFactory(1, ["T850"], sleep_s))
        finally:
            ray.shutdown()
            c.shutdown()
    wall = res.summary["timings_s"]["units_wall_s"]
    ideal = units_each * steps * sleep_s
    return {"replicas": replicas, "nodes": nodes, "members": members, "wall_s": wall, "ideal_s": ideal,
            "efficiency": ideal / wall, "retries": res.summary["retries"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--members", type=int, nargs="+", default=[16, 256])
    ap.add_argument("--num-obs", type=int, default=1000)
    ap.add_argument("--obs", type=int, nargs="+", default=[1000, 100000])
    ap.add_argument("--guidance", default="none")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--replicas", type=int, nargs="+", default=[8, 32, 64])
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--sleep", type=float, default=0.5, help="seconds per denoiser call of a simulated GPU")
    ap.add_argument("--units-each", type=int, default=4)
    ap.add_argument("--skip", default="", help="comma list of driver,obs,cluster")
    args = ap.parse_args()
    if args.child:
        args.members = args.members[0]
        return child(args)
    torch.set_num_threads(1)
    skip = set(args.skip.split(","))
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start", flush=True)

    if "driver" not in skip:
        rows = [run_child(members=m, num_obs=1000, guidance="none", steps=2) for m in args.members]
        print(f"\n1. driver memory and traffic, nside 64 x 45 channels, 2 replicas, shrinkage stand-in, "
              f"2 Euler steps, 10^3 obs ({rows[0]['member_field_bytes'] / 1e6:.1f} MB per member field)")
        print(f"{'members':>8} {'driver peak RSS MiB':>20} {'bytes to driver / member':>25} {'% of a field':>13} "
              f"{'wall s':>8}")
        for r in rows:
            print(f"{r['members']:>8} {r['driver_peak_rss_mib']:>20.0f} {r['driver_bytes_per_member']:>25.0f} "
                  f"{100 * r['driver_bytes_per_member'] / r['member_field_bytes']:>12.3f}% {r['wall_s']:>8.1f}")
        print(f"driver peak RSS ratio M={args.members[-1]} / M={args.members[0]}: "
              f"{rows[-1]['driver_peak_rss_mib'] / rows[0]['driver_peak_rss_mib']:.3f} (goal <= 1.2)")

    if "obs" not in skip:
        base = run_child(members=16, num_obs=args.obs[0], guidance="none", steps=4)
        rows = [run_child(members=16, num_obs=n, guidance="regression", steps=4) for n in args.obs]
        print("\n2. observations per analysis time, nside 64 x 45 channels, 16 members, 4 Euler steps, regression "
              "guidance (peak RSS MiB per process role; time per member in the replicas)")
        roles = sorted({k for r in rows for k in r["per_process_peak_rss_mib"]})
        print(f"{'obs':>8} " + " ".join(f"{k:>12}" for k in roles) + f" {'s/member':>9} {'guidance s/call':>16}")
        for r in rows:
            per_call = (r["sampling_s_per_member"] - base["sampling_s_per_member"]) / r["calls_per_member"]
            r["guidance_per_call"] = per_call
            print(f"{r['num_obs']:>8} " + " ".join(f"{r['per_process_peak_rss_mib'].get(k, 0):>12.0f}" for k in roles)
                  + f" {r['sampling_s_per_member']:>9.3f} {per_call:>16.4f}")
        print(f"unguided reference at {args.obs[0]} obs: {base['sampling_s_per_member']:.3f} s/member; guidance cost "
              f"per call ratio {args.obs[-1]} / {args.obs[0]} obs: "
              f"{rows[-1]['guidance_per_call'] / rows[0]['guidance_per_call']:.2f} (goal <= 1.5)")

    if "cluster" not in skip:
        print(f"\n3. simulated cluster: sleep-GPU replicas ({args.sleep} s per call, 4 Euler steps, 1 member per unit, "
              f"{args.units_each} units per replica) on {args.nodes} logical nodes", flush=True)
        print(f"{'replicas':>9} {'members':>8} {'wall s':>8} {'ideal s':>8} {'throughput/ideal':>17}")
        for n in args.replicas:
            r = simulated_cluster(n, args.nodes, args.sleep, args.units_each, 4)
            print(f"{n:>9} {r['members']:>8} {r['wall_s']:>8.2f} {r['ideal_s']:>8.2f} {r['efficiency']:>17.3f}",
                  flush=True)


if __name__ == "__main__":
    sys.exit(main())
