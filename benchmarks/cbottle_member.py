"""Time one guided cBottle member: seconds per member for each guidance method and label.

Loads real cBottle checkpoints (needs the cbottle package, README "cBottle") and draws one
member per (method, label) with cBottle's schedule (18 Heun steps, σ 0.02..200) and bf16
autocast on CUDA, 2000 bilinear observations of T850/U850/Z500 at random places. Prints a table
of wall seconds per member and the ratio to the unguided ICON-labelled member, measured in one
process after one warm-up member.

    python benchmarks/cbottle_member.py CKPT [CKPT ...] [--thresholds 100 10] [--sst 290]
        [--device cuda:0] [--steps 18]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.synthetic import random_locations
from ensemble_da.posterior import sample_posterior
from ensemble_da.priors.cbottle import load_cbottle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--thresholds", nargs="*", type=float, default=[])
    ap.add_argument("--sst", type=float, default=290.0)
    ap.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--obs", type=int, default=2000)
    args = ap.parse_args()

    rows = []
    for label in ("icon", "era5"):
        den = load_cbottle(args.checkpoints, args.thresholds, label, args.sst, args.device)
        channels = [c for c in ("T850", "U850", "Z500") if c in den.normalization.channels]
        lat, lon = random_locations(args.obs, np.random.default_rng(0))
        ch = np.array(channels)[np.arange(args.obs) % len(channels)]
        center = den.normalization.center[den.normalization.index(ch)]
        obs = ObservationSet(time=np.datetime64("2021-03-02T06:00"), lat=lat, lon=lon, channel=ch, value=center, sigma=1.0)
        sampler = dict(steps=args.steps, sigma_min=den.sigma_min, sigma_max=den.sigma_max, batch_size=1)
        for method in ("none", "regression", "mmps"):
            run = lambda m: sample_posterior(den, obs, [m], 0, sampler=sampler, guidance=method, time="2021-03-02T06:00", device=args.device)  # noqa: E731
            run(0)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            run(1)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            rows.append((label, method, time.perf_counter() - t0))
    base = rows[0][2]
    print(f"{'label':6} {'guidance':11} {'s/member':>9} {'ratio':>6}")
    for label, method, s in rows:
        print(f"{label:6} {method:11} {s:9.2f} {s / base:6.2f}")


if __name__ == "__main__":
    main()
