"""SPEEDY OSSE: the learned diffusion prior (regression and MMPS guidance) against the
climatological Gaussian prior with its exact posterior (the static B of OI / 3D-Var).

Truths are held-out SPEEDY states (never trained on; by default the sample packaged with the
checkpoint). They are written as ERA5-layout NetCDF plus a HEALPix truth, and observations are
read from those files through the same reader real ERA5 goes through (random locations, one
channel per location, Gaussian noise of `observations.sigma`), as `configs/speedy-osse.yaml`
describes. For every analysis time:

- learned prior: `ensemble.members` posterior members from the shipped checkpoint (conditioned
  on the analysis time's day of year), guided by regression (SDA form) and by MMPS;
- Gaussian baseline: `model.kind: gaussian_climatology` fitted on the same training states as
  the network (dataset minus its last `--holdout-days`), exact Kalman posterior mean and spread;
  CRPS is the closed-form CRPS of that Gaussian, SSR = spread / RMSE (infinite ensemble).

Scores per channel, in physical units, aggregated over times: RMSE of the ensemble (or exact)
mean against the truth (root of the mean over times of the squared per-time RMSE) with its
standard error over the truths (delta method: SE(RMSE) = SE(mean MSE) / (2 RMSE)), SSR
(sqrt((M+1)/M) · RMS spread / RMSE) and CRPS (mean over cells and times). The climatological
mean (no observations) is listed for scale. Learned-prior methods are `regression`, `mmps`
(the config's solver) or `mmps:cg` / `mmps:gmres`; a run that diverges is listed as such.
Stochastic EnKF and LETKF (`--kalman-members`, default 16 and 64) run on a background
ensemble of unguided learned-prior draws at each truth's date, with the same observations and H;
the best of the localisation radii (`--radii`) and inflations (`--inflations`) is their row.

    .venv/bin/python benchmarks/speedy_osse.py --data .cache/speedy_nside16.zarr --out runs/speedy-osse
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ensemble_da.assimilation import Assimilator  # noqa: E402
from ensemble_da.baselines import letkf, stochastic_enkf  # noqa: E402
from ensemble_da.config import ClimatologyModelConfig, load_config  # noqa: E402
from ensemble_da.data.speedy import read_speedy  # noqa: E402
from ensemble_da.exact import exact_posterior_physical  # noqa: E402
from ensemble_da.grid import HealpixGrid  # noqa: E402
from ensemble_da.obs.era5 import write_healpix_truth  # noqa: E402
from ensemble_da.obs.inputs import prepare_inputs  # noqa: E402
from ensemble_da.obs.operators import ObservationOperator  # noqa: E402
from ensemble_da.obs.osse import PRESSURE_FILE, TRUTH_FILE, healpix_to_latlon, osse_grid_deg, write_era5_netcdf  # noqa: E402
from ensemble_da.priors.checkpoint import load_checkpoint, shipped_heldout_sample  # noqa: E402
from ensemble_da.priors import time_condition  # noqa: E402
from ensemble_da.priors.climatology import ClimatologyPrior  # noqa: E402
from ensemble_da.sampling import DivergenceError  # noqa: E402
from ensemble_da.stats import EnsembleMoments, fair_crps  # noqa: E402


def write_inputs(truth: np.ndarray, times: np.ndarray, channels: list[str], grid: HealpixGrid, out: Path) -> tuple[Path, Path]:
    """ERA5-layout pressure-level NetCDF and truth.zarr for given HEALPix truths."""
    out.mkdir(parents=True, exist_ok=True)
    lat, lon, values = healpix_to_latlon(truth, grid, osse_grid_deg(grid.nside))
    nc, zarr = out / PRESSURE_FILE, out / TRUTH_FILE
    for p in (nc,):
        if p.exists():
            p.unlink()
    if zarr.exists():
        import shutil

        shutil.rmtree(zarr)
    write_era5_netcdf(nc, times, channels, values, lat, lon)
    write_healpix_truth(zarr, truth, times, channels, grid)
    return nc, zarr


def gaussian_crps(mean: np.ndarray, std: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Closed-form CRPS of N(mean, std²) at `truth` (Gneiting et al. 2005)."""
    from scipy.stats import norm

    w = (truth - mean) / std
    return std * (w * (2 * norm.cdf(w) - 1) + 2 * norm.pdf(w) - 1 / np.sqrt(np.pi))


def ensemble_rows(x: np.ndarray, truth: np.ndarray, channels: list[str]) -> dict:
    """Per-time scores of an ensemble x (member, channel, cell) against truth (channel, cell)."""
    mom = EnsembleMoments.of(x)
    crps = fair_crps(x, truth)
    var = mom.variance()
    return {
        "mse": {c: float(np.mean((mom.mean[i] - truth[i]) ** 2)) for i, c in enumerate(channels)},
        "var": {c: float(np.mean(var[i])) for i, c in enumerate(channels)},
        "crps": {c: float(crps[i].mean()) for i, c in enumerate(channels)},
    }


