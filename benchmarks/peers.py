"""Peers side by side: our MMPS against azula's MMPS (Rozet et al.; `pip install azula --no-deps`,
plus einops and tqdm, so its torchvision dependency never replaces the CPU torch).

Same denoiser, same observations, same members and steps: the exact Gaussian prior at nside 8
(3 channels, the demo's covariance) and the learned-Gaussian U-Net trained on its draws
(ensemble_da/assets/gaussian8_unet), 100 bilinear observations with σ = 0.5 K. azula runs its
`MMPSDenoiser` (GMRES or CG, `iterations`) inside its `HeunSampler` on a schedule whose σ(t)
is our Karras schedule (α = 1, σ_max = 80 … σ_min = 0.002, ρ = 7), ending at σ_min; ours runs
`edm_sample` (Heun, last step σ_min → 0 by Euler). Accuracy against the exact posterior
(exact_mean_err: RMS of (mean − exact mean)/exact std; exact_var_ratio) and seconds per member
on 1 torch thread.

    python benchmarks/peers.py [--members 64] [--steps 32] [--priors exact learned]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from ensemble_da.config import GuidanceConfig  # noqa: E402
from ensemble_da.exact import exact_posterior  # noqa: E402
from ensemble_da.guidance import guided_denoiser  # noqa: E402
from ensemble_da.obs.operators import ObservationOperator  # noqa: E402
from ensemble_da.sampling import KarrasSchedule, edm_sample, member_generator  # noqa: E402


def azula_mmps(prior, op: ObservationOperator, members: int, steps: int, solver: str, iters: int, seed: int = 0) -> np.ndarray:
    """Posterior members (member, channel, cell) from azula's MMPS + Heun on our denoiser."""
    from azula.denoise import DiracPosterior, Denoiser
    from azula.guidance import MMPSDenoiser
    from azula.linalg.covariance import DiagonalCovariance
    from azula.noise import Schedule
    from azula.sample import HeunSampler

    k = KarrasSchedule(steps=steps)

    class KarrasSigma(Schedule):
        def __call__(self, t):
            lo, hi = k.sigma_min ** (1 / k.rho), k.sigma_max ** (1 / k.rho)
            return torch.ones_like(t), (lo + t * (hi - lo)) ** k.rho

    shape = (len(prior.normalization.channels), prior.grid.npix)

    class Adapter(Denoiser):
        def __init__(self):
            super().__init__()
            self._schedule = KarrasSigma()

        @property
        def schedule(self):
            return self._schedule

        def forward(self, x_t, t, **kwargs):
            _, sigma = self._schedule(t)
            sig = sigma.to(x_t.dtype).expand(x_t.shape[0])
            return DiracPosterior(prior(x_t.reshape(-1, *shape), sig).reshape(x_t.shape))

    flat = torch.as_tensor(op.flat)
    w = torch.as_tensor(op.weights, dtype=torch.float32)

    def forward_op(x):
        return (x[:, flat] * w.to(x.dtype)).sum(-1)

    y = torch.as_tensor(op.y, dtype=torch.float32)
    cov_y = DiagonalCovariance(torch.as_tensor(op.sigma**2, dtype=torch.float32))
    den = MMPSDenoiser(Adapter(), y, forward_op, cov_y, solver=solver, iterations=iters)
    sampler = HeunSampler(den, steps=steps, silent=True)
    torch.manual_seed(seed)
    x1 = torch.randn(members, shape[0] * shape[1]) * k.sigma_max
    return sampler(x1).reshape(members, *shape).double().numpy()


def ours(prior, op, members: int, steps: int, solver: str, iters: int) -> np.ndarray:
    den = guided_denoiser(prior, op, GuidanceConfig(method="mmps", solver=solver, cg_iters=iters), autocast=False)
    gens = [member_generator(0, 0, m) for m in range(members)]
    return edm_sample(den, gens, KarrasSchedule(steps=steps), autocast=False).double().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=64)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--priors", nargs="+", default=["exact", "learned"])
    ap.add_argument("--solvers", nargs="+", default=["cg=3", "gmres=3"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    import azula

    from exactness import gaussian_problem

    exact, _, op = gaussian_problem()
    mean, var = exact_posterior(exact, op)
    priors = {"exact": exact}
    if "learned" in args.priors:
        from exactness import learned_gaussian

        priors["learned"] = learned_gaussian()
    print(f"azula {azula.__version__}; {args.members} members, {args.steps} steps, nside 8, 100 obs; "
          f"MC floor of exact_mean_err ≈ {1 / np.sqrt(args.members):.3f}\n")
    print("| prior | solver | impl | exact_mean_err | exact_var_ratio | s/member | time ratio ours/azula |")
    print("|---|---|---|---:|---:|---:|---:|")
    for pname in args.priors:
        prior = priors[pname]
        for spec in args.solvers:
            solver, iters = spec.split("=")
            row = {}
            for impl, fn in (("ensemble_da", ours), ("azula", azula_mmps)):
                t0 = time.perf_counter()
                x = fn(prior, op, args.members, args.steps, solver, int(iters))
                sec = (time.perf_counter() - t0) / args.members
                err = np.sqrt((((x.mean(0) - mean) / np.sqrt(var)) ** 2).mean())
                row[impl] = (err, x.var(0, ddof=1).mean() / var.mean(), sec)
            ratio = row["ensemble_da"][2] / row["azula"][2]
            for impl, (err, vr, sec) in row.items():
                extra = f"{ratio:.2f}" if impl == "ensemble_da" else ""
                print(f"| {pname} | {spec} | {impl} | {err:.3f} | {vr:.3f} | {sec:.4f} | {extra} |", flush=True)


if __name__ == "__main__":
    main()
