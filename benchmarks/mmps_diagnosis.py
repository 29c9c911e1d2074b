"""Why is MMPS over-dispersed on a learned prior? One table per hypothesis (issue: solver,
Jacobian asymmetry, the σ range where guidance acts, step count, the network itself).

Sections (`--sections`, default all):

- `asym`: for the learned priors, ‖(J − Jᵀ)u‖ / ‖(J + Jᵀ)u‖ (Gaussian probes u; 0 for the
  exact, symmetric Jacobian of a true denoiser) at noisy states z = x₀ + σε, and the TRUE
  relative residual ‖b − A v‖/‖b‖ of the MMPS system A v = b after k iterations of CG and
  GMRES (CG's own recursion residual is meaningless when A is not symmetric).
- `gauss`: the learned-Gaussian prior (U-Net trained on draws of the exact nside-8 Gaussian,
  ensemble_da/assets/gaussian8_unet) and the exact Gaussian prior on the same observations
  (100 bilinear, σ = 0.5 K): exact_mean_err (RMS of (mean − exact mean)/exact std) and
  exact_var_ratio (ensemble / exact variance) for solver, iterations, steps and a σ gate
  (guidance only where σ ≤ gate, the prior's own denoiser above).
- `speedy`: self-consistency OSSE on the shipped SPEEDY checkpoint: truths drawn from the
  checkpoint by unguided sampling (ensemble_da.truth, truth seed stream), `--speedy-obs`
  observations of them (one channel each, configs/speedy-osse.yaml errors), `--speedy-members`
  members per method. A correct posterior sampler is calibrated here whatever the network's
  quality: SSR = √((M+1)/M)·spread/RMSE ≈ 1 and the truth's rank outside the ensemble with
  frequency 2/(M+1).

    python benchmarks/mmps_diagnosis.py [--sections asym gauss speedy] [--members 64]
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

from ensemble_da.config import GuidanceConfig, load_config  # noqa: E402
from ensemble_da.exact import exact_posterior  # noqa: E402
from ensemble_da.guidance import MMPSGuidance, guided_denoiser  # noqa: E402
from ensemble_da.guidance.cg import conjugate_gradient  # noqa: E402
from ensemble_da.guidance.gmres import gmres  # noqa: E402
from ensemble_da.obs.operators import ObservationOperator  # noqa: E402
from ensemble_da.obs.synthetic import observe_truth, random_locations  # noqa: E402
from ensemble_da.sampling import DivergenceError, KarrasSchedule, edm_sample, member_generator  # noqa: E402
from ensemble_da.stats import rank_counts  # noqa: E402


class SigmaGate:
    """Guidance only where σ ≤ `gate`; above it the prior's own denoiser (a Denoiser itself)."""

    handles_autocast = True

    def __init__(self, guided, prior, gate: float):
        self.guided, self.prior, self.gate = guided, prior, gate
        self.grid, self.normalization = prior.grid, prior.normalization
        self.sigma_min, self.sigma_max = prior.sigma_min, prior.sigma_max

    def __call__(self, z, sigma, condition=None):
        return (self.guided if float(sigma.reshape(-1)[0]) <= self.gate else self.prior)(z, sigma, condition)


def jacobian_asymmetry(den, z: torch.Tensor, sigma: float, probes: int = 3, seed: int = 0) -> float:
    """mean over probes of ‖(J − Jᵀ)u‖ / ‖(J + Jᵀ)u‖ at z (batch, channel, cell)."""
    sig = torch.full((z.shape[0],), sigma, dtype=z.dtype)
    f = lambda x: den(x, sig)  # noqa: E731
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(probes):
        u = torch.randn(z.shape, generator=g, dtype=z.dtype)
        _, ju = torch.autograd.functional.jvp(f, z, u)
        _, jtu = torch.autograd.functional.vjp(f, z, u)
        out.append(float(torch.linalg.vector_norm(ju - jtu) / torch.linalg.vector_norm(ju + jtu)))
    return float(np.mean(out))


def true_residuals(guided: MMPSGuidance, z: torch.Tensor, sigma: float, iters=(3, 10)) -> dict[str, float]:
    """Largest true relative residual over the batch of the MMPS system for cg/gmres × iters."""
    sig = torch.full((z.shape[0],), sigma, dtype=z.dtype)
    _, matvec, rhs, _ = guided.linear_system(z, sig)
    out = {}
    for name, solve in (("cg", conjugate_gradient), ("gmres", gmres)):
        for k in iters:
            v, _ = solve(matvec, rhs, k)
            rel = torch.linalg.vector_norm(rhs - matvec(v), dim=-1) / torch.linalg.vector_norm(rhs, dim=-1)
            out[f"{name}={k}"] = float(rel.max())
    return out