def background_ensembles(cfg, learned, times, members: int, cache: Path) -> np.ndarray:
    """Unguided draws of the learned prior per analysis time, physical units (time, member, channel,
    cell): the background ensemble of the ensemble Kalman baselines (the same seeds as the guided
    members, as `diagnostics.background` draws it). Cached in `cache` (.npy) for reruns."""
    if cache.exists():
        x = np.load(cache)
        if x.shape[:2] == (len(times), members):
            return x
    run_cfg = cfg.model_copy(deep=True)
    run_cfg.guidance.method = "none"
    run_cfg.sampler.autocast = "none"
    assim = Assimilator(run_cfg, prior=learned)
    t0 = time.time()
    out = []
    for t in range(len(times)):
        out.append(assim.sample(None, t, list(range(members)), condition=time_condition(times[t])).analysis)
        print(f"  background t={t}: {time.time() - t0:.0f} s", flush=True)
    x = np.stack(out).astype(np.float32)
    np.save(cache, x)
    return x


def ensemble_kalman_baselines(
    cfg, learned, inputs, times, channels: list[str], truth: np.ndarray, sizes: list[int], radii: list[float],
    inflations: list[float], cache: Path,
) -> tuple[dict[str, tuple[list[dict], int]], dict[str, dict]]:
    """Stochastic EnKF and LETKF on a background ensemble of M learned-prior draws, the guided
    members' inputs (same observations, same H in the prior's normalised units).

    Every (method, M) is run for each localisation half-width in `radii` (km; 0: none) and
    inflation; the setting with the lowest mean normalised RMSE over the truths is the row
    (chosen on the same truths: a choice in the baselines' favour). Returns the rows and,
    per (method, M), the sweep {setting: mean normalised RMSE}.
    """
    background = background_ensembles(cfg, learned, times, max(sizes), cache)
    norm, grid = learned.normalization, learned.grid
    used = [o.assimilated_only() for o in inputs.observations]
    ops = [ObservationOperator.build(o, grid, norm, cfg.observations.operator) for o in used]
    rows: dict[str, tuple[list[dict], int]] = {}
    sweep: dict[str, dict] = {}
    for m in sizes:
        xbs = [norm.normalize(background[t, :m].astype(np.float64)) for t in range(len(ops))]
        for name in ("LETKF", "EnKF"):
            best = None
            for radius in radii:
                for rho in inflations:
                    per_time = []
                    for t, (op, xb, o) in enumerate(zip(ops, xbs, used)):
                        loc = None if radius == 0 else radius
                        if name == "LETKF":
                            xa = letkf(xb, op, o.lat, o.lon, grid, localization_km=loc, inflation=rho)
                        else:
                            rng = np.random.default_rng([cfg.seed, t, 7])
                            xa = stochastic_enkf(xb, op, rng, o.lat, o.lon, grid, localization_km=loc, inflation=rho)
                        per_time.append(ensemble_rows(norm.denormalize(xa), truth[t], channels))
                    score = normalised_rmse(aggregate(per_time, channels, m), channels, norm.channels, norm.scale)
                    tag = f"loc={'none' if radius == 0 else f'{radius:g} km'}, ρ={rho:g}"
                    sweep.setdefault(f"{name} M={m}", {})[tag] = score
                    if best is None or score < best[0]:
                        best = (score, tag, per_time)
            rows[f"{name} M={m} ({best[1]}; learned-prior background)"] = (best[2], m)
            print(f"  {name} M={m}: best {best[1]} (normalised RMSE {best[0]:.4f})", flush=True)
    return rows, sweep


def normalised_rmse(agg: dict[str, float], channels: list[str], names, scale) -> float:
    """The mean over `channels` of RMSE / scale (`scale[i]` of channel `names[i]`): how settings are ranked."""
    names = list(names)
    return float(np.mean([agg[f"rmse/{c}"] / scale[names.index(c)] for c in channels]))


