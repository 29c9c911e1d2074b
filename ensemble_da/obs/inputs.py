"""What a run assimilates: one ObservationSet per analysis time, and the truth when known.

`prepare_inputs` turns the `observations:` section of a run config (DESIGN.md §7a) into
`RunInputs`, dispatching on `observations.source`:
- `era5`: gridded ERA5 files (`era5.py`); `num_obs` locations per analysis time are drawn by
  the strategy inside the files' lat/lon domain (the globe for a global grid), channels taken in turn (location i observes channel i mod C), values
  interpolated bilinearly on the lat/lon grid at the valid time nearest to the analysis time
  (within `time_tolerance_hours`); optional truth from `truth_path` (regridded to HEALPix).
- `stations`: CSV/Parquet tables (`stations.py`); every report within the time window, after QC,
  thinned to at most `num_obs` by the strategy.
- `synthetic`: an OSSE (`osse.py`): the truths the caller drew from the prior
  (`ensemble_da.truth.draw_truths`) are written as ERA5-layout NetCDF into a temporary
  directory and read back through the `era5` path with noise added.
Readers know the state only by its layout (grid and channels), never the prior.
Observation errors: the file's per-report `sigma` where given, else `observations.sigma[c]`,
else the channel's documented default (`variables.py`). QC (`qc.py`) runs on every source; its
counts are in `RunInputs.qc` (summed over times) for summary.json and MLflow (`qc/<name>`).
Random draws use the stream SeedSequence([seed, t, OBS_STREAM]) (`synthetic.py`), set i > 0 of
several with a seed derived from SeedSequence([seed, SET_STREAM, i]).
"""

from __future__ import annotations

import logging

import tempfile
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import pandas as pd

from ensemble_da.channels import Normalization
from ensemble_da.config import RunConfig
from ensemble_da.errors import InputError
from ensemble_da.obs.era5 import GriddedSource, format_time, open_source, read_healpix_truth
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.qc import QCCounts, quality_control
from ensemble_da.obs.stations import open_stations
from ensemble_da.obs.strategies import Domain, select_candidates, select_locations
from ensemble_da.obs.synthetic import TRUTH_STREAM, obs_rng, truth_rng
from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.variables import default_sigma

# Derives the seed of observation set i > 0's draws (far from the other streams' ids).
SET_STREAM = 2**31 - 7

_LOG = logging.getLogger("ensemble_da.obs")

__all__ = ["RunInputs", "StateLayout", "prepare_inputs", "TRUTH_STREAM", "truth_rng", "channel_sigma_map", "check_channels"]


class StateLayout(Protocol):
    """The state observations are read against: the grid and the channels (a prior is one)."""

    grid: HealpixGrid
    normalization: Normalization


@dataclass
class RunInputs:
    """times (time,) datetime64[ns]; observations, one set per time; truth (time, channel, cell)
    float32 in physical units, or None when the truth is unknown; qc: counts summed over times
    (`qc_per_time`: one per time; `qc_per_set`: per observation set, with several)."""

    times: np.ndarray
    observations: list[ObservationSet]
    truth: np.ndarray | None = None
    qc: QCCounts = field(default_factory=QCCounts)
    qc_per_time: list[QCCounts] = field(default_factory=list)
    qc_per_set: dict[str, QCCounts] = field(default_factory=dict)

    def qc_metrics(self) -> dict[str, float]:
        """`qc/<reason>` summed over times, and `qc/<set>/<reason>` with several sets."""
        out = self.qc.metrics()
        for name, counts in self.qc_per_set.items():
            out.update(counts.metrics(f"qc/{name}/"))
        return out


def check_channels(config: RunConfig, layout: StateLayout) -> list[str]:
    """`observations.channels`, after checking each is a channel of the prior (InputError otherwise)."""
    have = list(layout.normalization.channels)
    for ch in config.observations.channels:
        if ch not in have:
            raise InputError(f"observations.channels: {ch!r} is not a channel of the prior (model channels: {have})")
    if not config.observations.channels:
        raise InputError("observations.channels is empty")
    # A sigma for a channel the prior lacks may be a typo (T580 for T500) that leaves the intended
    # channel at its default error; it may also be a shared sigma table, so it is said, not refused.
    unused = [ch for ch in config.observations.sigma if ch not in have]
    if unused:
        _LOG.warning("observations.sigma names %s, not channels of the prior (model channels: %s): ignored",
                     unused, have)
    return list(config.observations.channels)


def channel_sigma_map(config: RunConfig, channels: list[str]) -> dict[str, float]:
    """Observation error per channel: `observations.sigma` or the documented default."""
    return {c: float(config.observations.sigma.get(c, default_sigma(c))) for c in channels}


