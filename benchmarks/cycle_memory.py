"""Memory of a long cycle (DESIGN.md §10): does a cycled analysis hold more the longer it runs?

The tiny Gaussian Markov case (nside 1 by default, 2 channels, 4 members, 6 Heun steps, MMPS with
2 CG iterations, window 3 with the carried state), cycled in this process for 1000 analysis times
by one of two paths:

- `--path generator` (default): the Python API, `ensemble_da.cycling.create_generator`, the path
  an operational cycle takes (one `send` per analysis time, for as long as observations come).
  The truth is an AR(1) trajectory of the same prior drawn on the fly, each time observed at
  `--obs` random points with σ = 1 K, so nothing but the cycle itself lives across times.
- `--path run`: the whole `mode: cycle` run (`actors.run.run_pipeline`, in-process executor and
  aggregator, the run store, MLflow), an OSSE of `--cycles` six-hourly times. Its inputs (every
  time's observations and truth) exist before the first cycle; memory is sampled as each time
  finishes. Use `--nside 8` to see per-time fields (a few KB each at nside 1).

Printed: a table of peak RSS (`resource.getrusage` ru_maxrss) and current RSS (psutil, after
`malloc_trim` hands freed heap back to the OS) after 10, 100, 500 and 1000 cycles, Python heap
blocks (`sys.getallocatedblocks`), then RSS(1000)/RSS(100). Flat is the goal: a ratio within ~1.1.

    python benchmarks/cycle_memory.py [--path generator|run] [--cycles 1000] [--nside 1] [--members 4] [--steps 6]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from ensemble_da.config import GridConfig, model_config, ObservationsConfig, RunConfig
from ensemble_da.cycling import create_generator
from ensemble_da.obs.synthetic import obs_rng, observe_truth, random_locations, truth_rng
from ensemble_da.priors.gaussian_markov import GaussianMarkovPrior

CHECKPOINTS = (10, 100, 500, 1000)
MODEL = dict(kind="gaussian_markov", rho=0.8, channels=["T850", "T500"], mean=dict(T850=275.0, T500=255.0),
             std=dict(T850=6.0, T500=5.0), length_scale_km=3000, channel_correlation=[[1, 0.6], [0.6, 1]])
CG_ITERS = 2

try:
    _trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):  # not glibc: RSS as it is
    _trim = None


class Meter:
    """Memory samples at the checkpoints (cycle counts)."""

    def __init__(self, checkpoints):
        self.checkpoints, self.rows, self.t0 = set(checkpoints), [], time.perf_counter()
        self.proc = psutil.Process()

    def __call__(self, cycles: int, **extra) -> None:
        if cycles not in self.checkpoints:
            return
        gc.collect()
        if _trim is not None:
            _trim(0)
        self.rows.append(dict(cycles=cycles, peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                              rss=self.proc.memory_info().rss / 2**20, blocks=sys.getallocatedblocks(),
                              seconds=time.perf_counter() - self.t0, **extra))


def run_generator(args, meter: Meter) -> str:
    prior = GaussianMarkovPrior.from_config(model_config(**MODEL), GridConfig(nside=args.nside))
    obs_cfg = ObservationsConfig.model_validate(dict(channels=["T850", "T500"], num_obs=args.obs,
                                                     heldout_fraction=0.0, sigma=dict(T850=1.0, T500=1.0)))
    gen = create_generator(prior, args.members, args.seed, window=args.window,
                           sampler=dict(steps=args.steps, batch_size=args.members),
                           guidance=dict(method="mmps", solver="cg", cg_iters=CG_ITERS))
    next(gen)
    norm, shape = prior.normalization, (1, len(prior.normalization.channels), prior.grid.npix)
    start = np.datetime64("2020-01-01T00:00", "ns")
    z, sq = None, 0.0
    for k in range(args.cycles):
        xi = torch.as_tensor(truth_rng(args.seed, k).standard_normal(shape))
        z = prior.covariance_sqrt_apply(xi) if z is None else prior.rho * z + prior.transition_noise(xi)
        truth = norm.denormalize(z[0].numpy())
        rng = obs_rng(args.seed, k)
        lat, lon = random_locations(args.obs, rng)
        obs = observe_truth(truth, start + np.timedelta64(6 * k, "h"), lat, lon, prior.grid, norm, obs_cfg, rng)
        analysis = gen.send(obs)
        if not np.isfinite(analysis).all():
            raise SystemExit(f"cycle {k}: non-finite analysis")
        sq += float(np.mean((analysis.mean(0) - truth) ** 2))
        meter(k + 1, rmse=float(np.sqrt(sq / (k + 1))))
    gen.close()
    return f"create_generator, nside {args.nside} ({prior.grid.npix} cells)"


def run_cycled_pipeline(args, meter: Meter) -> str:
    from actors.run import run_pipeline

    start = np.datetime64("2020-01-01T00:00")
    cfg = RunConfig.model_validate(dict(
        run_name="cycle-memory", seed=args.seed, mode="cycle",
        times=[str(start + np.timedelta64(6 * k, "h")) for k in range(args.cycles)], grid=dict(nside=args.nside),
        model=MODEL, cycle=dict(window=args.window, carry=True, forecast="markov"),
        sampler=dict(steps=args.steps, batch_size=args.members),
        guidance=dict(method="mmps", solver="cg", cg_iters=CG_ITERS), ensemble=dict(members=args.members),
        observations=dict(channels=["T850", "T500"], num_obs=args.obs, sigma=dict(T850=1.0, T500=1.0)),
        cluster=dict(address="inprocess", members_per_unit=args.members)))
    finished = []

    def on_unit(report, executor) -> None:  # one unit per time (members_per_unit = members)
        finished.append(report.unit.t_index)
        meter(len(finished))

    with tempfile.TemporaryDirectory(prefix="cycle-memory-") as tmp:
        setup = time.perf_counter()
        result = run_pipeline(cfg, Path(tmp) / "run", progress=False, on_unit=on_unit)
        total = time.perf_counter() - setup
    summary = result.summary
    return (f"the mode: cycle run (run_pipeline, in-process), nside {args.nside}; {total:.0f} s in all; "
            f"exact_mean_err/T850 {summary.get('exact_mean_err/T850', float('nan')):.3f} filter std")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path", choices=("generator", "run"), default="generator")
    p.add_argument("--cycles", type=int, default=1000)
    p.add_argument("--nside", type=int, default=1)
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--steps", type=int, default=6, help="Heun steps (2-4 diverge now and then at nside 1)")
    p.add_argument("--window", type=int, default=3)
    p.add_argument("--obs", type=int, default=12)
    p.add_argument("--seed", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    meter = Meter([c for c in CHECKPOINTS if c <= args.cycles] or [args.cycles])
    what = (run_generator if args.path == "generator" else run_cycled_pipeline)(args, meter)

    print(f"{what}: 2 channels, {args.members} members, {args.steps} Heun steps, MMPS cg_iters {CG_ITERS}, "
          f"window {args.window} with carry, {args.obs} obs per time; torch {torch.__version__}, 1 thread")
    print()
    rmse = "rmse" in meter.rows[0]
    print("| cycles | peak RSS (MiB) | RSS (MiB) | Python heap blocks | s elapsed |" + (" ensemble-mean RMSE so far (K) |" if rmse else ""))
    print("|---|---|---|---|---|" + ("---|" if rmse else ""))
    for r in meter.rows:
        print(f"| {r['cycles']} | {r['peak']:.1f} | {r['rss']:.1f} | {r['blocks']} | {r['seconds']:.1f} |"
              + (f" {r['rmse']:.3f} |" if rmse else ""))
    by = {r["cycles"]: r for r in meter.rows}
    last = meter.rows[-1]
    if 100 in by and last["cycles"] > 100:
        print()
        print(f"peak RSS({last['cycles']}) / peak RSS(100) = {last['peak'] / by[100]['peak']:.3f}; "
              f"RSS({last['cycles']}) / RSS(100) = {last['rss'] / by[100]['rss']:.3f} "
              f"({(last['rss'] - by[100]['rss']) * 1024 / (last['cycles'] - 100):+.1f} KiB per cycle); "
              f"heap blocks {last['blocks'] - by[100]['blocks']:+d}")


if __name__ == "__main__":
    main()