def aggregate(per_time: list[dict], channels: list[str], members: int | None) -> dict[str, float]:
    out = {}
    for c in channels:
        mses = np.array([m["mse"][c] for m in per_time])
        mse = mses.mean()
        var = np.mean([m["var"][c] for m in per_time])
        rmse = float(np.sqrt(mse))
        factor = 1.0 if members is None else np.sqrt((members + 1) / members)
        out[f"rmse/{c}"] = rmse
        out[f"rmse_se/{c}"] = float(mses.std(ddof=1) / np.sqrt(len(mses)) / (2 * rmse)) if len(mses) > 1 else float("nan")
        out[f"ssr/{c}"] = float(factor * np.sqrt(var) / rmse)
        out[f"crps/{c}"] = float(np.mean([m["crps"][c] for m in per_time]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "speedy-osse.yaml"))
    ap.add_argument("--checkpoint", default=None, help="checkpoint stem/json (default: shipped)")
    ap.add_argument("--data", default=str(REPO / ".cache" / "speedy_nside16.zarr"), help="training dataset (climatology fit)")
    ap.add_argument("--holdout-days", type=int, default=60)
    ap.add_argument("--truths", default=None, help=".npz or zarr of held-out states (default: the packaged sample)")
    ap.add_argument("--times", type=int, default=12, help="analysis times (spread over the held-out states)")
    ap.add_argument("--members", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--methods", default="regression,mmps:cg,mmps:gmres")
    ap.add_argument("--ranks", default="128,256,512", help="climatology ranks; the best (lowest mean normalised RMSE) is the baseline")
    ap.add_argument("--kalman-members", default="16,64", help="ensemble sizes of the EnKF/LETKF baselines ('' for none)")
    ap.add_argument("--radii", default="500,1000,2000,4000,0", help="Gaspari–Cohn half-widths (km) tried; 0: no localisation")
    ap.add_argument("--inflations", default="1.0,1.1", help="multiplicative inflations tried")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--out", default=str(REPO / "runs" / "speedy-osse"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    learned = load_checkpoint(args.checkpoint)
    channels = list(learned.normalization.channels)
    held = read_speedy(args.truths or shipped_heldout_sample())
    fit = read_speedy(args.data)
    if fit.data_hash != learned.meta.get("training_data_hash"):
        print(f"note: the climatology is fitted on {args.data} (hash {fit.data_hash}), not on the network's training "
              f"data (hash {learned.meta.get('training_data_hash')}); both are unseen by the truths only if those are held out of both")
    del fit
    pick = np.linspace(0, held.state.shape[0] - 1, args.times).round().astype(int)
    truth_all = held.state[pick][:, [held.channels.index(c) for c in channels]].astype(np.float32)
    times = held.time[pick]
    nc, zarr = write_inputs(truth_all, times, channels, learned.grid, out / "inputs")

    overrides = [
        f"observations.path={nc}",
        f"observations.truth_path={zarr}",
        "times=[" + ", ".join(f'"{np.datetime_as_string(t, unit="s")}"' for t in times) + "]",
    ]
    if args.members:
        overrides.append(f"ensemble.members={args.members}")
    if args.steps:
        overrides.append(f"sampler.steps={args.steps}")
    cfg = load_config(args.config, overrides)
    inputs = prepare_inputs(cfg, learned)
    truth = inputs.truth.astype(np.float64)
    members = cfg.ensemble.members
    n_obs = [int(o.assimilated.sum()) for o in inputs.observations]
    print(f"{len(times)} analysis times {np.datetime_as_string(times[0], unit='D')} .. "
          f"{np.datetime_as_string(times[-1], unit='D')}, {np.mean(n_obs):.0f} assimilated obs each, {members} members")

    results: dict[str, dict] = {}
    timing: dict[str, float] = {}
    diverged: dict[str, str] = {}

    # --- Gaussian baseline(s): exact posterior -------------------------------------------------
    best = None
    for rank in [int(r) for r in args.ranks.split(",")]:
        mcfg = ClimatologyModelConfig(path=args.data, rank=rank, holdout_days=args.holdout_days, channels=channels)
        t0 = time.time()
        prior = ClimatologyPrior.from_config(mcfg, cfg.grid)
        rows, clim = [], []
        for t, obs in enumerate(inputs.observations):
            op = ObservationOperator.build(obs.assimilated_only(), prior.grid, prior.normalization, cfg.observations.operator)
            mean, spread = exact_posterior_physical(prior, op)
            rows.append({
                "mse": {c: float(np.mean((mean[i] - truth[t, i]) ** 2)) for i, c in enumerate(channels)},
                "var": {c: float(np.mean(spread[i] ** 2)) for i, c in enumerate(channels)},
                "crps": {c: float(gaussian_crps(mean[i], spread[i], truth[t, i]).mean()) for i, c in enumerate(channels)},
            })
            pm, ps = prior.prior_mean_physical(), prior.prior_spread()
            clim.append({
                "mse": {c: float(np.mean((pm[i] - truth[t, i]) ** 2)) for i, c in enumerate(channels)},
                "var": {c: float(np.mean(ps[i] ** 2)) for i, c in enumerate(channels)},
                "crps": {c: float(gaussian_crps(pm[i], ps[i], truth[t, i]).mean()) for i, c in enumerate(channels)},
            })
        agg = aggregate(rows, channels, None)
        timing[f"gaussian r={rank}"] = time.time() - t0
        results[f"OI: gaussian climatology r={rank} (exact)"] = agg
        score = normalised_rmse(agg, channels, held.channels, held.scale)
        if best is None or score < best[0]:
            best = (score, f"OI: gaussian climatology r={rank} (exact)")
        results.setdefault(f"climatological mean (no obs; spread of r={rank})", aggregate(clim, channels, None))
    baseline = best[1]

    # --- learned prior ----------------------------------------------------------------------
    for method in [m for m in args.methods.split(",") if m]:
        run_cfg = cfg.model_copy(deep=True)
        kind, _, solver = method.partition(":")
        run_cfg.guidance.method = kind
        if solver:
            run_cfg.guidance.solver = solver
        run_cfg.sampler.autocast = "none"
        assim = Assimilator(run_cfg, prior=learned)
        rows = []
        t0 = time.time()
        try:
            for t, obs in enumerate(inputs.observations):
                # per-time scores are kept, so a rerun with the same settings skips finished times
                key = {"method": method, "time": str(times[t]), "members": members, "steps": run_cfg.sampler.steps,
                       "seed": run_cfg.seed, "checkpoint": learned.meta.get("training_data_hash"),
                       "checkpoint_steps": learned.meta.get("training", {}).get("steps"),
                       "obs": float(np.sum(obs.value)), "guidance": run_cfg.guidance.model_dump(mode="json")}
                cached = out / "rows" / f"{method.replace(':', '-')}-t{t}.json"
                if cached.is_file() and json.loads(cached.read_text())["key"] == key:
                    rows.append(json.loads(cached.read_text())["row"])
                    continue
                block = assim.sample(obs, t, list(range(members)), condition=time_condition(times[t]))
                rows.append(ensemble_rows(block.analysis.astype(np.float64), truth[t], channels))
                cached.parent.mkdir(exist_ok=True)
                cached.write_text(json.dumps({"key": key, "row": rows[-1]}))
                print(f"  {method} t={t}: {time.time() - t0:.0f} s", flush=True)
        except DivergenceError as exc:
            print(f"  {method}: {exc}", flush=True)
            diverged[f"learned + {method}"] = f"diverged at step {exc.step}/{exc.steps} (σ = {exc.sigma:.3g}), time {t}"
            continue
        timing[f"learned {method}"] = time.time() - t0
        results[f"learned + {method}"] = aggregate(rows, channels, members)

    sweep = {}
    if args.kalman_members:
        sizes = [int(m) for m in args.kalman_members.split(",")]
        radii = [float(r) for r in args.radii.split(",")]
        inflations = [float(r) for r in args.inflations.split(",")]
        t0 = time.time()
        kalman, sweep = ensemble_kalman_baselines(cfg, learned, inputs, times, channels, truth, sizes, radii, inflations,
                                                  out / "background.npy")
        timing["ensemble kalman (all settings)"] = time.time() - t0
        for name, (rows, m) in kalman.items():
            results[name] = aggregate(rows, channels, m)

    # --- table --------------------------------------------------------------------------------
    lines = ["| prior | metric | " + " | ".join(channels) + " |", "|---|---|" + "---|" * len(channels)]
    for name, agg in results.items():
        for metric in ("rmse", "ssr", "crps"):
            vals = []
            for c in channels:
                v = agg[f"{metric}/{c}"]
                se = agg.get(f"rmse_se/{c}") if metric == "rmse" else None
                vals.append(f"{v:.2f}" if metric == "ssr" else f"{v:.3g}" + (f" ± {se:.2g}" if se is not None and np.isfinite(se) else ""))
            lines.append(f"| {name} | {metric.upper()} | " + " | ".join(vals) + " |")
    gain_lines = []
    references = [baseline] + [n for n in results if n.startswith("LETKF M=16")]
    for name in results:
        if name.startswith("learned"):
            for ref in references:
                ratio = [results[name][f"rmse/{c}"] / results[ref][f"rmse/{c}"] for c in channels]
                gain_lines.append(f"| {name} / {ref.split(' (')[0]} | RMSE ratio | " + " | ".join(f"{r:.3f}" for r in ratio) + " |")
    div_lines = [f"| {name} | diverged | " + " | ".join([why] + [""] * (len(channels) - 1)) + " |" for name, why in diverged.items()]
    table = "\n".join(lines + div_lines + gain_lines)
    print(table)
    summary = {
        "times": [np.datetime_as_string(t, unit="s") for t in times],
        "assimilated_obs_per_time": n_obs,
        "members": members,
        "sampler_steps": cfg.sampler.steps,
        "baseline": baseline,
        "results": results,
        "diverged": diverged,
        "kalman_sweep": sweep,
        "seconds": timing,
        "checkpoint": learned.meta.get("training", {}).get("steps"),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    (out / "table.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
