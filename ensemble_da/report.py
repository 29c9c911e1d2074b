"""`ensemble-da report DIR` (DESIGN.md §7): one self-contained HTML page of a finished run.

Reads the run directory (`analysis.zarr`, complete; `summary.json`) and writes
`DIR/report.html` with its PNG figures embedded (data URIs; the same PNGs are kept in
`DIR/figures/report/`, which the run logs to MLflow):

- maps (healpy Mollweide, geographic orientation) per analysis time and channel: analysis mean,
  spread, increment (analysis − background mean, when the run drew a background), truth and
  error (mean − truth) when the run has a truth;
- observation locations coloured by O−A;
- rank histograms: truth among the members at every cell, and held-out observations among the
  members with observation noise added (random tie-breaking);
- spread reliability per channel (binned spread against binned error, with the spread-skill ratio);
- a per-channel table of the summary metrics (means over analysis times).

A directory that is not a finished run (no summary, incomplete store: failed or interrupted)
raises `InputError` (one line, exit 2 from the CLI).
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import yaml

from ensemble_da.channels import Normalization
from ensemble_da.config import RunConfig, config_from_tree
from ensemble_da.diagnostics import heldout_rank_histogram, spread_reliability
from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid
from ensemble_da.io import STORE_NAME, open_run
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators import build_operator
from ensemble_da.stats import ObsFit, heldout_rank_rng, rank_counts, truth_rank_rng

__all__ = ["FinishedRun", "load_finished_run", "report_figures", "map_times", "write_report", "REPORT_NAME", "TABLE_COLUMNS", "TERMINAL_KEYS"]

REPORT_NAME = "report.html"
# The per-channel summary metrics, (metric prefix in summary.json, title), in display order: the
# report shows each row any channel has; the table `ensemble-da run` prints ends with TERMINAL_KEYS.
TABLE_COLUMNS = [
    ("rmse", "RMSE vs truth"), ("spread", "spread"), ("ssr", "SSR"), ("crps", "CRPS"),
    ("exact_mean_err", "exact mean err"), ("exact_var_ratio", "exact var ratio"),
    ("oa_rmse", "O−A RMS"), ("oa_bias", "O−A bias"), ("heldout_oa_rmse", "held-out O−A RMS"),
    ("heldout_crps", "held-out CRPS"), ("heldout_ssr", "held-out SSR"),
    ("ob_rmse", "O−B RMS"), ("ob_bias", "O−B bias"), ("heldout_improvement", "held-out improvement"),
    ("desroziers_sigma_o", "Desroziers σ_o"), ("desroziers_sigma_o_expected", "σ_o configured"),
    ("desroziers_sigma_b", "Desroziers σ_b"), ("desroziers_sigma_b_expected", "σ_b ensemble"),
    ("chi2_per_obs", "χ²/n"), ("chi2_per_obs_expected", "χ²/n expected"), ("qc/background_rejected", "QC rejected"),
]
# The columns of the end-of-run terminal table (narrow: the scores a user reads first).
TERMINAL_KEYS = ("rmse", "spread", "ssr", "exact_mean_err", "exact_var_ratio", "oa_rmse", "heldout_oa_rmse")
# Largest (member, channel, cells) slice read at once for the truth's ranks.
_SLICE_BYTES = 128 * 2**20


@dataclass
class FinishedRun:
    """A finished run, opened: store (xarray), its observations, summary.json, the resolved config."""

    path: Path
    store: xr.Dataset
    observations: xr.Dataset
    summary: dict[str, Any]
    config: RunConfig

    @property
    def channels(self) -> list[str]:
        return [str(c) for c in self.store["channel"].values]


def load_finished_run(run_dir: str | Path) -> FinishedRun:
    """Open `run_dir` for reporting; InputError (one line) when it is not a finished run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"report: {run_dir} is not a directory")
    summary_path = run_dir / "summary.json"
    if not (run_dir / STORE_NAME).is_dir():
        raise InputError(f"report: {run_dir} is not a run directory (no {STORE_NAME})")
    store = open_run(run_dir)  # InputError when the run failed or was interrupted
    if not summary_path.is_file():
        raise InputError(f"report: {run_dir} has no summary.json; the run did not finish")
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"report: cannot read {summary_path}: {exc}") from None
    config = config_from_tree(yaml.safe_load(store.attrs["config"]) or {}, f"{run_dir / STORE_NAME} attrs.config")
    return FinishedRun(run_dir, store, open_run(run_dir, group="observations"), summary, config)


