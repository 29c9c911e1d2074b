"""Cost of the observation operator alone: forward H x plus adjoint Hᵀ y, in µs per observation
per call, at 10³, 10⁴ and 10⁵ observations (DESIGN.md §5).

Set-up: nside 64 (49,152 cells), 3 channels, batch 4 members, float32 on the CPU, 1 torch thread;
observations at random locations, channels in turn. Kinds: bilinear, column (3 channels) and
footprint (radius 100 km). The plan (gather indices and weights) is built once, before timing,
as in a run. Each figure is the median over repeats of one forward + one adjoint call, divided
by the number of observations.

    python benchmarks/operator_cost.py [--repeats 7] [--nside 64]
"""

from __future__ import annotations

import argparse
import statistics
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


def time_call(op, x, repeats: int) -> float:
    y = op.forward(x)
    op.adjoint(y)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        y = op.forward(x)
        op.adjoint(y)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--nside", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
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


if __name__ == "__main__":
    main()
