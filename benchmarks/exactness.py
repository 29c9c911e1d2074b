"""Exactness table: guided sampling vs the exact Gaussian posterior (DESIGN.md §4, §6).

Gaussian prior at nside 8 (3 correlated channels T850/T500/T300, ℓ = 1500 km, ν² = 0.05),
100 bilinear observations with σ = 0.5 K, Karras/Heun sampling. For each guidance method and
step count: exact_mean_err = RMS over cells of (ensemble mean − exact mean)/exact std, and
exact_var_ratio = mean ensemble variance / mean exact variance (1 is exact), plus sampling
seconds per member on this machine (1 torch thread). Monte-Carlo floor of exact_mean_err with M
members is ≈ 1/√M (0.0625 for 256).

    python benchmarks/exactness.py [--members 256] [--steps 16 32 64]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ensemble_da.assimilation import Assimilator
from ensemble_da.exact import exact_posterior_physical
from ensemble_da.config import RunConfig, load_config

METHODS = [
    ("none", {}),
    ("regression γ=1e-1", dict(method="regression", gamma=0.1)),
    ("regression γ=1e-2", dict(method="regression", gamma=0.01)),
    ("dps ζ=10", dict(method="dps", zeta=10.0)),
    ("mmps cg=1", dict(method="mmps", cg_iters=1)),
    ("mmps cg=3", dict(method="mmps", cg_iters=3)),
    ("mmps cg=10", dict(method="mmps", cg_iters=10)),
]


def config(steps: int, members: int, guidance: dict) -> RunConfig:
    """The packaged demo's prior and observation errors at nside 8, one time, 100 observations."""
    overrides = [f"sampler.steps={steps}", f"sampler.batch_size={members}", f"ensemble.members={members}",
                 "grid.nside=8", "observations.num_obs=100", "guidance.method=none"]
    return load_config(None, overrides + [f"guidance.{k}={v}" for k, v in guidance.items()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=256)
    parser.add_argument("--steps", type=int, nargs="+", default=[16, 32, 64])
    args = parser.parse_args()
    torch.set_num_threads(1)

    from ensemble_da.obs.observation_set import ObservationSet
    from ensemble_da.obs.synthetic import observe_truth, random_locations

    base = config(32, args.members, {})
    assim = Assimilator(base)
    rng = np.random.default_rng(0)
    truth = assim.prior.sample_truth(rng)[0]
    lat, lon = random_locations(100, rng)
    obs: ObservationSet = observe_truth(truth, np.datetime64("2020-01-01"), lat, lon, assim.grid,
                                        assim.normalization, base.observations.model_copy(update={"heldout_fraction": 0.0}), rng)
    exact_mean, exact_spread = exact_posterior_physical(assim.prior, assim.operator(obs))

    print(f"members={args.members}, nside=8, 100 bilinear obs, Heun; MC floor of exact_mean_err ≈ {1 / np.sqrt(args.members):.3f}\n")
    print("| method | steps | exact_mean_err | exact_var_ratio | s/member |")
    print("|---|---:|---:|---:|---:|")
    for label, guidance in METHODS:
        for steps in args.steps:
            cfg = config(steps, args.members, guidance)
            a = Assimilator(cfg, prior=assim.prior)
            start = time.perf_counter()
            x = a.sample(obs, 0, list(range(args.members))).analysis.astype(np.float64)
            seconds = (time.perf_counter() - start) / args.members
            finite = np.isfinite(x).all()
            err = np.sqrt((((x.mean(0) - exact_mean) / exact_spread) ** 2).mean()) if finite else float("nan")
            ratio = x.var(0, ddof=1).mean() / (exact_spread**2).mean() if finite else float("nan")
            print(f"| {label} | {steps} | {err:.3f} | {ratio:.3f} | {seconds:.4f} |", flush=True)


if __name__ == "__main__":
    main()
