"""README "Time" table (b) on SPEEDY: the learned window prior in `cycle` and `reanalysis`
against the single-time learned prior (`analysis`, times alone), at the same observations.

Truths: `--truth heldout`, K consecutive six-hourly states from the held-out tail of the window
checkpoint's dataset (never in a training window), one trajectory per `--trajectories`, spread
over the tail; `--truth prior`, a trajectory drawn from the window prior itself (the
self-consistency OSSE, `ensemble_da.truth.draw_window_truths`: L-slot windows chained, each
given the last state of the one before), where a correct sampler is calibrated whatever the
prior's quality; `--truth composed`, a trajectory drawn unguided from the SDA-composed windows
(`ensemble_da.reanalysis.ComposedWindows`), the law `reanalysis` samples the posterior of when
K > L, so that its self-consistency measures the sampler alone, and the gap to `prior` measures
what composing the windows costs. Observations: `--obs` random cells per time, channels
drawn uniformly, the truth's cell value plus N(0, σ²) noise with σ = `--sigma` × the channel's
climatological std (the same observations for the three modes).

Modes: analysis, `sample_posterior` with the single-time checkpoint (`--single`, default the
shipped one) conditioned on each time; cycle, `create_generator` (window L, carry); reanalysis,
`sample_trajectories` (window L, SDA composition when K > L). Scores per channel over all times,
cells and trajectories: RMSE of the ensemble mean, fair CRPS, SSR = √((M+1)/M) · RMS spread / RMSE.

    python benchmarks/speedy_window.py --checkpoint runs/train-speedy-window/speedy_window_unet \
        --data .cache/speedy6h_nside16.zarr --times 4 --members 16 --steps 18
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ensemble_da.config import GuidanceConfig, RunConfig, SamplerConfig
from ensemble_da.cycling import create_generator
from ensemble_da.data.speedy import read_speedy
from ensemble_da.obs.operators import ObservationOperator
from ensemble_da.posterior import sample_posterior
from ensemble_da.priors.base import time_condition
from ensemble_da.priors.checkpoint import load_checkpoint
from ensemble_da.reanalysis import sample_trajectories, trajectory_denoiser
from ensemble_da.obs.synthetic import TRUTH_STREAM
from ensemble_da.stats import fair_crps
from ensemble_da.training import states_per_day
from ensemble_da.truth import draw_window_truths
from ensemble_da.window import sample_window


def observations(truth: np.ndarray, prior, n: int, sigma_frac: float, rng: np.random.Generator):
    """One operator per time: n random cells, random channels, truth + noise (physical (time, C, cell))."""
    norm, ops = prior.normalization, []
    for x in truth:
        cells = rng.integers(0, prior.grid.npix, n)
        ch = rng.integers(0, len(norm.channels), n)
        sigma = sigma_frac * norm.scale[ch]
        values = x[ch, cells] + sigma * rng.standard_normal(n)
        ops.append(ObservationOperator.at_cells(cells, np.asarray(norm.channels)[ch], values, sigma, prior.grid, norm))
    return ops


def scores(members: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """members (member, time, C, cell), truth (time, C, cell): per-channel sums to aggregate."""
    mean = members.mean(0)
    return {"se": ((mean - truth) ** 2).mean(axis=(0, 2)), "var": members.var(0, ddof=1).mean(axis=(0, 2)),
            "crps": fair_crps(members, truth).mean(axis=(0, 2))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="the window checkpoint (stem or .json)")
    ap.add_argument("--single", default=None, help="the single-time checkpoint (default: shipped)")
    ap.add_argument("--data", default=".cache/speedy6h_nside16.zarr", help="the window checkpoint's dataset")
    ap.add_argument("--truth", choices=["heldout", "prior", "composed"], default="heldout")
    ap.add_argument("--trajectories", type=int, default=1)
    ap.add_argument("--times", type=int, default=4)
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--obs", type=int, default=300)
    ap.add_argument("--sigma", type=float, default=0.3, help="observation error in channel climatological std")
    ap.add_argument("--cg-iters", type=int, default=3)
    ap.add_argument("--solver", choices=["gmres", "cg"], default="gmres", help="MMPS Krylov solver (configs/speedy-osse.yaml: gmres)")
    ap.add_argument("--modes", default="analysis,cycle,reanalysis")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    window = load_checkpoint(args.checkpoint)
    single = load_checkpoint(args.single)
    L, K, M = window.window_slots, args.times, args.members
    sampler = SamplerConfig(steps=args.steps, batch_size=M)
    guidance = GuidanceConfig(method="mmps", solver=args.solver, cg_iters=args.cg_iters)
    norm = window.normalization
    data = read_speedy(args.data)
    chan = [data.channels.index(c) for c in norm.channels]
    n_train = int(window.meta["training"]["train_states"])
    held = data.state[n_train + 1:][:, chan]  # +1: past the last training window's end, a margin
    times = data.time[n_train + 1:]
    print(f"window checkpoint L={L}, {window.meta['training']['steps']} steps; held-out states {len(held)} "
          f"({states_per_day(data.time)} per day); K={K}, M={M}, steps={args.steps}, obs={args.obs}/time, "
          f"sigma={args.sigma} std", flush=True)
    starts = np.linspace(0, len(held) - K, args.trajectories).round().astype(int)
    totals: dict[str, dict[str, np.ndarray]] = {}
    seconds: dict[str, float] = {}
    rng = np.random.default_rng(args.seed)
    for j, s in enumerate(starts):
        when = times[s:s + K]
        if args.truth == "heldout":
            truth = held[s:s + K].astype(np.float64)
        elif args.truth == "composed":
            truth = sample_window(trajectory_denoiser(window, K, L), None, [TRUTH_STREAM], args.seed + 1000 + j, 0,
                                  sampler, GuidanceConfig(method="none"))[0].astype(np.float64)
        else:
            cfg = RunConfig.model_validate(dict(seed=args.seed + 1000 + j, grid=dict(nside=window.grid.nside),
                                                times=[str(t) for t in when], sampler=sampler.model_dump()))
            truth = draw_window_truths(window, cfg).astype(np.float64)
        ops = observations(truth, window, args.obs, args.sigma, rng)
        seed = args.seed + j
        for mode in args.modes.split(","):
            t0 = time.time()
            if mode == "analysis":
                x = np.stack([sample_posterior(single, ops[k], M, seed, sampler=sampler, guidance=guidance,
                                               condition=time_condition(when[k]), t_index=k) for k in range(K)], 1)
            elif mode == "cycle":
                gen = create_generator(window, M, seed, window=L, carry=True, sampler=sampler, guidance=guidance)
                next(gen)
                x = np.stack([gen.send(op) for op in ops], 1)
            else:
                x = sample_trajectories(window, ops, list(range(M)), seed, sampler, guidance, window=min(L, K))
                x = np.asarray(x)
            seconds[mode] = seconds.get(mode, 0.0) + time.time() - t0
            sc = scores(x.astype(np.float64), truth)
            acc = totals.setdefault(mode, {k: 0.0 for k in sc})
            for k, v in sc.items():
                acc[k] = acc[k] + v / len(starts)
            print(f"  trajectory {j} ({np.datetime_as_string(when[0], unit='h')}) {mode}: {time.time() - t0:.0f} s, "
                  f"RMSE/std {np.sqrt(sc['se']) / norm.scale}", flush=True)
    names = list(norm.channels)
    print(f"\n{args.truth} truths, {len(starts)} trajectories of {K} six-hourly times, {M} members; "
          f"per channel {' / '.join(names)}\n")
    print("| mode | RMSE | CRPS | SSR | RMSE / analysis RMSE | s |")
    print("|---|---|---|---|---|---|")
    base = np.sqrt(totals["analysis"]["se"]) if "analysis" in totals else None
    fmt = lambda a: " / ".join(f"{v:.3g}" for v in a)  # noqa: E731
    for mode, acc in totals.items():
        rmse = np.sqrt(acc["se"])
        ssr = np.sqrt((M + 1) / M) * np.sqrt(acc["var"]) / rmse
        ratio = "" if base is None else fmt(rmse / base)
        print(f"| {mode} | {fmt(rmse)} | {fmt(acc['crps'])} | {fmt(ssr)} | {ratio} | {seconds[mode]:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
