"""ERA5 gridded readers (DESIGN.md §3, §5): every common layout normalised to one internal form.

Accepted layouts (NetCDF 3 or 4 through netCDF4, zarr through zarr; several files at once):
- CDS NetCDF, old layout: dims `time`, `level`, `latitude`, `longitude`, often packed int16
  with `scale_factor`/`add_offset` (unpacked by xarray's CF decoding), NETCDF3_64BIT_OFFSET;
- CDS NetCDF, new layout: `valid_time`, `pressure_level`, with `number` (ensemble member, a
  scalar or a size-1 dim) and `expver` (a coordinate, or a dim whose ERA5/ERA5T halves are
  merged: the first finite value along it wins);
- single-level fields (`t2m`, `u10`, `v10`, `msl`, `sp`, `sst`, `tcwv`) and pressure-level
  fields (`t`, `u`, `v`, `z`, `q`, `r`, `w`), by ERA5 short name, ARCO long name
  (`temperature`, `2m_temperature`, dim `level`) or an alias (see `variables.py`);
- latitude descending or ascending, longitude 0..360 or −180..180, on a regular or any
  rectilinear grid (1-D strictly monotonic coordinates).

Internal form: one `GriddedVariable` per (file, channel): a lazily indexed DataArray with dims
(time, lat, lon), latitude ascending, longitude ascending in [0, 360), plus the affine unit
conversion to the channel's physical units. Nothing downstream knows which layout a file had.
A field is read one time slice at a time (`LatLonField`) and sampled bilinearly on the lat/lon
grid (periodic in longitude when the grid is global), or regridded to HEALPix by the same
bilinear interpolation at the cell centres.
"""

from __future__ import annotations

import glob
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import xarray as xr

from ensemble_da.channels import channel_info
from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.variables import era5_variable, lookup_file_variable, unit_conversion

__all__ = [
    "expand_paths",
    "open_dataset",
    "normalize_dataset",
    "GriddedVariable",
    "LatLonField",
    "GriddedSource",
    "format_time",
]

TIME_NAMES = ("valid_time", "time")
LEVEL_NAMES = ("pressure_level", "level", "isobaricInhPa", "plev", "lev")
LAT_NAMES = ("latitude", "lat")
LON_NAMES = ("longitude", "lon")
GRIB_SUFFIXES = (".grib", ".grb", ".grib1", ".grib2", ".grb2")


def format_time(t: np.datetime64) -> str:
    """An analysis time as `YYYY-MM-DDTHH:MM` for messages."""
    return np.datetime_as_string(np.datetime64(t, "m"))


def expand_paths(spec: str | Sequence[str] | None, key: str = "observations.path") -> list[str]:
    """Expand a file, a list of files or glob patterns into existing paths, in the order given.

    Raises InputError for a missing key, a glob that matches nothing or a file that does not exist.
    Remote URLs (`scheme://...`) are passed through unchanged.
    """
    if spec is None or (not isinstance(spec, str) and len(spec) == 0):
        raise InputError(f"{key} is not set: give a file, a list of files or a glob")
    items = [spec] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in items:
        item = os.path.expanduser(str(item))
        if "://" in item:
            out.append(item)
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item))
            if not matches:
                raise InputError(f"{key}: no file matches {item!r}")
            out.extend(matches)
        elif not os.path.exists(item):
            raise InputError(f"{key}: file not found: {item}")
        else:
            out.append(item)
    return list(dict.fromkeys(out))


def _is_zarr(path: str) -> bool:
    p = path.rstrip("/")
    if "://" in p:  # remote stores (e.g. gs://.../ARCO-ERA5 ...zarr-v3) are zarr unless named .nc
        return not p.lower().endswith((".nc", ".nc4", ".netcdf"))
    return p.endswith(".zarr") or (os.path.isdir(p) and any(
        os.path.exists(os.path.join(p, m)) for m in ("zarr.json", ".zgroup", ".zmetadata", ".zattrs")
    ))


