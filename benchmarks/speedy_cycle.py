"""README "Time" table (d): the cycled perfect-model SPEEDY OSSE, diffusion against cycled EnKF/LETKF.

Nature run: SPEEDY (jcm, T30L8) from its own seeded rest state (`--nature-seed`, a trajectory no
network was trained on), spun up `--nature-spinup-days`, then `--days` of six-hourly states
(HEALPix nside 16, the checkpoints' six channels). Observations: `--obs` random cells per time,
one random channel each, truth + N(0, σ²) with σ = `--sigma` × the channel's climatological std;
the same observations for every method. Scores per cycle: RMSE of the ensemble mean over cells,
ensemble variance, fair CRPS; the table averages the last `--score-days` (the first days are the
filters' spin-up, and the classical filters' tuning period).

Methods (`--methods`), each written to `OUT/<name>.npz` as it finishes (a rerun skips those done):
- `free`: the SPEEDY ensemble forecast from its initial states, no observations;
- `enkf16`, `letkf16`, `enkf64`, `letkf64`: cycled stochastic EnKF / LETKF with SPEEDY in the
  loop (`ensemble_da.baselines.cycle_ensemble_filter`, the analysis increment inserted into each
  member's kept SPEEDY state, `ensemble_da.dynamics.speedy`). Gaspari–Cohn half-width and
  multiplicative inflation are tuned for the lowest RMSE over the spin-up cycles only
  (`LOCALIZATION_KM` × `INFLATION` at 16 members; at 64 the best 16-member inflation with its
  half-width and twice it, tuned over the first five days), then the best setting cycles the whole period;
- `analysis`: each time alone with the single-time learned prior (today's `mode: analysis`);
- `learned_a`: way (a), `mode: cycle` with the learned window prior (L = 2, the member's own
  previous analysis carried): the forecast is the prior's learned transition;
- `learned_b`: way (b), the SPEEDY forecast of each member's analysis as a dense observation of
  the state (ensemble mean, ensemble variance × `--background-inflation`) on top of the
  single-time learned prior (`ensemble_da.background_observation`).

The ensembles' initial states (SPEEDY methods and `learned_b`) are a lagged ensemble: states six
hours apart of another SPEEDY trajectory (seed `--ensemble-seed`), put at the nature run's start
date; the diffusion ensembles start from the prior's own climate draw.

    python benchmarks/speedy_cycle.py --out runs/speedy_cycle --methods free,letkf16   # one method group per core
    python benchmarks/speedy_cycle.py --out runs/speedy_cycle --table                  # the table and plot
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch

from ensemble_da.background_observation import cycle_with_background_observation
from ensemble_da.baselines.cycled import EnsembleFilter, cycle_ensemble_filter
from ensemble_da.config import GuidanceConfig, SamplerConfig
from ensemble_da.cycling import create_generator
from ensemble_da.dynamics.speedy import SpeedyForecast
from ensemble_da.obs.operators import ObservationOperator
from ensemble_da.posterior import sample_posterior
from ensemble_da.priors.base import time_condition
from ensemble_da.priors.checkpoint import load_checkpoint
from ensemble_da.stats import fair_crps

LOCALIZATION_KM = (1000.0, 2000.0, 4000.0)
INFLATION = (1.05, 1.2)
METHODS = ("free", "letkf16", "enkf16", "letkf64", "enkf64", "analysis", "learned_a", "learned_b")
LABELS = {"free": "free run (no DA)", "analysis": "analysis only (each time alone)",
          "learned_a": "learned (a): window prior, own state carried", "learned_b":
          "learned (b): SPEEDY forecast as observation", "enkf16": "cycled EnKF", "letkf16": "cycled LETKF",
          "enkf64": "cycled EnKF", "letkf64": "cycled LETKF"}
HOURS = 6.0


def jcm_date(run_state) -> np.datetime64:
    """The model clock of a jcm RunState as datetime64[s] (jcm counts days since 1970-01-01)."""
    d = run_state.time.delta
    return np.datetime64("1970-01-01T00:00:00") + np.timedelta64(int(d.days) * 86400 + int(d.seconds), "s")


class LaggedSpeedy(SpeedyForecast):
    """SPEEDY whose member m starts from `starts[m]` (a lagged ensemble) instead of climate + noise."""

    starts: list

    def perturbed_climate(self, seed: int, t_index: int, member: int):
        return self.starts[member]


def nature_and_ensemble(grid, channels, args):
    """(truth (time, channel, cell) float64, times datetime64[s], a LaggedSpeedy with 64 starts)."""
    nature = SpeedyForecast.create(grid, channels, hours=HOURS, spinup_days=args.nature_spinup_days,
                                   seed=args.nature_seed, perturbation_k=0.0)
    state, truth, times = nature.climate, [], []
    for _ in range(args.days * 4):
        state, x = nature.integrate(state)
        truth.append(x)
        times.append(jcm_date(state))
    other = LaggedSpeedy.create(grid, channels, hours=HOURS, spinup_days=args.nature_spinup_days,
                                seed=args.ensemble_seed, perturbation_k=0.0)
    starts, s = [], other.climate
    for _ in range(max(64, args.members)):
        s = other._run(s)[0]
        starts.append(type(s)(s.dynamics, s.physics, nature.climate.time, nature.climate.step))
    other.starts = starts
    return np.stack(truth).astype(np.float64), np.array(times), other


def observations(truth, norm, grid, n, sigma_frac, seed):
    """One operator per time: n random cells and channels, truth + noise; and their (lat, lon)."""
    rng = np.random.default_rng(seed)
    ops, where = [], []
    lon, lat = grid.lonlat
    for x in truth:
        cells = rng.integers(0, grid.npix, n)
        ch = rng.integers(0, len(norm.channels), n)
        sigma = sigma_frac * norm.scale[ch]
        values = x[ch, cells] + sigma * rng.standard_normal(n)
        ops.append(ObservationOperator.at_cells(cells, np.asarray(norm.channels)[ch], values, sigma, grid, norm))
        where.append((lat[cells], lon[cells]))
    return ops, where


def per_cycle(ens: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """ens (time, member, channel, cell), truth (time, channel, cell): (time, channel) cell means."""
    e = ens.astype(np.float64)
    mean = e.mean(1)
    return {"se": ((mean - truth) ** 2).mean(-1), "var": e.var(1, ddof=1).mean(-1),
            "crps": np.stack([fair_crps(e[k], truth[k]).mean(-1) for k in range(len(e))])}


def run_method(name, args, ctx) -> dict:
    """One method's per-cycle scores (and its setting, members, seconds)."""
    truth, ops, where, norm, forecast = ctx["truth"], ctx["ops"], ctx["where"], ctx["norm"], ctx["forecast"]
    sampler = SamplerConfig(steps=args.steps, batch_size=args.members)
    guidance = GuidanceConfig(method=args.guidance, solver="gmres", cg_iters=args.cg_iters)
    t0 = time.perf_counter()
    setting, members, extra = "", args.members, {}
    if name == "free":
        ens = cycle_ensemble_filter(forecast, norm, [None] * len(ops), members, args.seed, EnsembleFilter()).analysis
    elif name[:-2] in ("enkf", "letkf"):
        members = int(name[-2:])
        spin = args.spinup_days * 4
        grid_ = list(itertools.product(LOCALIZATION_KM, INFLATION))
        if members > 16 and (Path(args.out) / f"{name[:-2]}16.npz").exists():
            best16 = np.load(Path(args.out) / f"{name[:-2]}16.npz")
            loc16, infl16 = float(best16["localization_km"]), float(best16["inflation"])
            grid_ = [(loc16, infl16), (2 * loc16, infl16)]
            spin = min(spin, 20)  # five days: at 64 members a cycle costs four times as much
        best = None
        for loc, infl in grid_:
            step = EnsembleFilter(name[:-2], loc, infl, ctx["grid"])
            res = cycle_ensemble_filter(forecast, norm, ops[:spin], members, args.seed, step, where[:spin])
            rmse = np.sqrt(per_cycle(res.analysis, truth[:spin])["se"].mean(0)) / norm.scale
            print(f"  {name} tune loc {loc:g} km infl {infl:g}: RMSE/std over spin-up {rmse.mean():.3f}", flush=True)
            if best is None or rmse.mean() < best[0]:
                best = (rmse.mean(), loc, infl)
        _, loc, infl = best
        setting = f"loc {loc:g} km, infl {infl:g}"
        ens = cycle_ensemble_filter(forecast, norm, ops, members, args.seed, EnsembleFilter(name[:-2], loc, infl,
                                    ctx["grid"]), where).analysis
        extra = dict(localization_km=loc, inflation=infl)
    elif name == "analysis":  # times stand alone: every `--analysis-every`-th of the scored ones is enough
        single, every = ctx["single"], args.analysis_every
        done = {k: sample_posterior(single, ops[k], members, args.seed, sampler=sampler, guidance=guidance,
                                    condition=time_condition(ctx["times"][k]), t_index=k, check_inputs=False)
                for k in range(len(ops) - 1, args.spinup_days * 4 - 1, -every)}
        nan = np.full(next(iter(done.values())).shape, np.nan, np.float32)
        ens = np.stack([done.get(k, nan) for k in range(len(ops))])
    elif name == "learned_a":
        gen = create_generator(ctx["window"], members, args.seed, window=2, carry=True, sampler=sampler,
                               guidance=guidance)
        next(gen)
        ens = []
        for k, op in enumerate(ops):
            ens.append(gen.send(op))
            if k % 20 == 0:
                print(f"  learned_a cycle {k}/{len(ops)} ({time.perf_counter() - t0:.0f} s)", flush=True)
        ens = np.stack(ens)
    elif name == "learned_b":
        forecast.forecast(None, 0, range(members), args.seed)  # each member's SPEEDY state at time 0
        setting = f"forecast-error var x {args.background_inflation:g}"
        ens, _, _ = cycle_with_background_observation(
            ctx["single"], forecast, ops, members, args.seed, sampler, guidance, args.background_inflation,
            conditions=[time_condition(t) for t in ctx["times"]])
    else:
        raise SystemExit(f"error: unknown method {name!r} (choose from {', '.join(METHODS)})")
    return dict(per_cycle(ens, truth), members=members, setting=setting, seconds=time.perf_counter() - t0, **extra)


