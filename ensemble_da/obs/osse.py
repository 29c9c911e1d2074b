"""The OSSE generator (DESIGN.md §5, §7; `ensemble-da osse` and `observations.source: synthetic`).

The caller draws one truth per analysis time from the prior (`ensemble_da.truth.draw_truths`, on
the stream SeedSequence([seed, t, TRUTH_STREAM]), never a member's, DESIGN.md §3); this module
knows nothing of priors and writes each truth twice:
- as ERA5-layout NetCDF on a regular lat/lon grid, the layout the CDS delivers today
  (`valid_time`, `pressure_level`, `latitude` 90 → −90, `longitude` 0 → 360, scalar `number`,
  `expver` per time, netCDF4 zlib-compressed float32, ERA5 short names and units): one file for
  pressure-level channels, one for single-level channels. The truth is carried from HEALPix to
  the lat/lon points by the run's bilinear HEALPix interpolation, so a run reads its
  observations through exactly the reader real ERA5 files go through;
- as the HEALPix truth (`truth.zarr`: `truth(time, channel, cell)` float32, NEST `cell_ids`)
  for verification.
`config.yaml` beside them is the run config that assimilates these files (`source: era5`,
`truth_path`, `add_noise: true`).
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
import yaml

from ensemble_da.channels import channel_info
from ensemble_da.config import RunConfig
from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.era5 import write_healpix_truth
from ensemble_da.obs.variables import era5_variable

__all__ = ["OsseFiles", "osse_grid_deg", "healpix_to_latlon", "write_era5_netcdf", "generate_osse", "write_osse_dir"]

PRESSURE_FILE = "era5_pressure_levels.nc"
SINGLE_FILE = "era5_single_levels.nc"
TRUTH_FILE = "truth.zarr"
CONFIG_FILE = "config.yaml"


@dataclass(frozen=True)
class OsseFiles:
    """What the generator wrote: the ERA5-layout files, the HEALPix truth, the run config."""

    era5: tuple[Path, ...]
    truth: Path
    config: Path


def osse_grid_deg(nside: int, explicit: float | None = None) -> float:
    """Lat/lon spacing (degrees) of the OSSE file: `explicit`, else the coarsest of 2/1/0.5/0.25
    at most a quarter of the HEALPix cell size (so the lat/lon interpolation adds little error)."""
    if explicit is not None:
        return float(explicit)
    cell_deg = np.rad2deg(np.sqrt(4 * np.pi / (12 * nside * nside)))
    return next((d for d in (2.0, 1.0, 0.5, 0.25) if d <= cell_deg / 4), 0.25)


def healpix_to_latlon(fields: np.ndarray, grid: HealpixGrid, deg: float,
                      dtype: np.dtype | type = np.float64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HEALPix NEST fields (..., cell) → regular lat/lon by bilinear HEALPix interpolation.

    Returns lat (nlat,) from 90 down to −90, lon (nlon,) from 0 up to 360 − deg, and values
    (..., nlat, nlon) of `dtype` (computed in float64, one field at a time: the temporaries are
    one field's 4 neighbours, not every time's, so an OSSE of many times fits).
    """
    nlat = int(round(180.0 / deg)) + 1
    nlon = int(round(360.0 / deg))
    lat = np.linspace(90.0, -90.0, nlat)
    lon = np.arange(nlon) * (360.0 / nlon)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    pix, w = grid.interp_weights(la.ravel(), lo.ravel())
    fields = np.asarray(fields)
    flat = fields.reshape(-1, fields.shape[-1])
    values = np.empty((flat.shape[0], nlat * nlon), dtype=dtype)
    for i, field in enumerate(flat):
        values[i] = (np.asarray(field, np.float64)[pix] * w).sum(-1)
    return lat, lon, values.reshape(*fields.shape[:-1], nlat, nlon)