def _time_index(run: FinishedRun) -> np.ndarray:
    """Analysis time index of each observation: the group's `t_index` when stored, else the
    nearest analysis time (the rule by which observations were assigned)."""
    if "t_index" in run.observations:
        return run.observations["t_index"].values.astype(int)
    times = run.store["time"].values.astype("datetime64[ns]").astype(np.int64)
    obs_t = run.observations["time"].values.astype("datetime64[ns]").astype(np.int64)
    return np.abs(obs_t[:, None] - times[None]).argmin(1)


def _obs_set(run: FinishedRun, sel: np.ndarray) -> ObservationSet:
    ds = run.observations.isel(obs=np.flatnonzero(sel))
    return ObservationSet.from_dataset(ds)


def _members_at_obs(run: FinishedRun, t: int, obs: ObservationSet) -> np.ndarray:
    """H applied to every member of time t, (member, obs), physical units (H interpolates, so it
    needs no normalisation: unit scales are used)."""
    channels = run.channels
    unit = Normalization(tuple(channels), np.zeros(len(channels)), np.ones(len(channels)))
    op = build_operator(obs, HealpixGrid(run.config.grid.nside), unit, run.config.observation_sets())
    analysis = run.store["analysis"]
    step = max(1, _SLICE_BYTES // (4 * analysis.shape[2] * analysis.shape[3]))
    return np.concatenate([
        op.observe(analysis.isel(time=t, member=slice(lo, lo + step)).values.astype(np.float64))
        for lo in range(0, analysis.shape[1], step)
    ])


def _truth_ranks(run: FinishedRun) -> np.ndarray:
    """Rank counts of the truth among the members, int (channel, member + 1), all times and cells."""
    analysis, truth = run.store["analysis"], run.store["truth"]
    nt, m, nc, npix = analysis.shape
    step = max(1, min(npix, _SLICE_BYTES // (4 * m * nc)))
    counts = np.zeros((nc, m + 1), dtype=np.int64)
    rng = truth_rank_rng(run.config.seed)
    for t in range(nt):
        for lo in range(0, npix, step):
            ens = analysis.isel(time=t, cell=slice(lo, lo + step)).values
            tr = truth.isel(time=t, cell=slice(lo, lo + step)).values
            for c in range(nc):
                counts[c] += rank_counts(ens[:, c], tr[c], rng)
    return counts


def _mean_metric(summary: dict[str, Any], key: str) -> float | None:
    v = summary.get(key)
    return float(v) if isinstance(v, (int, float)) and v is not None and np.isfinite(v) else None


# Panels of the time-series figure: (title, [(metric prefix, line suffix)]); a panel is drawn when
# the run has any of its metrics.
TIME_SERIES = [
    ("RMSE vs truth and spread", [("rmse", ""), ("spread", " (spread)")]),
    ("spread-skill ratio", [("ssr", "")]),
    ("O−B and O−A RMS at assimilated obs", [("oa_rmse", " O−A"), ("ob_rmse", " O−B (background)")]),
    ("Desroziers σ_o (dashed: configured)", [("desroziers_sigma_o", ""), ("desroziers_sigma_o_expected", " (expected)")]),
    ("exact: ensemble / exact variance", [("exact_var_ratio", "")]),
]
# Longest run whose every time gets maps; longer runs get MAX_MAP_TIMES evenly spaced times.
MAX_MAP_TIMES = 6


def map_times(n: int) -> list[int]:
    """The analysis times that get maps: all of a short run, else MAX_MAP_TIMES from first to last."""
    if n <= MAX_MAP_TIMES:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, MAX_MAP_TIMES)})