def sample(denoiser, members: int, steps: int, condition=None, seed: int = 0) -> np.ndarray:
    """Members (member, channel, cell) in normalised units, float64."""
    gens = [member_generator(seed, 0, m) for m in range(members)]
    return edm_sample(denoiser, gens, KarrasSchedule(steps=steps), condition=condition, autocast=False).double().numpy()


# --- section: Jacobian asymmetry and solver residuals -------------------------------------------
def section_asym(members: int) -> None:
    from exactness import learned_gaussian

    from ensemble_da.priors.checkpoint import load_checkpoint

    from ensemble_da.data.speedy import read_speedy
    from ensemble_da.priors.checkpoint import shipped_heldout_sample

    cfg = load_config(None, ["grid.nside=8"])
    from ensemble_da.priors.gaussian import GaussianPrior

    exact = GaussianPrior.from_config(cfg.model, cfg.grid)
    held = read_speedy(shipped_heldout_sample())
    speedy = load_checkpoint(None)
    cases = {
        "learned Gaussian": (learned_gaussian(), exact.normalization.normalize(exact.sample_truth(np.random.default_rng(1), 2))),
        "SPEEDY": (speedy, speedy.normalization.normalize(held.state[:2].astype(np.float64))),
        "exact Gaussian": (exact, exact.normalization.normalize(exact.sample_truth(np.random.default_rng(1), 2))),
    }
    print("| prior | σ | ‖(J−Jᵀ)u‖/‖(J+Jᵀ)u‖ | cg=3 | cg=10 | gmres=3 | gmres=10 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (den, x0) in cases.items():
        x0 = torch.as_tensor(x0)
        rng = np.random.default_rng(2)
        lat, lon = random_locations(240 if name == "SPEEDY" else 100, rng)
        ch = list(den.normalization.channels)
        ocfg = load_config(None).observations.model_copy(update={
            "channels": ch, "heldout_fraction": 0.0, "sigma": {c: float(0.1 * s) for c, s in zip(ch, den.normalization.scale)}})
        obs = observe_truth(den.normalization.denormalize(x0[0].numpy()), np.datetime64("2002-03-02"), lat, lon,
                            den.grid, den.normalization, ocfg, rng)
        op = ObservationOperator.build(obs, den.grid, den.normalization, "bilinear")
        guided = MMPSGuidance(den, op, 3, autocast=False)
        for sigma in (0.05, 0.3, 1.0, 3.0, 10.0):
            g = torch.Generator().manual_seed(3)
            z = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
            asym = jacobian_asymmetry(den, z.float() if name != "exact Gaussian" else z, sigma)
            res = true_residuals(guided, z, sigma)
            print(f"| {name} | {sigma:g} | {asym:.3f} | " + " | ".join(f"{res[k]:.2g}" for k in ("cg=3", "cg=10", "gmres=3", "gmres=10")) + " |", flush=True)


# --- section: learned Gaussian vs exact posterior --------------------------------------------------
GAUSS_ROWS = [
    # (label, guidance dict, steps, gate)
    ("regression γ=1e-2", dict(method="regression", gamma=0.01), 32, None),
    ("mmps cg=3", dict(method="mmps", solver="cg", cg_iters=3), 32, None),
    ("mmps gmres=3", dict(method="mmps", solver="gmres", cg_iters=3), 32, None),
    ("mmps gmres=10", dict(method="mmps", solver="gmres", cg_iters=10), 32, None),
    ("mmps gmres=3", dict(method="mmps", solver="gmres", cg_iters=3), 16, None),
    ("mmps gmres=3", dict(method="mmps", solver="gmres", cg_iters=3), 64, None),
    ("mmps gmres=3, σ≤1", dict(method="mmps", solver="gmres", cg_iters=3), 32, 1.0),
]


def section_gauss(members: int, rows: list[int] | None = None) -> None:
    from exactness import gaussian_problem, learned_gaussian

    exact, _, op = gaussian_problem()
    mean, var = exact_posterior(exact, op)
    print(f"{members} members; MC error of exact_mean_err ≈ {1 / np.sqrt(members):.3f} (floor)\n")
    print("| prior | guidance | steps | exact_mean_err | exact_var_ratio | s/member |")
    print("|---|---|---:|---:|---:|---:|")
    for pname, prior in (("learned", learned_gaussian()), ("exact", exact)):
        for label, g, steps, gate in [r for i, r in enumerate(GAUSS_ROWS) if rows is None or i in rows]:
            den = guided_denoiser(prior, op, GuidanceConfig(**g), autocast=False)
            if gate is not None:
                den = SigmaGate(den, prior, gate)
            t0 = time.perf_counter()
            try:
                x = sample(den, members, steps)
            except DivergenceError as exc:
                print(f"| {pname} | {label} | {steps} | diverged at step {exc.step} (σ={exc.sigma:.3g}) | – | – |", flush=True)
                continue
            sec = (time.perf_counter() - t0) / members
            err = np.sqrt((((x.mean(0) - mean) / np.sqrt(var)) ** 2).mean())
            ratio = x.var(0, ddof=1).mean() / var.mean()
            print(f"| {pname} | {label} | {steps} | {err:.3f} | {ratio:.3f} | {sec:.3f} |", flush=True)


# --- section: SPEEDY self-consistency ------------------------------------------------------------------
def section_speedy(members: int, times: int, steps: int, n_obs: int, methods: list[str]) -> None:
    from ensemble_da.priors import time_condition
    from ensemble_da.priors.checkpoint import load_checkpoint
    from ensemble_da.truth import draw_truth

    cfg = load_config(REPO / "configs" / "speedy-osse.yaml", [
        f"sampler.steps={steps}", f"observations.num_obs={n_obs}", "observations.heldout_fraction=0",
        "times=[" + ", ".join(f'"2002-03-{2 + 9 * t:02d}T00:00"' for t in range(times)) + "]"])
    prior = load_checkpoint(None)
    ch = list(prior.normalization.channels)
    t0 = time.perf_counter()
    truths = [draw_truth(prior, cfg, t) for t in range(times)]
    print(f"{times} truths drawn from the checkpoint ({steps} steps, {time.perf_counter() - t0:.0f} s); "
          f"{n_obs} obs each; {members} members; calibrated: SSR 1, outer rank fraction 2/(M+1) = {2 / (members + 1):.3f}\n")
    print("| guidance | metric | " + " | ".join(ch) + " | s/member |")
    print("|---|---|" + "---:|" * len(ch) + "---:|")
    for label in methods:
        kind, _, rest = label.partition(" ")
        g = dict(method=kind)
        if kind == "mmps":
            solver, iters = rest.split("=")
            g.update(solver=solver, cg_iters=int(iters))
        elif kind == "regression":
            g.update(gamma=float(rest.split("=")[1]) if rest else 0.01)
        mse, var, outer, tot = np.zeros(len(ch)), np.zeros(len(ch)), np.zeros(len(ch)), 0
        start = time.perf_counter()
        try:
            for t in range(times):
                rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, t, 7]))
                lat, lon = random_locations(n_obs, rng)
                obs = observe_truth(truths[t], cfg.analysis_times()[t], lat, lon, prior.grid, prior.normalization,
                                    cfg.observations.model_copy(update={"channels": ch}), rng)
                op = ObservationOperator.build(obs, prior.grid, prior.normalization, "bilinear")
                den = guided_denoiser(prior, op, GuidanceConfig(**g), autocast=False)
                cond = time_condition(cfg.analysis_times()[t])
                x = prior.normalization.denormalize(sample(den, members, steps, cond, seed=t))
                for i in range(len(ch)):
                    mse[i] += np.mean((x[:, i].mean(0) - truths[t][i]) ** 2)
                    var[i] += np.mean(x[:, i].var(0, ddof=1))
                    r = rank_counts(x[:, i], truths[t][i])
                    outer[i] += r[0] + r[-1]
                tot += truths[t][0].size
        except DivergenceError as exc:
            print(f"| {label} | diverged at step {exc.step}/{exc.steps} (σ={exc.sigma:.3g}) |" + " |" * len(ch), flush=True)
            continue
        sec = (time.perf_counter() - start) / (members * times)
        ssr = np.sqrt((members + 1) / members) * np.sqrt(var / mse)
        print(f"| {label} | SSR | " + " | ".join(f"{v:.2f}" for v in ssr) + f" | {sec:.2f} |")
        print(f"| {label} | outer rank fraction | " + " | ".join(f"{v / tot:.3f}" for v in outer) + " | |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", nargs="+", default=["asym", "gauss", "speedy"])
    ap.add_argument("--members", type=int, default=64, help="members in the gauss section")
    ap.add_argument("--speedy-members", type=int, default=16)
    ap.add_argument("--speedy-times", type=int, default=3)
    ap.add_argument("--speedy-steps", type=int, default=18)
    ap.add_argument("--speedy-obs", type=int, default=240)
    ap.add_argument("--speedy-methods", default="regression γ=1e-2,mmps cg=3,mmps gmres=3")
    ap.add_argument("--gauss-rows", default=None, help="comma-separated row numbers of GAUSS_ROWS (default all)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if "asym" in args.sections:
        section_asym(args.members)
    if "gauss" in args.sections:
        section_gauss(args.members, None if args.gauss_rows is None else [int(i) for i in args.gauss_rows.split(",")])
    if "speedy" in args.sections:
        section_speedy(args.speedy_members, args.speedy_times, args.speedy_steps, args.speedy_obs,
                       args.speedy_methods.split(","))


if __name__ == "__main__":
    main()
