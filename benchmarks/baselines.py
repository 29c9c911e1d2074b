"""Classical baselines against the exact posterior on the demo's Gaussian prior (an OSSE).

The packaged demo prior (nside 16, T850/T500/T300, ℓ = 1500 km) and observation errors; per
truth (drawn from the prior) 200 bilinear observations, and a background ensemble of M prior
draws. For stochastic EnKF and LETKF (M = 16, 64; Gaspari–Cohn half-widths of a few sizes or none;
inflation 1.0) the table gives, averaged over truths with the standard error: RMSE of the
ensemble mean vs the truth, SSR, and the distance to the exact posterior (exact_mean_err,
exact_var_ratio as in DESIGN.md §7). The exact posterior (= OI with the true B) is the bound.

    python benchmarks/baselines.py [--truths 8] [--members 16 64] [--radii 500 1000 2000 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ensemble_da.baselines import letkf, stochastic_enkf
from ensemble_da.config import load_config
from ensemble_da.exact import exact_posterior
from ensemble_da.obs.operators import ObservationOperator
from ensemble_da.obs.synthetic import observe_truth, random_locations
from ensemble_da.priors import load_prior


def scores(xa: np.ndarray, truth: np.ndarray, mean: np.ndarray, var: np.ndarray) -> dict[str, float]:
    """Normalised-unit scores of an analysis ensemble (M, channel, cell), averaged over channels."""
    m = xa.shape[0]
    rmse = np.sqrt(((xa.mean(0) - truth) ** 2).mean())
    spread = np.sqrt(xa.var(0, ddof=1).mean())
    return dict(
        rmse=rmse,
        ssr=np.sqrt((m + 1) / m) * spread / rmse,
        exact_mean_err=np.sqrt((((xa.mean(0) - mean) / np.sqrt(var)) ** 2).mean()),
        exact_var_ratio=xa.var(0, ddof=1).mean() / var.mean(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--truths", type=int, default=8)
    parser.add_argument("--members", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--radii", type=float, nargs="+", default=[500, 1000, 2000, 0], help="km; 0: no localisation")
    parser.add_argument("--num-obs", type=int, default=200)
    args = parser.parse_args()
    cfg = load_config(None, [f"observations.num_obs={args.num_obs}"])
    prior = load_prior(cfg.model, cfg.grid)
    obs_cfg = cfg.observations.model_copy(update={"heldout_fraction": 0.0})
    rows: dict[str, list[dict[str, float]]] = {}
    seconds: dict[str, float] = {}
    for t in range(args.truths):
        rng = np.random.default_rng([t, 1])
        truth = prior.sample_truth(rng)[0]
        lat, lon = random_locations(args.num_obs, rng)
        obs = observe_truth(truth, np.datetime64("2020-01-01"), lat, lon, prior.grid, prior.normalization, obs_cfg, rng)
        op = ObservationOperator.build(obs, prior.grid, prior.normalization, cfg.observations.operator)
        mean, var = exact_posterior(prior, op)
        z_truth = prior.normalization.normalize(truth)
        rows.setdefault("exact posterior (OI with the true B)", []).append(
            dict(rmse=np.sqrt(((mean - z_truth) ** 2).mean()), ssr=np.sqrt(var.mean() / ((mean - z_truth) ** 2).mean()),
                 exact_mean_err=0.0, exact_var_ratio=1.0))
        for m in args.members:
            xb = prior.normalization.normalize(prior.sample_truth(rng, m))
            for radius in args.radii:
                loc = None if radius == 0 else radius
                tag = "none" if loc is None else f"{radius:g} km"
                for name, run in (
                    ("LETKF", lambda: letkf(xb, op, obs.lat, obs.lon, prior.grid, localization_km=loc)),
                    ("EnKF", lambda: stochastic_enkf(xb, op, rng, obs.lat, obs.lon, prior.grid, localization_km=loc)),
                ):
                    start = time.perf_counter()
                    xa = run()
                    key = f"{name} M={m} loc={tag}"
                    seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start
                    rows.setdefault(key, []).append(scores(xa, z_truth, mean, var))
    print(f"{args.truths} truths × {args.num_obs} obs, nside {cfg.grid.nside}; normalised units; ± standard error over truths\n")
    print("| method | RMSE | SSR | exact_mean_err | exact_var_ratio | s/analysis |")
    print("|---|---:|---:|---:|---:|---:|")
    for key, vals in rows.items():
        cells = []
        for metric in ("rmse", "ssr", "exact_mean_err", "exact_var_ratio"):
            v = np.array([r[metric] for r in vals])
            cells.append(f"{v.mean():.3f} ± {v.std(ddof=1) / np.sqrt(len(v)):.3f}")
        sec = f"{seconds[key] / len(vals):.2f}" if key in seconds else ""
        print(f"| {key} | " + " | ".join(cells) + f" | {sec} |")


if __name__ == "__main__":
    main()
