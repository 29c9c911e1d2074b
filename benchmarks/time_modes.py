"""Time modes on the exact Gaussian Markov prior (DESIGN.md §10), two tables (README "Time").

(a) `cycle` against the Kalman filter by window length L, with and without the carried state:
    the ensemble-mean error in filter std (RMS over cells and times from L on), the part of it
    beyond Monte-Carlo error √max(err² − 1/M, 0), the variance ratio, and seconds per member per
    time (one CPU thread).
(b) the same OSSE observations analysed three ways through the whole run (`ensemble-da run`
    in-process): `analysis` (times alone), `cycle` and `reanalysis`: RMSE, CRPS, SSR against the
    truth trajectory, and each mode's distance to its own exact reference.

    python benchmarks/time_modes.py [--members 64] [--times 12] [--nside 8] [--tables ab] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ensemble_da.config import RunConfig
from ensemble_da.cycling import create_generator
from ensemble_da.kalman import kalman_filter
from ensemble_da.obs.inputs import prepare_inputs
from ensemble_da.obs.operators import ObservationOperator
from ensemble_da.priors import load_prior
from ensemble_da.truth import osse_truths


def config_tree(times: int, members: int, nside: int) -> dict:
    start = np.datetime64("2020-01-01T00:00")
    return dict(
        run_name="time-bench", seed=3, times=[str(start + np.timedelta64(6 * k, "h")) for k in range(times)],
        grid=dict(nside=nside),
        model=dict(kind="gaussian_markov", rho=0.8, channels=["T850", "T500"], mean=dict(T850=275.0, T500=255.0),
                   std=dict(T850=6.0, T500=5.0), length_scale_km=1500, channel_correlation=[[1, 0.6], [0.6, 1]]),
        sampler=dict(steps=24, batch_size=members), guidance=dict(method="mmps", solver="cg", cg_iters=8),
        ensemble=dict(members=members),
        observations=dict(channels=["T850", "T500"], num_obs=100, sigma=dict(T850=1.0, T500=1.0)),
        cluster=dict(address="inprocess", members_per_unit=members),
    )


def table_a(cfg: RunConfig, windows: list[int]) -> list[dict]:
    prior = load_prior(cfg.model, cfg.grid)
    inputs = prepare_inputs(cfg, prior, osse_truths(prior, cfg))
    ops = [ObservationOperator.build(o.assimilated_only(), prior.grid, prior.normalization) for o in inputs.observations]
    kf = kalman_filter(prior, ops)
    m = cfg.ensemble.members
    rows = []
    for window in windows:
        for carry in (True, False):
            if window == 1 and not carry:
                continue  # a one-slot window without its carried state is the climate analysis: table (b)
            gen = create_generator(prior, m, cfg.seed, window=window, carry=carry, sampler=cfg.sampler,
                                   guidance=cfg.guidance)
            next(gen)
            t0 = time.perf_counter()
            errs, ratios = [], []
            for k, op in enumerate(ops):
                z = prior.normalization.normalize(gen.send(op).astype(np.float64))
                if k >= window:  # before that the window holds every observation: exact
                    errs.append(np.mean((z.mean(0) - kf.mean[k]) ** 2 / kf.var[k]))
                    ratios.append(z.var(0, ddof=1).mean() / kf.var[k].mean())
            seconds = (time.perf_counter() - t0) / (m * len(ops))
            err = float(np.sqrt(np.mean(errs)))
            rows.append(dict(window=window, carry=carry, err=err, beyond_mc=float(np.sqrt(max(err**2 - 1 / m, 0.0))),
                             var_ratio=float(np.mean(ratios)), var_ratio_range=(float(min(ratios)), float(max(ratios))),
                             s_per_member_time=seconds))
            print(rows[-1], flush=True)
    return rows


def table_b(tree: dict, out: Path) -> list[dict]:
    from actors.run import run_pipeline

    rows = []
    for mode in ("analysis", "cycle", "reanalysis"):
        cfg = RunConfig.model_validate({**tree, "mode": mode})
        t0 = time.perf_counter()
        run_pipeline(cfg, out / mode, progress=False)
        s = json.loads((out / mode / "summary.json").read_text())
        row = dict(mode=mode, seconds=time.perf_counter() - t0)
        for key in ("rmse", "crps", "ssr", "exact_mean_err", "exact_var_ratio"):
            row[key] = {c: s[f"{key}/{c}"] for c in ("T850", "T500")}
        rows.append(row)
        print(row, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=64)
    ap.add_argument("--times", type=int, default=12)
    ap.add_argument("--nside", type=int, default=8)
    ap.add_argument("--windows", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--tables", default="ab", help="which tables to measure: a, b or ab")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tree = config_tree(args.times, args.members, args.nside)
    cfg = RunConfig.model_validate({**tree, "mode": "cycle"})
    a = table_a(cfg, args.windows) if "a" in args.tables else []
    out = args.out or Path(tempfile.mkdtemp(prefix="time-bench-"))
    b = table_b(tree, out) if "b" in args.tables else []
    print(f"\n(a) cycle vs Kalman filter, nside {args.nside}, {args.members} members, {args.times} times "
          f"(errors from time L on; MC level 1/√M = {1 / np.sqrt(args.members):.3f})")
    print("| L | carried state | mean err (filter std) | beyond MC | var ratio (min–max) | s / member / time |")
    print("|---|---|---|---|---|---|")
    for r in a:
        lo, hi = r["var_ratio_range"]
        print(f"| {r['window']} | {'yes' if r['carry'] else 'no'} | {r['err']:.3f} | {r['beyond_mc']:.3f} | "
              f"{r['var_ratio']:.3f} ({lo:.2f}–{hi:.2f}) | {r['s_per_member_time']:.3f} |")
    print("\n(b) one OSSE, three modes (T850 / T500; exact reference: per time / filter / smoother)")
    print("| mode | RMSE | CRPS | SSR | exact mean err | exact var ratio | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in b:
        cell = lambda k: " / ".join(f"{r[k][c]:.3f}" for c in ("T850", "T500"))  # noqa: E731
        print(f"| {r['mode']} | {cell('rmse')} | {cell('crps')} | {cell('ssr')} | {cell('exact_mean_err')} | "
              f"{cell('exact_var_ratio')} | {r['seconds']:.0f} |")
    (out / "time_modes.json").write_text(json.dumps(dict(a=a, b=b), indent=1))


if __name__ == "__main__":
    main()