def open_dataset(path: str) -> xr.Dataset:
    """Open a NetCDF (3 or 4) file or a zarr store lazily; InputError if it cannot be read."""
    if path.lower().endswith(GRIB_SUFFIXES):
        raise InputError(f"{path}: GRIB files are not read; download NetCDF from the CDS or convert (e.g. cdo -f nc4 copy)")
    if os.path.isdir(path) and not _is_zarr(path):
        raise InputError(f"{path}: a directory that is not a zarr store")
    engine = "zarr" if _is_zarr(path) else "netcdf4"
    try:
        with warnings.catch_warnings():
            # ARCO stores are consolidated, ours may not be: either way is fine here.
            warnings.filterwarnings("ignore", message=".*consolidated metadata.*", category=RuntimeWarning)
            return xr.open_dataset(path, engine=engine, decode_timedelta=False)
    except Exception as exc:  # noqa: BLE001 - any backend failure is a bad input file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        kind = "a zarr store" if engine == "zarr" else "NetCDF"
        raise InputError(f"{path}: cannot read as {kind}: {first}") from None


def _find(ds: xr.Dataset, names: Sequence[str]) -> str | None:
    for n in names:
        if n in ds.variables or n in ds.dims:
            return n
    return None


def _dims_text(ds: xr.Dataset) -> str:
    return ", ".join(f"{k}={v}" for k, v in ds.sizes.items())


@dataclass(frozen=True)
class GriddedVariable:
    """One channel in one file, in the internal form.

    Parameters
    ----------
    channel : str
        Channel name (`T850`, `tas`).
    path : str
        The file it was read from.
    name : str
        The variable name in the file (`t`, `temperature`, `t2m`).
    data : xarray.DataArray
        Lazily indexed, dims (time, lat, lon); lat ascending, lon ascending in [0, 360), in
        the file's units (`scale`, `offset` convert to the channel's units).
    scale, offset : float
        Physical value = file value · scale + offset.
    """

    channel: str
    path: str
    name: str
    data: xr.DataArray
    scale: float = 1.0
    offset: float = 0.0

    @property
    def times(self) -> np.ndarray:
        return self.data["time"].values

    def field(self, index: int) -> "LatLonField":
        """The field at time index `index`, loaded as float64 physical values."""
        da = self.data.isel(time=index)
        values = np.asarray(da.values, dtype=np.float64) * self.scale + self.offset
        return LatLonField(
            lat=self.data["lat"].values.astype(np.float64),
            lon=self.data["lon"].values.astype(np.float64),
            values=values,
            time=self.times[index],
            channel=self.channel,
            path=self.path,
        )