def prepare_inputs(config: RunConfig, layout: StateLayout, truths: np.ndarray | None = None) -> RunInputs:
    """Observations (and truth when known) for every analysis time of `config`: each time's
    `ObservationSet` holds every configured set's observations, set after set in config order
    (`set_name`), each set read, QC'd and thinned by its own settings.

    `truths` (time, channel, cell), physical units: the OSSE truths of `observations.source:
    synthetic`, drawn by the caller; required for that source and unused by the others.
    Set i > 0 draws its locations, noise and held-out flags from a seed derived from (seed, i),
    so two sets with the same settings do not pick the same places.
    """
    sets = config.observation_sets()
    parts = [_set_inputs(_set_config(config, i, s), layout, truths) for i, s in enumerate(sets)]
    observations = [ObservationSet.concat([replace(p.observations[t], set_name=s.name) for p, s in zip(parts, sets)])
                    for t in range(len(config.times))]
    truth = next((p.truth for p in parts if p.truth is not None), None)
    total, per_time = QCCounts(), [QCCounts() for _ in config.times]
    for p in parts:
        total = total + p.qc
        per_time = [a + b for a, b in zip(per_time, p.qc_per_time)]
    per_set = {s.name: p.qc for p, s in zip(parts, sets)} if len(sets) > 1 else {}
    return RunInputs(config.analysis_times(), observations, truth, total, per_time, per_set)


def _set_config(config: RunConfig, index: int, observations) -> RunConfig:
    """The run config as the readers see set `index`: its `observations`, and for index > 0 a
    seed derived from (seed, index) for the set's own random draws."""
    seed = config.seed if index == 0 else int(np.random.SeedSequence([config.seed, SET_STREAM, index]).generate_state(1)[0])
    return config.model_copy(update={"observations": observations, "seed": seed})


def _set_inputs(config: RunConfig, layout: StateLayout, truths: np.ndarray | None) -> RunInputs:
    """`prepare_inputs` of a config with one observation set."""
    src = config.observations.source
    if src == "era5":
        return _gridded_inputs(config, layout)
    if src == "stations":
        return _station_inputs(config, layout)
    if src == "synthetic":
        if truths is None:
            raise ValueError("observations.source synthetic: pass the truths drawn from the prior (ensemble_da.truth.draw_truths)")
        return _synthetic_inputs(config, layout, truths)
    raise InputError(f"observations.source {src!r} is not one of synthetic, era5, stations")


def _to_set(table: pd.DataFrame) -> ObservationSet:
    return ObservationSet(
        time=table["time"].to_numpy("datetime64[ns]"),
        lat=table["lat"].to_numpy(np.float64),
        lon=table["lon"].to_numpy(np.float64),
        channel=table["channel"].to_numpy(str),
        value=table["value"].to_numpy(np.float64),
        sigma=table["sigma"].to_numpy(np.float64),
    )


def _empty_error(where: str, time: np.datetime64, counts: QCCounts) -> InputError:
    return InputError(f"{where}: no observations left at analysis time {format_time(time)} after QC ({counts.as_dict()})")


