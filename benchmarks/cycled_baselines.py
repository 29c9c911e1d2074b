"""Cycled diffusion analysis against cycled EnKF and LETKF on the Gaussian Markov OSSE (README "Time").

One truth trajectory of the exact dynamical prior (DESIGN.md §10), the same observations for
every method, the same `markov` forecast model in the loop. For each method: RMSE of the
ensemble mean against the truth (K), spread-skill ratio, and the ensemble mean's distance to the
Kalman filter (filter std), averaged over the times after a spin-up. The diffusion cycle enters
the background two ways: (a) the window prior given the member's own earlier state
(`ensemble_da.cycling`), (b) the forecast's ensemble mean as a dense observation with the
ensemble's variance (`ensemble_da.background_observation`), at forecast-error inflations. The classical filters'
localisation and inflation are tuned on this very run (best RMSE over a grid), as a centre
would tune them; the diffusion cycle is not tuned. Rows also give the free run (forecasts,
no observations) and the Kalman filter itself (the optimum).

    python benchmarks/cycled_baselines.py [--times 12] [--nside 8] [--members 16 64] [--spinup 4]
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch

from ensemble_da.background_observation import cycle_with_background_observation
from ensemble_da.baselines.cycled import EnsembleFilter, cycle_ensemble_filter
from ensemble_da.config import RunConfig
from ensemble_da.cycling import create_generator
from ensemble_da.dynamics import build_forecast
from ensemble_da.kalman import kalman_filter
from ensemble_da.obs.inputs import prepare_inputs
from ensemble_da.obs.operators import ObservationOperator
from ensemble_da.priors import load_prior
from ensemble_da.truth import osse_truths

LOCALIZATION_KM = (1000.0, 2000.0, 4000.0, None)
INFLATION = (1.0, 1.05, 1.15, 1.3)


def scores(analysis: np.ndarray, truth: np.ndarray, kf_mean: np.ndarray, kf_std: np.ndarray, spinup: int) -> dict:
    """analysis (time, member, channel, cell) physical; truth, kf_mean, kf_std (time, channel, cell)."""
    a, t = analysis[spinup:].astype(np.float64), truth[spinup:]
    mean = a.mean(1)
    rmse = np.sqrt(((mean - t) ** 2).mean(axis=(0, 2)))
    spread = np.sqrt(a.var(1, ddof=1).mean(axis=(0, 2)))
    m = a.shape[1]
    ssr = spread / rmse * np.sqrt((m + 1) / m)  # Fortin et al. 2014: spread/skill of an M-member ensemble
    err = np.sqrt((((mean - kf_mean[spinup:]) / kf_std[spinup:]) ** 2).mean())
    return dict(rmse=rmse, ssr=ssr, kf_err=float(err))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--times", type=int, default=12)
    ap.add_argument("--nside", type=int, default=8)
    ap.add_argument("--members", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--spinup", type=int, default=4)
    ap.add_argument("--background-inflation", type=float, nargs="*", default=[1.0, 2.0],
                    help="forecast-error variance inflations of way (b) (none: skip it)")
    ap.add_argument("--no-baselines", action="store_true", help="skip the EnKF/LETKF tuning grid")
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = np.datetime64("2020-01-01T00:00")
    cfg = RunConfig.model_validate(dict(
        run_name="cycled-baselines", seed=5, mode="cycle",
        times=[str(start + np.timedelta64(6 * k, "h")) for k in range(args.times)], grid=dict(nside=args.nside),
        model=dict(kind="gaussian_markov", rho=0.8, channels=["T850", "T500"], mean=dict(T850=275.0, T500=255.0),
                   std=dict(T850=6.0, T500=5.0), length_scale_km=1500, channel_correlation=[[1, 0.6], [0.6, 1]]),
        sampler=dict(steps=24), guidance=dict(method="mmps", solver="cg", cg_iters=8),
        observations=dict(channels=["T850", "T500"], num_obs=100, sigma=dict(T850=1.0, T500=1.0)),
        cluster=dict(address="inprocess")))
    prior = load_prior(cfg.model, cfg.grid)
    norm = prior.normalization
    inputs = prepare_inputs(cfg, prior, osse_truths(prior, cfg))
    assimilated = [o.assimilated_only() for o in inputs.observations]
    ops = [ObservationOperator.build(o, prior.grid, norm) for o in assimilated]
    locations = [(o.lat, o.lon) for o in assimilated]
    kf = kalman_filter(prior, ops)
    kf_mean, kf_std = kf.physical(prior)
    truth = inputs.truth.astype(np.float64)
    forecast = build_forecast(cfg, prior)  # cfg.cycle.forecast: markov
    rows = []

    def add(name: str, members: int, analysis: np.ndarray, seconds: float, setting: str = "") -> None:
        s = scores(analysis, truth, kf_mean, kf_std, args.spinup)
        rows.append(dict(method=name, members=members, setting=setting, seconds=seconds, **s))
        print(rows[-1], flush=True)

    kf_rmse = np.sqrt(((kf_mean[args.spinup:] - truth[args.spinup:]) ** 2).mean(axis=(0, 2)))
    kf_ssr = np.sqrt((kf_std[args.spinup:] ** 2).mean(axis=(0, 2))) / kf_rmse
    rows.append(dict(method="Kalman filter (exact)", members=None, setting="", seconds=0.0, rmse=kf_rmse, ssr=kf_ssr,
                     kf_err=0.0))
    for m in args.members:
        free = np.stack([forecast.forecast(None, 0, range(m), cfg.seed)])
        for k in range(1, args.times):
            free = np.concatenate([free, forecast.forecast(free[-1], k, range(m), cfg.seed)[None]])
        add("free run (no DA)", m, free, 0.0)
        t0 = time.perf_counter()
        gen = create_generator(prior, m, cfg.seed, window=cfg.window_length(), sampler=cfg.sampler,
                               guidance=cfg.guidance)
        next(gen)
        cycled = np.stack([gen.send(op) for op in ops])
        add("diffusion cycle (L=3, carry)", m, cycled, time.perf_counter() - t0, "untuned")
        for infl in args.background_inflation:
            t0 = time.perf_counter()
            analysis, _, _ = cycle_with_background_observation(prior, forecast, ops, m, cfg.seed, cfg.sampler,
                                                               cfg.guidance, infl)
            add("diffusion, background as observation (b)", m, analysis, time.perf_counter() - t0,
                f"forecast-error var x {infl:g}")
        for method in () if args.no_baselines else ("enkf", "letkf"):
            best = None
            for loc, infl in itertools.product(LOCALIZATION_KM, INFLATION):
                t0 = time.perf_counter()
                step = EnsembleFilter(method, loc, infl, prior.grid)
                res = cycle_ensemble_filter(forecast, norm, ops, m, cfg.seed, step, locations)
                s = scores(res.analysis, truth, kf_mean, kf_std, args.spinup)
                if best is None or s["rmse"].mean() < best[0]:
                    best = (s["rmse"].mean(), res.analysis, time.perf_counter() - t0,
                            f"loc {'none' if loc is None else f'{loc:g} km'}, infl {infl:g}")
            add(f"cycled {method.upper()}", m, best[1], best[2], best[3])

    print(f"\nGaussian Markov OSSE, nside {args.nside}, {args.times} six-hourly cycles, scores over times "
          f"{args.spinup}..{args.times - 1}; 100 obs/time, sigma 1 K; same observations and markov forecast for all")
    print("| method | members | setting | RMSE T850 / T500 (K) | SSR T850 / T500 | mean err vs KF (filter std) | s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['members'] or ''} | {r['setting']} | {r['rmse'][0]:.3f} / {r['rmse'][1]:.3f} | "
              f"{r['ssr'][0]:.2f} / {r['ssr'][1]:.2f} | {r['kf_err']:.3f} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