def normalize_dataset(ds: xr.Dataset, path: str) -> tuple[list[GriddedVariable], list[str]]:
    """Normalise one opened ERA5 dataset into `GriddedVariable`s.

    Returns the variables for every channel the file holds and the names of data variables that
    do not map to a channel (for error messages). Raises InputError for grids it cannot read.
    """
    lat_name, lon_name = _find(ds, LAT_NAMES), _find(ds, LON_NAMES)
    if lat_name is None or lon_name is None:
        raise InputError(
            f"{path}: cannot read the grid: no latitude/longitude coordinates (dims: {_dims_text(ds)}); "
            "expected a regular lat/lon grid"
        )
    for name in (lat_name, lon_name):
        if ds[name].ndim != 1 or ds[name].dims[0] != name:
            raise InputError(
                f"{path}: cannot read the grid: {name!r} is not a lat/lon axis (dims {ds[name].dims}); curvilinear, "
                "reduced Gaussian and unstructured grids are not read: regrid to a regular lat/lon grid first"
            )
    ds = ds.rename({lat_name: "lat", lon_name: "lon"}) if (lat_name, lon_name) != ("lat", "lon") else ds
    lat = np.asarray(ds["lat"].values, dtype=np.float64)
    lon = np.asarray(ds["lon"].values, dtype=np.float64)
    if lat.size < 2 or lon.size < 2:
        raise InputError(f"{path}: cannot read the grid: need at least 2 latitudes and 2 longitudes, got {lat.size}x{lon.size}")
    if not (np.all(np.isfinite(lat)) and np.all(np.isfinite(lon))):
        raise InputError(f"{path}: cannot read the grid: non-finite latitude or longitude values")
    if np.abs(lat).max() > 90.0 + 1e-6:
        raise InputError(f"{path}: latitude out of range [-90, 90]: {lat[np.argmax(np.abs(lat))]:g}")
    dlat = np.diff(lat)
    if not (np.all(dlat > 0) or np.all(dlat < 0)):
        raise InputError(f"{path}: cannot read the grid: latitude is not strictly monotonic")

    # Time: new CDS `valid_time`, old CDS / ARCO `time`; a scalar time becomes a length-1 dim.
    time_name = next((n for n in TIME_NAMES if n in ds.dims), None)
    if time_name is None:
        time_name = next((n for n in TIME_NAMES if n in ds.variables and ds[n].ndim == 0), None)
        if time_name is None:
            raise InputError(f"{path}: no time coordinate (looked for {', '.join(TIME_NAMES)}; dims: {_dims_text(ds)})")
        ds = ds.expand_dims(time_name)
    other = [n for n in TIME_NAMES if n != time_name and n in ds.variables]
    ds = ds.drop_vars(other)
    if time_name != "time":
        ds = ds.rename({time_name: "time"})
    if not np.issubdtype(ds["time"].dtype, np.datetime64):
        raise InputError(f"{path}: time coordinate is not a CF-decodable date (dtype {ds['time'].dtype}, units {ds['time'].attrs.get('units')!r})")

    # Ensemble member and ERA5/ERA5T experiment version.
    if "number" in ds.dims:
        if ds.sizes["number"] != 1:
            raise InputError(f"{path}: has {ds.sizes['number']} ensemble members (dim 'number'); select one member first")
        ds = ds.isel(number=0)
    if "expver" in ds.dims:
        merged = ds.isel(expver=0)
        for k in range(1, ds.sizes["expver"]):
            merged = merged.fillna(ds.isel(expver=k))
        ds = merged
    ds = ds.drop_vars([n for n in ("number", "expver") if n in ds.variables])

    # Pressure levels in hPa under the name `level`.
    level_name = _find(ds, LEVEL_NAMES)
    if level_name is not None:
        if level_name != "level":
            ds = ds.rename({level_name: "level"})
        units = str(ds["level"].attrs.get("units", "")).strip().lower()
        if units in ("pa", "pascal") or (units == "" and float(np.max(ds["level"].values)) > 2000.0):
            ds = ds.assign_coords(level=ds["level"] / 100.0)

    # Longitude to [0, 360) ascending (a grid with both -180 and 180 keeps one copy); lat ascending.
    ds = ds.assign_coords(lon=np.mod(lon, 360.0))
    _, first = np.unique(ds["lon"].values, return_index=True)
    ds = ds.isel(lon=np.sort(first)).sortby("lon")
    if dlat[0] < 0:
        ds = ds.isel(lat=slice(None, None, -1))

    out: list[GriddedVariable] = []
    unknown: list[str] = []
    for name, var in ds.data_vars.items():
        row = lookup_file_variable(str(name))
        for attr in ("GRIB_shortName", "short_name", "shortName"):
            if row is None and attr in var.attrs:
                row = lookup_file_variable(str(var.attrs[attr]))
        if row is None or "lat" not in var.dims or "lon" not in var.dims or "time" not in var.dims:
            unknown.append(str(name))
            continue
        extra = [d for d in var.dims if d not in ("time", "lat", "lon", "level")]
        if any(var.sizes[d] != 1 for d in extra):
            unknown.append(str(name))
            continue
        var = var.isel({d: 0 for d in extra})
        if row.pressure_level:
            if "level" in var.dims:
                levels = [float(v) for v in var["level"].values]
            elif "level" in var.coords and var["level"].ndim == 0:
                levels = [float(var["level"].values)]
                var = var.expand_dims("level")
            else:
                unknown.append(str(name))
                continue
            for lev in levels:
                channel = f"{row.key}{int(round(lev))}"
                out.append(_make(channel, path, str(name), var.sel(level=lev).drop_vars("level")))
        else:
            if "level" in var.dims:
                if var.sizes["level"] != 1:
                    unknown.append(str(name))
                    continue
                var = var.isel(level=0)
            var = var.drop_vars("level", errors="ignore")
            out.append(_make(row.key, path, str(name), var))
    return out, unknown