def _draw_locations(
    strategy: str, n: int, channels: list[str], domains: dict[str, Domain | None], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n` locations by `strategy`, location i observing channel i mod C: (lat, lon, channel), each (n,).

    The points are drawn in the domain of the channels' grids (None: the globe), so a regional
    file gets `n` observable points; channels on different grids draw theirs each in its own.
    """
    ch = np.asarray(channels, dtype=object)[np.arange(n) % len(channels)]
    if len(set(domains.values())) == 1:
        lat, lon = select_locations(strategy, n, rng, domains[channels[0]])
        return lat, lon, ch
    lat, lon = np.empty(n), np.empty(n)
    for c in channels:
        sel = ch == c
        lat[sel], lon[sel] = select_locations(strategy, int(sel.sum()), rng, domains[c])
    return lat, lon, ch


def _gridded_observations(
    config: RunConfig, source: GriddedSource, channels: list[str], add_noise: bool,
    bias: dict[str, float] | None = None,
) -> tuple[list[ObservationSet], list[QCCounts]]:
    """Each time's observations of `source`; `bias` (an OSSE's `observations.bias.truth`) adds a
    constant per channel, physical units."""
    cfg = config.observations
    source.require(channels)
    sigmas = channel_sigma_map(config, channels)
    sets, counts = [], []
    for t, time in enumerate(config.analysis_times()):
        rng = obs_rng(config.seed, t)
        fields = {c: source.field(c, time, cfg.time_tolerance_hours) for c in channels}
        lat, lon, ch = _draw_locations(cfg.strategy, cfg.num_obs, channels, {c: f.domain for c, f in fields.items()}, rng)
        n = len(lat)
        value = np.full(n, np.nan)
        inside = np.zeros(n, bool)
        valid = np.empty(n, "datetime64[ns]")
        for c, f in fields.items():
            sel = ch == c
            value[sel] = f.sample(lat[sel], lon[sel])
            inside[sel] = f.contains(lat[sel], lon[sel])
            valid[sel] = np.datetime64(f.time, "ns")
        sigma = np.array([sigmas[c] for c in ch])
        if add_noise:
            value = value + rng.standard_normal(n) * sigma
        if bias:
            value = value + np.array([bias.get(c, 0.0) for c in ch])
        table = pd.DataFrame(dict(time=valid, lat=lat, lon=lon, channel=ch, value=value, sigma=sigma))[inside]
        table, c = quality_control(table, cfg.duplicate_policy, QCCounts(read=n, outside_domain=int((~inside).sum())))
        if table.empty:
            raise _empty_error(source._where(), time, c)
        sets.append(_to_set(table).with_heldout(cfg.heldout_fraction, rng))
        counts.append(c)
    return sets, counts


def _inputs(config: RunConfig, sets: list[ObservationSet], counts: list[QCCounts], truth: np.ndarray | None) -> RunInputs:
    total = QCCounts()
    for c in counts:
        total = total + c
    return RunInputs(config.analysis_times(), sets, truth, total, counts)


def _truth(config: RunConfig, layout: StateLayout) -> np.ndarray | None:
    path = config.observations.truth_path
    if path is None:
        return None
    return read_healpix_truth(
        path, list(layout.normalization.channels), config.analysis_times(), layout.grid, config.observations.time_tolerance_hours
    )


def _gridded_inputs(config: RunConfig, layout: StateLayout) -> RunInputs:
    channels = check_channels(config, layout)
    add_noise = bool(config.observations.add_noise)
    with open_source(config.observations.path) as source:
        sets, counts = _gridded_observations(config, source, channels, add_noise)
    return _inputs(config, sets, counts, _truth(config, layout))


def _station_inputs(config: RunConfig, layout: StateLayout) -> RunInputs:
    cfg = config.observations
    channels = check_channels(config, layout)
    sigmas = channel_sigma_map(config, channels)
    tables = open_stations(cfg.path, cfg.time_format, cfg.dayfirst)
    frames, ignored = tables.for_times(config.analysis_times(), channels, cfg.time_tolerance_hours)
    sets, counts = [], []
    for t, (time, df, n_other) in enumerate(zip(config.analysis_times(), frames, ignored)):
        rng = obs_rng(config.seed, t)
        df = df.copy()
        fallback = df["channel"].map(sigmas).to_numpy(np.float64)
        df["sigma"] = np.where(np.isnan(df["sigma"].to_numpy(np.float64)), fallback, df["sigma"].to_numpy(np.float64))
        if cfg.add_noise:
            df["value"] = df["value"].to_numpy() + rng.standard_normal(len(df)) * df["sigma"].to_numpy()
        clean, c = quality_control(df, cfg.duplicate_policy, QCCounts(read=len(df) + n_other, other_variable=n_other))
        keep = select_candidates(cfg.strategy, clean["lat"].to_numpy(), clean["lon"].to_numpy(), cfg.num_obs, rng)
        c.not_selected, c.kept = len(clean) - len(keep), len(keep)
        if len(keep) == 0:
            raise _empty_error(tables._where(), time, c)
        sets.append(_to_set(clean.iloc[keep]).with_heldout(cfg.heldout_fraction, rng))
        counts.append(c)
    return _inputs(config, sets, counts, _truth(config, layout))


def _synthetic_inputs(config: RunConfig, layout: StateLayout, truths: np.ndarray) -> RunInputs:
    from ensemble_da.obs.osse import generate_osse

    channels = check_channels(config, layout)
    add_noise = True if config.observations.add_noise is None else config.observations.add_noise
    with tempfile.TemporaryDirectory(prefix="ensemble_da_osse_") as tmp:
        files = generate_osse(config, truths, layout.grid, list(layout.normalization.channels), tmp)
        with GriddedSource.open([str(p) for p in files.era5]) as source:
            bias = config.observations.bias
            sets, counts = _gridded_observations(config, source, channels, add_noise, bias and bias.truth)
        truth = read_healpix_truth(
            str(files.truth), list(layout.normalization.channels), config.analysis_times(), layout.grid, 0.0
        )
    return _inputs(config, sets, counts, truth)
