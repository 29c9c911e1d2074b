"""Cost of the observation operator alone: forward H x plus adjoint Hᵀ y, in µs per observation
per call, at 10³, 10⁴ and 10⁵ observations (DESIGN.md §5).

Set-up: nside 64 (49,152 cells), 3 channels, batch 4 members, float32 on the CPU, 1 torch thread;
observations at random locations, channels in turn. Kinds: bilinear, column (3 channels) and
footprint (radius 100 km). The plan (gather indices and weights) is built once, before timing,
as in a run. Each figure is the median over repeats of one forward + one adjoint call, divided
by the number of observations.

Second table (`--guided`): one guided denoiser call, D plus the guidance, with the stand-in
denoiser of benchmarks/scale.py (the exact denoiser of a white prior, one multiply per value, so
what is timed is the guidance: H, the VJP/JVPs through D and H, the MMPS solve) at nside 64 ×
45 channels, batch 4, σ = 1, bilinear observations on random channels; regression and MMPS
(3 GMRES iterations). Each size runs in its own process, whose peak RSS is reported (goal: a
guided call at 10⁵ within 3× of 10³; memory linear in the observations with a small constant).

    python benchmarks/operator_cost.py [--repeats 7] [--nside 64] [--guided]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from ensemble_da.channels import Normalization
from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators import ObservationOperator
from ensemble_da.obs.synthetic import random_locations

CHANNELS = ["T850", "T500", "T300"]
KINDS = {
    "bilinear": "bilinear",
    "column": {"kind": "column", "weights": {"T850": 0.5, "T500": 0.3, "T300": 0.2}},
    "footprint": {"kind": "footprint", "radius_km": 100.0},
}


def median_seconds(call, repeats: int) -> float:
    """Median wall seconds of `call()` over `repeats` calls, after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_call(op, x, repeats: int) -> float:
    """One forward + one adjoint call of `op` at `x`."""
    return median_seconds(lambda: op.adjoint(op.forward(x)), repeats)


def guided_child(n: int, method: str, repeats: int) -> dict:
    """One guided call at `n` observations in this process: median seconds and peak RSS (MiB)."""
    from scale import CHANNELS as LEVELS, ShrinkagePrior

    from ensemble_da.config import GuidanceConfig
    from ensemble_da.guidance import guided_denoiser

    rng = np.random.default_rng(1)
    prior = ShrinkagePrior(64, LEVELS)
    lat, lon = random_locations(n, rng)
    obs = ObservationSet(time=np.datetime64("2020-01-01"), lat=lat, lon=lon,
                         channel=np.array(LEVELS)[rng.integers(0, len(LEVELS), n)], value=np.full(n, 250.0), sigma=1.0)
    op = ObservationOperator.build(obs, prior.grid, prior.normalization, "bilinear")
    cfg = GuidanceConfig(method=method, solver="gmres", cg_iters=3)
    guided = guided_denoiser(prior, op, cfg, autocast=False)
    z = torch.randn(4, len(LEVELS), prior.grid.npix)
    sigma = torch.ones(4)
    seconds = median_seconds(lambda: guided(z, sigma), repeats)
    return {"s": seconds, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def guided_table(repeats: int) -> None:
    print("\nguided call, stand-in denoiser, nside 64 x 45 channels, batch 4, 1 thread (own process per size)")
    print(f"{'method':<11} {'n_obs':>8} {'ms/call':>9} {'vs 10^3':>8} {'peak RSS MiB':>13}")
    for method in ("regression", "mmps"):
        base = None
        for n in (10**3, 10**4, 10**5):
            out = subprocess.run([sys.executable, __file__, "--child", json.dumps([n, method, repeats])],
                                 check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            base = base or row["s"]
            print(f"{method:<11} {n:>8} {row['s'] * 1e3:>9.2f} {row['s'] / base:>7.2f}x {row['rss_mib']:>13.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--nside", type=int, default=64)
    parser.add_argument("--guided", action="store_true", help="also the guided-call table")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.child:
        print(json.dumps(guided_child(*json.loads(args.child))))
        return
    rng = np.random.default_rng(0)
    grid = HealpixGrid(args.nside)
    norm = Normalization(CHANNELS, [250.0] * 3, [5.0] * 3)
    x = torch.randn(4, len(CHANNELS), grid.npix)
    print(f"nside {args.nside}, batch {x.shape[0]}, float32, 1 thread: forward + adjoint, µs per observation per call")
    print(f"{'kind':<10} {'n_obs':>8} {'ms/call':>9} {'µs/obs':>8}")
    for name, spec in KINDS.items():
        for n in (10**3, 10**4, 10**5):
            lat, lon = random_locations(n, rng)
            obs = ObservationSet(time=np.datetime64("2020-01-01"), lat=lat, lon=lon,
                                 channel=np.array(CHANNELS)[np.arange(n) % len(CHANNELS)],
                                 value=np.zeros(n), sigma=1.0)
            op = ObservationOperator.build(obs, grid, norm, spec)
            t = time_call(op, x, args.repeats)
            print(f"{name:<10} {n:>8} {t * 1e3:>9.3f} {t / n * 1e6:>8.4f}", flush=True)
    if args.guided:
        guided_table(args.repeats)


if __name__ == "__main__":
    main()