def _make(channel: str, path: str, name: str, var: xr.DataArray) -> GriddedVariable:
    expected = channel_info(channel).units
    scale, offset = unit_conversion(var.attrs.get("units"), expected, f"{path}: variable {name!r}")
    return GriddedVariable(channel, path, name, var.transpose("time", "lat", "lon"), scale, offset)


@dataclass(frozen=True)
class LatLonField:
    """One 2-D field on a rectilinear lat/lon grid.

    Parameters
    ----------
    lat : ndarray, shape (nlat,)
        Latitudes in degrees, strictly ascending.
    lon : ndarray, shape (nlon,)
        Longitudes in degrees, strictly ascending in [0, 360).
    values : ndarray, shape (nlat, nlon)
        Physical values (NaN where undefined, e.g. SST over land).
    time : datetime64
        Valid time of the field.
    """

    lat: np.ndarray
    lon: np.ndarray
    values: np.ndarray
    time: np.datetime64
    channel: str = ""
    path: str = ""

    @property
    def periodic(self) -> bool:
        """True when the longitudes cover the whole circle (last spacing closes the gap to 360)."""
        gap = 360.0 - (self.lon[-1] - self.lon[0])
        return bool(gap <= 1.5 * np.max(np.diff(self.lon)) + 1e-9)

    def _extended(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.periodic:
            return self.lon, self.values
        lon = np.concatenate([[self.lon[-1] - 360.0], self.lon, [self.lon[0] + 360.0]])
        values = np.concatenate([self.values[:, -1:], self.values, self.values[:, :1]], axis=1)
        return lon, values

    def contains(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Whether each point lies inside the grid (the bilinear stencil exists), (n,) bool."""
        lat = np.asarray(lat, np.float64)
        lon = np.mod(np.asarray(lon, np.float64), 360.0)
        inside = (lat >= self.lat[0] - 1e-9) & (lat <= self.lat[-1] + 1e-9)
        if not self.periodic:
            inside &= (lon >= self.lon[0] - 1e-9) & (lon <= self.lon[-1] + 1e-9)
        return inside

    def sample(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Bilinear interpolation in (lat, lon) degrees at points, (n,) float64; NaN outside.

        A NaN at any of the 4 surrounding grid points gives NaN (QC drops it).
        """
        lat = np.asarray(lat, np.float64)
        lon = np.mod(np.asarray(lon, np.float64), 360.0)
        glon, values = self._extended()
        out = np.full(lat.shape, np.nan)
        inside = self.contains(lat, lon)
        if not inside.any():
            return out
        la, lo = np.clip(lat[inside], self.lat[0], self.lat[-1]), lon[inside]
        if not self.periodic:
            lo = np.clip(lo, glon[0], glon[-1])
        i = np.clip(np.searchsorted(self.lat, la, side="right") - 1, 0, self.lat.size - 2)
        j = np.clip(np.searchsorted(glon, lo, side="right") - 1, 0, glon.size - 2)
        ty = (la - self.lat[i]) / (self.lat[i + 1] - self.lat[i])
        tx = (lo - glon[j]) / (glon[j + 1] - glon[j])
        out[inside] = (
            (1 - ty) * (1 - tx) * values[i, j]
            + (1 - ty) * tx * values[i, j + 1]
            + ty * (1 - tx) * values[i + 1, j]
            + ty * tx * values[i + 1, j + 1]
        )
        return out

    def to_healpix(self, grid: HealpixGrid) -> np.ndarray:
        """Bilinear values at the HEALPix NEST cell centres, (cell,) float64 (NaN outside)."""
        lon, lat = grid.lonlat
        return self.sample(lat, lon)


class GriddedSource:
    """All channels of a set of ERA5 files (any layout), looked up by channel and time.

    When several files hold the same channel at the same time, the first file (in the order
    given) wins. Use `GriddedSource.open(paths)`; close with `close()` or a `with` block.
    """

    def __init__(self, variables: list[GriddedVariable], unknown: dict[str, list[str]], datasets: list[xr.Dataset]):
        self.variables = variables
        self.unknown = unknown
        self._datasets = datasets
        self.paths = list(unknown)

    @classmethod
    def open(cls, paths: Sequence[str]) -> "GriddedSource":
        """Open and normalise every file in `paths` (already expanded, see `expand_paths`)."""
        variables: list[GriddedVariable] = []
        unknown: dict[str, list[str]] = {}
        datasets = []
        for path in paths:
            ds = open_dataset(path)
            datasets.append(ds)
            found, skipped = normalize_dataset(ds, path)
            variables.extend(found)
            unknown[path] = skipped
        return cls(variables, unknown, datasets)

    def close(self) -> None:
        for ds in self._datasets:
            ds.close()

    def __enter__(self) -> "GriddedSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def channels(self) -> list[str]:
        """Channels found in the files, in first-seen order."""
        return list(dict.fromkeys(v.channel for v in self.variables))

    def _where(self) -> str:
        return self.paths[0] if len(self.paths) == 1 else f"{len(self.paths)} files ({self.paths[0]}, ...)"

    def require(self, channels: Sequence[str]) -> None:
        """InputError naming the first requested channel the files lack, with what they contain."""
        have = set(self.channels)
        for ch in channels:
            if ch in have:
                continue
            row, level = era5_variable(ch)
            want = f"ERA5 {row.short_name!r}/{row.arco_name!r}" + (f" at {level} hPa" if level is not None else "")
            other = sorted({n for names in self.unknown.values() for n in names})
            extra = f"; other variables: {other}" if other else ""
            raise InputError(
                f"{self._where()}: no data for channel {ch!r} ({want}); the file(s) contain channels "
                f"{self.channels}{extra}"
            )

    def nearest(self, channel: str, time: np.datetime64, tolerance_hours: float) -> tuple[GriddedVariable, int]:
        """The variable and time index nearest to `time` for `channel`, within the tolerance.

        Raises InputError when the nearest valid time is more than `tolerance_hours` away.
        """
        self.require([channel])
        t = np.datetime64(time, "ns")
        best: tuple[float, GriddedVariable, int] | None = None
        for var in self.variables:
            if var.channel != channel:
                continue
            times = var.times.astype("datetime64[ns]")
            dt = np.abs((times - t).astype("timedelta64[s]").astype(np.float64)) / 3600.0
            k = int(np.argmin(dt))
            if best is None or dt[k] < best[0]:
                best = (float(dt[k]), var, k)
        assert best is not None
        if best[0] > tolerance_hours:
            nearest = format_time(best[1].times[best[2]])
            raise InputError(
                f"{self._where()}: no {channel} data within {tolerance_hours:g} h of analysis time "
                f"{format_time(t)} (nearest: {nearest})"
            )
        return best[1], best[2]

    def field(self, channel: str, time: np.datetime64, tolerance_hours: float) -> LatLonField:
        """The `channel` field at the valid time nearest to `time` (within the tolerance)."""
        var, k = self.nearest(channel, time, tolerance_hours)
        return var.field(k)

    def to_healpix(
        self, channels: Sequence[str], times: Sequence[np.datetime64], grid: HealpixGrid, tolerance_hours: float
    ) -> np.ndarray:
        """Regrid to HEALPix NEST (bilinear at cell centres): float32 (time, channel, cell).

        Raises InputError when the grid does not cover every cell (a regional file).
        """
        out = np.empty((len(times), len(channels), grid.npix), np.float32)
        for i, t in enumerate(times):
            for j, ch in enumerate(channels):
                f = self.field(ch, t, tolerance_hours)
                values = f.to_healpix(grid)
                lon, lat = grid.lonlat
                if not f.contains(lat, lon).all():
                    raise InputError(f"{f.path}: {ch} does not cover the globe, cannot serve as HEALPix truth")
                out[i, j] = values
        return out


def read_healpix_truth(
    path: str, channels: Sequence[str], times: Sequence[np.datetime64], grid: HealpixGrid, tolerance_hours: float
) -> np.ndarray:
    """Verifying truth, float32 (time, channel, cell) physical units, from `path`.

    A HEALPix file (dims time, channel, cell with `cell_ids`, NEST, the run's nside; as written
    by the OSSE generator) is read as is; any ERA5 gridded file is regridded (bilinear).
    """
    path = expand_paths(path, "observations.truth_path")[0]
    ds = open_dataset(path)
    try:
        if "cell" in ds.dims:
            return _read_healpix(ds, path, channels, times, grid, tolerance_hours)
        variables, unknown = normalize_dataset(ds, path)
        src = GriddedSource(variables, {path: unknown}, [])
        src.require(channels)
        return src.to_healpix(channels, times, grid, tolerance_hours)
    finally:
        ds.close()


def _read_healpix(
    ds: xr.Dataset, path: str, channels: Sequence[str], times: Sequence[np.datetime64], grid: HealpixGrid, tol: float
) -> np.ndarray:
    if "truth" not in ds.data_vars:
        raise InputError(f"{path}: a HEALPix file needs a variable 'truth' (time, channel, cell); found {list(ds.data_vars)}")
    scheme = str(ds["cell_ids"].attrs.get("indexing_scheme", "nested")) if "cell_ids" in ds.variables else "nested"
    if scheme != "nested":
        raise InputError(f"{path}: cell_ids indexing_scheme is {scheme!r}, expected 'nested'")
    if ds.sizes["cell"] != grid.npix:
        raise InputError(f"{path}: {ds.sizes['cell']} HEALPix cells, the run grid (nside {grid.nside}) has {grid.npix}")
    have = [str(c) for c in ds["channel"].values]
    missing = [c for c in channels if c not in have]
    if missing:
        raise InputError(f"{path}: no truth for channel {missing[0]!r}; the file contains channels {have}")
    ftimes = ds["time"].values.astype("datetime64[ns]")
    out = np.empty((len(times), len(channels), grid.npix), np.float32)
    for i, t in enumerate(times):
        dt = np.abs((ftimes - np.datetime64(t, "ns")).astype("timedelta64[s]").astype(np.float64)) / 3600.0
        k = int(np.argmin(dt))
        if dt[k] > tol:
            raise InputError(f"{path}: no truth within {tol:g} h of analysis time {format_time(t)} (nearest: {format_time(ftimes[k])})")
        sel = ds["truth"].isel(time=k).sel(channel=list(channels)).transpose("channel", "cell")
        out[i] = np.asarray(sel.values, np.float32)
    return out


def open_source(spec: str | Sequence[str] | None) -> GriddedSource:
    """`GriddedSource.open(expand_paths(spec))` — the entry point for `observations.path`."""
    return GriddedSource.open(expand_paths(spec))


def write_healpix_truth(path: str | Path, truth: np.ndarray, times: Sequence[np.datetime64], channels: Sequence[str], grid: HealpixGrid) -> None:
    """Write a HEALPix truth (time, channel, cell) float32 as zarr (dims and cell_ids as DESIGN.md §7)."""
    ds = xr.Dataset(
        {"truth": (("time", "channel", "cell"), np.asarray(truth, np.float32))},
        coords={
            "time": np.asarray(times, "datetime64[ns]"),
            "channel": np.asarray(list(channels), dtype=object),
            "cell_ids": ("cell", grid.cell_ids, {"grid_name": "healpix", "level": grid.level, "indexing_scheme": "nested"}),
        },
        attrs={"nside": grid.nside},
    )
    ds.to_zarr(str(path), mode="w", zarr_format=3, consolidated=False)