def write_era5_netcdf(
    path: str | Path, times: np.ndarray, channels: list[str], values: np.ndarray, lat: np.ndarray, lon: np.ndarray
) -> None:
    """Write fields (time, channel, lat, lon) in the new CDS layout: pressure-level channels must
    all be pressure-level (one variable per ERA5 short name, dim `pressure_level`) or all single-level."""
    rows = [era5_variable(c) for c in channels]
    pressure = rows[0][1] is not None
    coords: dict = {
        "valid_time": ("valid_time", np.asarray(times, "datetime64[ns]")),
        "latitude": ("latitude", lat, {"units": "degrees_north", "standard_name": "latitude"}),
        "longitude": ("longitude", lon, {"units": "degrees_east", "standard_name": "longitude"}),
        "number": ((), 0, {"long_name": "ensemble member numerical id"}),
        "expver": ("valid_time", np.array(["0001"] * len(times), dtype=object)),
    }
    data_vars = {}
    if pressure:
        levels = sorted({lev for _, lev in rows}, reverse=True)
        coords["pressure_level"] = ("pressure_level", np.asarray(levels, np.float64), {"units": "hPa"})
        for row in dict.fromkeys(r for r, _ in rows):
            arr = np.full((len(times), len(levels), len(lat), len(lon)), np.nan, np.float32)
            for j, (r, lev) in enumerate(rows):
                if r is row:
                    arr[:, levels.index(lev)] = values[:, j]
            info = channel_info(f"{row.key}{levels[0]}")
            data_vars[row.short_name] = (
                ("valid_time", "pressure_level", "latitude", "longitude"),
                arr,
                {"units": info.units, "long_name": row.arco_name.replace("_", " ").capitalize()},
            )
    else:
        for j, (row, _) in enumerate(rows):
            data_vars[row.short_name] = (
                ("valid_time", "latitude", "longitude"),
                values[:, j].astype(np.float32),
                {"units": channel_info(row.key).units, "long_name": row.arco_name.replace("_", " ").capitalize()},
            )
    ds = xr.Dataset(data_vars, coords=coords, attrs={"Conventions": "CF-1.7", "institution": "ensemble_da OSSE (truth drawn from the prior)"})
    # One time per chunk: a run reads one time at a time, and netCDF4's default chunks span many
    # times, so each read would decompress them all (quadratic in the number of times).
    encoding = {name: {"zlib": True, "complevel": 1, "dtype": "float32", "_FillValue": np.float32(np.nan),
                       "chunksizes": (1, *data_vars[name][1].shape[1:])} for name in data_vars}
    encoding["valid_time"] = {"units": "seconds since 1970-01-01", "calendar": "proleptic_gregorian", "dtype": "int64"}
    ds.to_netcdf(path, engine="netcdf4", format="NETCDF4", encoding=encoding)


def generate_osse(
    config: RunConfig,
    truth: np.ndarray,
    grid: HealpixGrid,
    channels: list[str],
    out_dir: str | Path,
    final_dir: str | Path | None = None,
) -> OsseFiles:
    """Write the truths (time, channel, cell; physical units, NEST) as ERA5-layout files,
    `truth.zarr` and `config.yaml` into `out_dir`.

    The paths in `config.yaml` (and the returned ones) point into `final_dir` (default `out_dir`),
    where the directory will live once moved into place.
    """
    out = Path(out_dir)
    final = Path(final_dir if final_dir is not None else out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    channels = list(channels)
    times = config.analysis_times()
    if truth.shape != (len(times), len(channels), grid.npix):
        raise ValueError(f"truth has shape {truth.shape}, expected {(len(times), len(channels), grid.npix)}")
    # float32: what the files hold (the values are cast there anyway), a quarter of float64 per time.
    lat, lon, values = healpix_to_latlon(truth, grid, osse_grid_deg(grid.nside, config.observations.osse_grid_deg),
                                         np.float32)
    pressure = [j for j, c in enumerate(channels) if channel_info(c).level is not None]
    single = [j for j, c in enumerate(channels) if channel_info(c).level is None]
    files = []
    for name, idx in ((PRESSURE_FILE, pressure), (SINGLE_FILE, single)):
        if idx:
            write_era5_netcdf(out / name, times, [channels[j] for j in idx], values[:, idx], lat, lon)
            files.append(final / name)
    write_healpix_truth(out / TRUTH_FILE, truth, times, channels, grid)
    run = config.model_dump(mode="json")
    run["observations"].update(
        source="era5", path=[str(f) for f in files], truth_path=str(final / TRUTH_FILE), add_noise=True
    )
    (out / CONFIG_FILE).write_text(
        "# Assimilates the OSSE files beside it (written by `ensemble-da osse`).\n"
        + yaml.safe_dump(run, sort_keys=False)
    )
    return OsseFiles(tuple(files), final / TRUTH_FILE, final / CONFIG_FILE)


def write_osse_dir(config: RunConfig, truth: np.ndarray, grid: HealpixGrid, channels: list[str], out_dir: str | Path) -> OsseFiles:
    """`generate_osse` into a fresh `out_dir`, all or nothing.

    An existing non-empty `out_dir` is an InputError and is left untouched; the files are written
    to a sibling temporary directory that is renamed into place only when complete.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {out}: exists and is not empty; choose a new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files = generate_osse(config, truth, grid, channels, tmp, final_dir=out)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files