def _time_series(run: FinishedRun, times: np.ndarray, fig_dir: Path) -> tuple[Path, str]:
    """The per-time metrics of summary.json as time series (one line per channel)."""
    from ensemble_da import figures

    by_time = list(run.summary.get("by_time", {}).values())
    panels = {}
    for title, lines in TIME_SERIES:
        panel = {}
        for prefix, suffix in lines:
            for name in run.channels:
                values = np.array([m.get(f"{prefix}/{name}", np.nan) for m in by_time], dtype=float)
                if np.isfinite(values).any():
                    panel[f"{name}{suffix}"] = values
        if panel:
            panels[title] = panel
    mode = run.config.mode
    path = figures.plot_time_series(fig_dir / "time_series.png", times, panels,
                                    title=f"{run.config.run_name}: per analysis time (mode {mode})")
    return path, f"metrics per analysis time (mode {mode}; MLflow has them with step = time index)"


def report_figures(run: FinishedRun, fig_dir: Path) -> list[tuple[Path, str]]:
    """Write the report's PNGs into `fig_dir`; returns (path, caption) in page order."""
    from ensemble_da import figures

    fig_dir.mkdir(parents=True, exist_ok=True)
    ds, channels = run.store, run.channels
    times = ds["time"].values
    has_truth, has_background = "truth" in ds, "background_mean" in ds
    out: list[tuple[Path, str]] = []
    t_of_obs = _time_index(run)
    if len(times) > 1:
        out.append(_time_series(run, times, fig_dir))
    for t in map_times(len(times)):
        when = times[t]
        stamp = np.datetime_as_string(when, unit="m")
        mean = ds["ensemble_mean"].isel(time=t).values
        fields = {"mean": mean, "spread": ds["ensemble_spread"].isel(time=t).values}
        if has_background:
            fields["increment"] = mean - ds["background_mean"].isel(time=t).values
        if has_truth:
            truth = ds["truth"].isel(time=t).values
            fields["truth"], fields["error"] = truth, mean - truth
        path = figures.plot_maps(fig_dir / f"maps_t{t}.png", fields, channels, title=f"{run.config.run_name} {stamp}")
        out.append((path, f"{stamp}: " + ", ".join(fields) + " (Mollweide, east to the right; physical units)"))
        sel = t_of_obs == t
        if sel.any():
            o = run.observations.isel(obs=np.flatnonzero(sel))
            resid = o["value"].values - o["hx_mean"].values
            path = figures.plot_obs_residuals(
                fig_dir / f"obs_residuals_t{t}.png", mean, o["lat"].values, o["lon"].values,
                o["channel"].values.astype(str), resid, o["assimilated"].values.astype(bool), channels,
                title=f"observation minus analysis mean, {stamp}")
            out.append((path, f"{stamp}: observations coloured by O−A over the analysis mean"))

    # Calibration at held-out observations (noise added to the members) and against the truth.
    m = ds.sizes["member"]
    held_counts = np.zeros((len(channels), m + 1), dtype=np.int64)
    held_spread: dict[str, list[np.ndarray]] = {c: [] for c in channels}
    held_error: dict[str, list[np.ndarray]] = {c: [] for c in channels}
    for t in range(len(times)):
        sel = t_of_obs == t
        if not sel.any():
            continue
        obs = _obs_set(run, sel)
        if obs.assimilated.all():
            continue
        fit = ObsFit(obs, _members_at_obs(run, t, obs))
        held_counts += heldout_rank_histogram(channels, fit, heldout_rank_rng(run.config.seed, t))
        for name in channels:
            h = (obs.channel == name) & ~obs.assimilated
            held_spread[name].append(np.sqrt(fit.hx_spread[h] ** 2 + obs.sigma[h] ** 2))
            held_error[name].append(obs.value[h] - fit.hx_mean[h])
    if has_truth:
        path = figures.plot_rank_histogram(fig_dir / "rank_histogram_truth.png", _truth_ranks(run), channels,
                                           title="rank of the truth among the members (all cells and times)")
        out.append((path, "rank histogram against the truth (random tie-breaking); flat = calibrated"))
    if held_counts.sum():
        path = figures.plot_rank_histogram(fig_dir / "rank_histogram_heldout.png", held_counts, channels,
                                           title="rank of held-out observations (obs noise added to members)",
                                           xlabel="rank of observation")
        out.append((path, "rank histogram of held-out observations among the members with observation "
                          "noise added (random tie-breaking); flat = calibrated"))

    curves, ratios = {}, {}
    for c, name in enumerate(channels):
        if has_truth:
            spread = ds["ensemble_spread"].isel(channel=c).values
            error = ds["ensemble_mean"].isel(channel=c).values - ds["truth"].isel(channel=c).values
            ratios[name] = _mean_metric(run.summary, f"ssr/{name}") or float("nan")
        elif held_spread[name] and sum(a.size for a in held_spread[name]) >= 10:
            spread, error = np.concatenate(held_spread[name]), np.concatenate(held_error[name])
            ratios[name] = _mean_metric(run.summary, f"heldout_ssr/{name}") or float("nan")
        else:
            continue
        s, e, _ = spread_reliability(spread, error, bins=min(10, spread.size // 10 or 1))
        curves[name] = (s, e)
    if curves:
        what = "ensemble mean vs truth over cells" if has_truth else "held-out observations (spread includes σ_o)"
        path = figures.plot_spread_skill(fig_dir / "spread_skill.png", curves, ratios,
                                         title=f"spread reliability: {what}")
        out.append((path, f"spread reliability ({what}): rms error against rms spread in bins of spread; "
                          "the diagonal is a reliable ensemble; titles give the spread-skill ratio"))
    return out


def _table_html(run: FinishedRun) -> str:
    """One row per metric (those the run has), one column per channel."""
    channels = run.channels
    head = "".join(f"<th>{html.escape(c)}</th>" for c in channels)
    rows = []
    for key, title in TABLE_COLUMNS:
        values = [_mean_metric(run.summary, f"{key}/{c}") for c in channels]
        if all(v is None for v in values):
            continue
        cells = "".join("<td>—</td>" if v is None else f"<td>{v:.4g}</td>" for v in values)
        rows.append(f"<tr><th scope='row' title='{html.escape(key)}/C'>{html.escape(title)}</th>{cells}</tr>")
    return (f"<table id='channel-table'><thead><tr><th>metric</th>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; } th, td { border: 1px solid #ccc; padding: 3px 8px; }
td { text-align: right; font-variant-numeric: tabular-nums; } thead th { background: #f0f0f0; }
tbody th { text-align: left; font-weight: normal; }
figure { margin: 1em 0; } img { max-width: 100%; } figcaption { font-size: 0.9em; color: #555; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; font-size: 0.9em; }
"""


def write_report(run_dir: str | Path) -> Path:
    """Write `run_dir/report.html` (figures embedded; PNGs also in `run_dir/figures/report/`)."""
    run = load_finished_run(run_dir)
    figs = report_figures(run, run.path / "figures" / "report")
    cfg, s = run.config, run.summary
    times = [np.datetime_as_string(t, unit="m") for t in run.store["time"].values]
    n_obs, n_assim = run.observations.sizes["obs"], int(run.observations["assimilated"].values.sum())
    facts = {
        "analysis times": ", ".join(times),
        "prior": cfg.model.kind, "guidance": cfg.guidance.method, "nside": cfg.grid.nside,
        "members": run.store.sizes["member"],
        "observations": f"{n_obs} ({n_assim} assimilated, {n_obs - n_assim} held out); " + "; ".join(
            f"set {o.name}: source {o.source}, operator {o.operator}" for o in cfg.observation_sets()),
        "background ensemble": "yes" if "background_mean" in run.store else "no",
        "wall time": f"{s.get('wall_time_s', float('nan')):.1f} s",
        "MLflow": f"{s.get('tracking_uri')} run {s.get('run_id')}" if not s.get("tracking_error") else
                  f"tracking failed: {s.get('tracking_error')}",
    }
    dl = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in facts.items())
    body = []
    for path, caption in figs:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        body.append(f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(path.stem)}'>"
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(cfg.run_name)} — ensemble-da report</title>
<style>{_STYLE}</style></head><body>
<h1>{html.escape(cfg.run_name)}: posterior ensemble report</h1>
<dl>{dl}</dl>
<h2>Per channel (means over analysis times, physical units)</h2>
{_table_html(run)}
<h2>Figures</h2>
{''.join(body)}
</body></html>
"""
    out = run.path / REPORT_NAME
    tmp = out.with_suffix(".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
