"""Exactness table: guided sampling vs the exact Gaussian posterior (DESIGN.md §4, §6).

Gaussian prior at nside 8 (3 correlated channels T850/T500/T300, ℓ = 1500 km, ν² = 0.05),
100 bilinear observations with σ = 0.5 K, Karras/Heun sampling. Two priors sample the same
posterior: `exact`, the closed-form Gaussian denoiser, and `learned`, the HEALPix U-Net trained
on draws from that Gaussian (`ensemble_da/assets/gaussian8_unet`, configs/train-learned-gaussian.yaml),
so the learned rows separate the network's error from the guidance's. For each prior, guidance
method and step count: exact_mean_err = RMS over cells of (ensemble mean − exact mean)/exact std,
and exact_var_ratio = mean ensemble variance / mean exact variance (1 is exact), plus sampling
seconds per member on this machine (1 torch thread). Monte-Carlo floor of exact_mean_err with M
members is ≈ 1/√M (0.0625 for 256); the variance ratio's MC error is ≈ √(2/M_eff) with M_eff
the effective number of independent values (≫ M: thousands of weakly correlated cells).
A run that diverges (DivergenceError) is listed as such.

    python benchmarks/exactness.py [--members 256] [--steps 16 32 64] [--priors exact learned]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ensemble_da.assimilation import Assimilator
from ensemble_da.exact import exact_posterior_physical
from ensemble_da.config import RunConfig, load_config
from ensemble_da.sampling import DivergenceError

METHODS = [
    ("none", {}),
    ("regression γ=1e-1", dict(method="regression", gamma=0.1)),
    ("regression γ=1e-2", dict(method="regression", gamma=0.01)),
    ("dps ζ=10", dict(method="dps", zeta=10.0)),
    ("mmps cg=1", dict(method="mmps", solver="cg", cg_iters=1)),
    ("mmps cg=3", dict(method="mmps", solver="cg", cg_iters=3)),
    ("mmps cg=10", dict(method="mmps", solver="cg", cg_iters=10)),
    ("mmps gmres=3", dict(method="mmps", solver="gmres", cg_iters=3)),
    ("mmps gmres=10", dict(method="mmps", solver="gmres", cg_iters=10)),
]
LEARNED_GAUSSIAN = "gaussian8_unet"


def config(steps: int, members: int, guidance: dict) -> RunConfig:
    """The packaged demo's prior and observation errors at nside 8, one time, 100 observations."""
    overrides = [f"sampler.steps={steps}", f"sampler.batch_size={min(members, 64)}", f"ensemble.members={members}",
                 "grid.nside=8", "observations.num_obs=100", "guidance.method=none", "sampler.autocast=none"]
    return load_config(None, overrides + [f"guidance.{k}={v}" for k, v in guidance.items()])


def gaussian_problem(seed: int = 0):
    """The posterior problem every Gaussian benchmark shares: the demo prior at nside 8, a truth
    and 100 random bilinear observations of it (demo errors, none held out), all from
    `default_rng(seed)`. Returns (GaussianPrior, ObservationSet, ObservationOperator)."""
    from ensemble_da.obs.operators import ObservationOperator
    from ensemble_da.obs.synthetic import observe_truth, random_locations
    from ensemble_da.priors.gaussian import GaussianPrior

    cfg = config(32, 1, {})
    prior = GaussianPrior.from_config(cfg.model, cfg.grid)
    rng = np.random.default_rng(seed)
    truth = prior.sample_truth(rng)[0]
    lat, lon = random_locations(100, rng)
    obs = observe_truth(truth, np.datetime64("2020-01-01"), lat, lon, prior.grid, prior.normalization,
                        cfg.observations.model_copy(update={"heldout_fraction": 0.0}), rng)
    return prior, obs, ObservationOperator.build(obs, prior.grid, prior.normalization, cfg.observations.operator)


def learned_gaussian():
    """The shipped learned-Gaussian checkpoint (`LearnedDenoiser`, nside 8, unconditional)."""
    from importlib import resources

    from ensemble_da.priors.checkpoint import load_checkpoint

    return load_checkpoint(str(resources.files("ensemble_da") / "assets" / LEARNED_GAUSSIAN))


def scores(x: np.ndarray, exact_mean: np.ndarray, exact_spread: np.ndarray) -> tuple[float, float]:
    """(exact_mean_err, exact_var_ratio) of members x (member, channel, cell)."""
    err = np.sqrt((((x.mean(0) - exact_mean) / exact_spread) ** 2).mean())
    return float(err), float(x.var(0, ddof=1).mean() / (exact_spread**2).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=256)
    parser.add_argument("--steps", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--priors", nargs="+", default=["exact", "learned"], choices=["exact", "learned"])
    parser.add_argument("--methods", nargs="+", default=None, help="labels of METHODS to run (default all)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    exact, obs, op = gaussian_problem()
    exact_mean, exact_spread = exact_posterior_physical(exact, op)
    priors = {"exact": exact}
    if "learned" in args.priors:
        priors["learned"] = learned_gaussian()
        # the network alone: unguided draws against the exact prior (mean 0 ⇒ err in prior std units)
        cfg = config(32, args.members, {})
        x = Assimilator(cfg, prior=priors["learned"]).sample(None, 0, list(range(args.members))).analysis.astype(np.float64)
        err, ratio = scores(x, exact.normalization.denormalize(np.zeros_like(exact_mean)), exact.prior_spread())
        print(f"learned prior alone (32 steps, no obs) vs exact prior: mean_err {err:.3f}, var_ratio {ratio:.3f}")
    priors = {k: v for k, v in priors.items() if k in args.priors}
    methods = [m for m in METHODS if args.methods is None or m[0] in args.methods]

    print(f"members={args.members}, nside=8, 100 bilinear obs, Heun; MC floor of exact_mean_err ≈ {1 / np.sqrt(args.members):.3f}\n")
    print("| prior | method | steps | exact_mean_err | exact_var_ratio | s/member |")
    print("|---|---|---:|---:|---:|---:|")
    for pname, prior in priors.items():
        for label, guidance in methods:
            for steps in args.steps:
                cfg = config(steps, args.members, guidance)
                a = Assimilator(cfg, prior=prior)
                start = time.perf_counter()
                try:
                    x = a.sample(obs, 0, list(range(args.members))).analysis.astype(np.float64)
                except DivergenceError as exc:
                    print(f"| {pname} | {label} | {steps} | diverged at step {exc.step} (σ={exc.sigma:.3g}) | – | – |", flush=True)
                    continue
                seconds = (time.perf_counter() - start) / args.members
                err, ratio = scores(x, exact_mean, exact_spread)
                print(f"| {pname} | {label} | {steps} | {err:.3f} | {ratio:.3f} | {seconds:.4f} |", flush=True)


if __name__ == "__main__":
    main()