def table(args, channels) -> None:
    """The README table and the time-series figure from the methods' npz files in OUT."""
    out = Path(args.out)
    found = [m for m in METHODS if (out / f"{m}.npz").exists()]
    data = {m: dict(np.load(out / f"{m}.npz")) for m in found}
    scale = np.load(out / "truth.npz")["scale"]
    lo = args.spinup_days * 4 if args.score_days is None else -args.score_days * 4
    rows = {}
    for m in found:
        d = data[m]
        rmse = np.sqrt(np.nanmean(d["se"][lo:], 0))  # NaN: a time the method skipped (analysis only)
        ssr = np.sqrt((d["members"] + 1) / d["members"]) * np.sqrt(np.nanmean(d["var"][lo:], 0)) / rmse
        rows[m] = dict(rmse=rmse, ssr=ssr, crps=np.nanmean(d["crps"][lo:], 0))
    fmt = lambda a: " / ".join(f"{v:.3g}" for v in a)  # noqa: E731
    print(f"\nscores over the last {len(data[found[0]]['se'][lo:]) / 4:g} days; per channel {' / '.join(channels)}\n")
    print("| method | members | setting | RMSE | SSR | CRPS | s |")
    print("|---|---|---|---|---|---|---|")
    for m in found:
        d, r = data[m], rows[m]
        print(f"| {LABELS[m]} | {int(d['members'])} | {d['setting']} | {fmt(r['rmse'])} | {fmt(r['ssr'])} | "
              f"{fmt(r['crps'])} | {float(d['seconds']):.0f} |")
    if "letkf16" in rows:
        print("\nRMSE / cycled LETKF(16) RMSE:")
        for m in found:
            print(f"  {m}: {fmt(rows[m]['rmse'] / rows['letkf16']['rmse'])}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(12, 4), sharex=True)
    for m in found:
        d = data[m]
        days = np.arange(len(d["se"])) / 4.0
        style = "o" if np.isnan(d["se"]).any() else "-"
        ax[0].plot(days, (np.sqrt(d["se"]) / scale).mean(1), style, ms=3, label=f"{m} ({int(d['members'])})")
        ax[1].plot(days, (np.sqrt(d["var"]) / scale).mean(1), style, ms=3, label=m)
    for a, title in zip(ax, ("RMSE of the ensemble mean", "ensemble spread")):
        a.axvline(args.spinup_days, color="0.6", ls=":")
        a.set(xlabel="day of the cycle", ylabel="/ climatological std, mean over channels", title=title, yscale="log")
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "speedy_cycle.png", dpi=110)
    print(f"\nfigure: {out / 'speedy_cycle.png'}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--table", action="store_true", help="only print the table and draw the figure")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--spinup-days", type=int, default=10, help="cycles not scored; the filters' tuning period")
    ap.add_argument("--score-days", type=int, default=None, help="default: all days after the spin-up")
    ap.add_argument("--nature-spinup-days", type=int, default=60)
    ap.add_argument("--nature-seed", type=int, default=11)
    ap.add_argument("--ensemble-seed", type=int, default=12)
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--obs", type=int, default=300)
    ap.add_argument("--sigma", type=float, default=0.3, help="observation error in climatological std")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--guidance", default="regression", choices=["regression", "mmps"])
    ap.add_argument("--cg-iters", type=int, default=3)
    ap.add_argument("--analysis-every", type=int, default=4, help="analysis only: every N-th scored time")
    ap.add_argument("--background-inflation", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    window = load_checkpoint("shipped-window")
    single = load_checkpoint(None)
    norm, grid = single.normalization, single.grid
    channels = list(norm.channels)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.table:
        table(args, channels)
        return 0
    t0 = time.perf_counter()
    truth, times, forecast = nature_and_ensemble(grid, channels, args)
    np.savez(out / "truth.npz", truth=truth.astype(np.float32), times=times.astype("datetime64[s]").astype(np.int64),
             scale=norm.scale)
    ops, where = observations(truth, norm, grid, args.obs, args.sigma, args.seed + 100)
    print(f"nature run {times[0]} .. {times[-1]} ({len(times)} cycles) and 64 lagged starts: "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    ctx = dict(truth=truth, times=times, ops=ops, where=where, norm=norm, grid=grid, forecast=forecast,
               single=single, window=window)
    for name in args.methods.split(","):
        path = out / f"{name}.npz"
        if path.exists():
            print(f"{name}: done before ({path})")
            continue
        res = run_method(name, args, ctx)
        np.savez(path, **res)
        rmse = np.sqrt(np.nanmean(res["se"][args.spinup_days * 4:], 0)) / norm.scale
        print(f"{name}: {res['seconds']:.0f} s, RMSE/std after spin-up {np.round(rmse, 3)} {res['setting']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
