"""ERA5 gridded readers (DESIGN.md §3, §5): every common layout normalised to one internal form.

Files are opened by their content (`formats.py`: NetCDF 3/4, zarr, GRIB through cfgrib, zip
archives of those), then each dataset goes through the same normalising steps, one per aspect
of the layout, before anything downstream sees it:
1. `_normalize_grid`: latitude/longitude found (`latitude`/`lat`, `longitude`/`lon`), latitude
   ascending; longitude made one ascending, contiguous run starting in [0, 360): a global grid
   starts at its first longitude ≥ 0 and is periodic; a regional grid (any grid that does not
   close the circle, in either longitude convention, wherever its seam lies, e.g. a −20…40 box
   across Greenwich or a 170…230 box across the date line) starts after its largest gap and
   keeps its values above 360 where it wraps (340…400), so no value is ever interpolated across
   the hole. Points outside it are counted as `qc/outside_domain` by the caller.
2. `_normalize_time`: one dim `time` holding VALID times (DESIGN.md §3): new CDS `valid_time`;
   analysis files' `time`; forecast files (cfgrib: reference `time`, `step`, `valid_time(time,
   step)`; or `time` + `step` without `valid_time`) are flattened over (reference, step), and when
   several pairs are valid at the same time the shortest step (the latest forecast) is kept.
3. `_normalize_members`: `number` (ensemble member, scalar or size-1 dim) and `expver` (a
   coordinate, or a dim whose ERA5/ERA5T halves are merged: the first finite value wins).
4. `_normalize_levels`: pressure levels in hPa under `level` (`pressure_level`, `isobaricInhPa`,
   `plev` in Pa, ...).
5. `_variables`: single-level (`t2m`, `u10`, `v10`, `msl`, `sp`, `sst`, `tcwv`) and pressure-level
   (`t`, `u`, `v`, `z`, `q`, `r`, `w`, and geopotential height `gh`) fields, by ERA5 short name,
   ARCO long name, GRIB short name or alias (`variables.py`), each with the conversion from its
   `units` attribute to the channel's units.

Internal form: one `GriddedVariable` per (file, channel): a lazily indexed DataArray with dims
(time, lat, lon), as above, plus the affine unit conversion. Nothing downstream knows which
layout a file had. A field is read one time slice at a time (`LatLonField`) and sampled
bilinearly on the lat/lon grid, or regridded to HEALPix by the same interpolation.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from ensemble_da.channels import channel_info
from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.formats import open_datasets
from ensemble_da.obs.strategies import Domain
from ensemble_da.obs.variables import era5_variable, implied_units, lookup_file_variable, unit_conversion

_LOG = logging.getLogger("ensemble_da.obs")
# The time coordinate's attribute that keeps a non-standard CF calendar the file's dates were read from.
CALENDAR_ATTR = "ensemble_da_calendar"
CALENDAR_FIX = ("use analysis times that exist in that calendar, or convert the file to the standard calendar "
                "first (xarray: ds.convert_calendar('standard', align_on='date'))")

__all__ = [
    "expand_paths",
    "normalize_dataset",
    "GriddedVariable",
    "LatLonField",
    "GriddedSource",
    "format_time",
    "is_periodic",
    "contiguous_longitudes",
]

LEVEL_NAMES = ("pressure_level", "level", "isobaricInhPa", "plev", "lev")
LAT_NAMES = ("latitude", "lat")
LON_NAMES = ("longitude", "lon")
_STEP_UNITS = {"days": "D", "day": "D", "d": "D", "hours": "h", "hour": "h", "h": "h",
               "minutes": "min", "minute": "min", "min": "min", "seconds": "s", "second": "s", "s": "s"}


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


def _find(ds: xr.Dataset, names: Sequence[str]) -> str | None:
    for n in names:
        if n in ds.variables or n in ds.dims:
            return n
    return None


def _dims_text(ds: xr.Dataset) -> str:
    return ", ".join(f"{k}={v}" for k, v in ds.sizes.items())


def is_periodic(lon: np.ndarray) -> bool:
    """Whether ascending longitudes (degrees, span < 360) close the circle: the gap from the last
    back to the first (+360) is at most 1.5 times the largest spacing inside the grid."""
    lon = np.asarray(lon, np.float64)
    gap = 360.0 - (lon[-1] - lon[0])
    return bool(gap <= 1.5 * np.max(np.diff(lon)) + 1e-9)


def contiguous_longitudes(lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order and values making longitudes (any convention and order) one ascending contiguous run.

    Returns `order` (indices into `lon`, one per distinct longitude modulo 360) and `values`
    (strictly ascending, `values[0]` in [0, 360), `values[-1] < values[0] + 360`): a periodic
    grid starts at its smallest longitude in [0, 360); any other grid starts after its largest
    gap, so a box across Greenwich (−20…40) becomes 340…400 and its hole stays outside it.
    """
    wrapped = np.mod(np.asarray(lon, np.float64), 360.0)
    distinct, first = np.unique(wrapped, return_index=True)  # a grid with both −180 and 180 keeps one
    start = 0
    if distinct.size > 1:
        gaps = np.diff(np.append(distinct, distinct[0] + 360.0))
        seam = (int(np.argmax(gaps)) + 1) % distinct.size
        run = distinct[seam] + np.mod(np.roll(distinct, -seam) - distinct[seam], 360.0)
        if not is_periodic(run):
            start = seam
    order = np.roll(first, -start)
    values = distinct[start] + np.mod(wrapped[order] - distinct[start], 360.0)
    return order, values


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
        Lazily indexed, dims (time, lat, lon); `time` the valid times, lat ascending, lon one
        ascending run from [0, 360) (`contiguous_longitudes`), in the file's units (`scale`,
        `offset` convert to the channel's units).
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
    """Normalise one opened ERA5 dataset (any layout in the module docstring) into `GriddedVariable`s.

    Returns the variables for every channel the file holds and the names of data variables that
    do not map to a channel (for error messages). Raises InputError for grids, times and units
    it cannot read.
    """
    ds = _normalize_grid(ds, path)
    ds = _normalize_time(ds, path)
    ds = _normalize_members(ds, path)
    ds = _normalize_levels(ds)
    return _variables(ds, path)


def _normalize_grid(ds: xr.Dataset, path: str) -> xr.Dataset:
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
        raise InputError(f"{path}: latitude {lat[np.argmax(np.abs(lat))]:g} is outside [-90, 90]")
    dlat = np.diff(lat)
    if not (np.all(dlat > 0) or np.all(dlat < 0)):
        raise InputError(f"{path}: cannot read the grid: latitude is not strictly monotonic")
    order, values = contiguous_longitudes(lon)
    if values.size < 2:
        raise InputError(f"{path}: cannot read the grid: fewer than 2 distinct longitudes")
    ds = ds.isel(lon=order).assign_coords(lon=("lon", values, ds["lon"].attrs))
    return ds.isel(lat=slice(None, None, -1)) if dlat[0] < 0 else ds


def _as_timedelta(var: xr.DataArray, path: str) -> np.ndarray:
    if np.issubdtype(var.dtype, np.timedelta64):
        return np.asarray(var.values, "timedelta64[ns]")
    units = str(var.attrs.get("units", "")).strip().lower()
    if units not in _STEP_UNITS:
        raise InputError(f"{path}: forecast step {var.name!r} has units {units!r}; expected days, hours, minutes or seconds")
    return pd.to_timedelta(np.asarray(var.values, np.float64).ravel(), unit=_STEP_UNITS[units]).to_numpy().reshape(var.shape)


def _check_dates(values: np.ndarray, name: str, var: xr.DataArray, path: str) -> None:
    if not np.issubdtype(values.dtype, np.datetime64):
        raise InputError(f"{path}: {name} is not a CF-decodable date (dtype {values.dtype}, units {var.attrs.get('units')!r})")


def _cftime_to_datetime64(date) -> np.datetime64:
    """The same date and time of day in the standard calendar; NaT where it has no such date
    (30 February of a 360_day calendar)."""
    try:
        return np.datetime64(pd.Timestamp(date.year, date.month, date.day, date.hour, date.minute, date.second,
                                          date.microsecond), "ns")
    except ValueError:
        return np.datetime64("NaT", "ns")


def _decode_calendars(ds: xr.Dataset, path: str) -> tuple[xr.Dataset, str | None]:
    """Time coordinates that xarray decoded to cftime dates (a CF calendar other than the standard
    one: CMIP's `noleap`, `360_day`, ...) as datetime64 of the same dates, as xarray's
    `convert_calendar(..., align_on="date")` does; times with no such date in the standard calendar
    are left out (a note says so). Returns the dataset and the calendar (None: none converted)."""
    calendar = None
    for name in ("valid_time", "time"):
        if name not in ds.variables:
            continue
        values = ds[name].values
        if values.dtype != object or values.size == 0 or not hasattr(values.flat[0], "calendar"):
            continue
        calendar = str(values.flat[0].calendar)
        converted = np.array([_cftime_to_datetime64(d) for d in values.ravel()], "datetime64[ns]").reshape(values.shape)
        missing = np.isnat(converted)
        if missing.any():
            if ds[name].ndim != 1 or ds[name].dims[0] not in ds.dims:
                raise InputError(f"{path}: {name} holds dates of the {calendar!r} calendar that the standard calendar "
                                 f"does not have (e.g. {values.ravel()[missing.ravel()][0]}); {CALENDAR_FIX}")
            dim = ds[name].dims[0]
            _LOG.info("%s: %s is in the %r calendar; %d time(s) that the standard calendar does not have (e.g. %s) "
                      "left out", path, name, calendar, int(missing.sum()), values[missing][0])
            ds = ds.isel({dim: np.flatnonzero(~missing)})
            converted = converted[~missing]
        ds = ds.assign_coords({name: (ds[name].dims, converted)})
        _LOG.info("%s: %s is in the %r calendar: its dates are read as the same dates of the standard calendar",
                  path, name, calendar)
    return ds, calendar


def _normalize_time(ds: xr.Dataset, path: str) -> xr.Dataset:
    ds, calendar = _decode_calendars(ds, path)
    ds = _normalize_time_axis(ds, path)
    if calendar is not None:
        ds["time"].attrs[CALENDAR_ATTR] = calendar
    return ds


def _normalize_time_axis(ds: xr.Dataset, path: str) -> xr.Dataset:
    if "valid_time" in ds.dims:  # new CDS: the dim already holds valid times
        if "step" in ds.dims or "time" in ds.dims:
            raise InputError(f"{path}: both 'valid_time' and a 'time'/'step' dim ({_dims_text(ds)}); expected one time axis")
        ds = ds.drop_vars([n for n in ("time", "step") if n in ds.variables]).rename({"valid_time": "time"})
        _check_dates(ds["time"].values, "valid_time", ds["time"], path)
        return ds
    if "time" not in ds.variables:
        if "valid_time" not in ds.variables:
            raise InputError(f"{path}: no time coordinate (looked for valid_time, time; dims: {_dims_text(ds)})")
        ds = ds.rename({"valid_time": "time"})  # a scalar valid time alone
    # Reference times × forecast steps (each a dim or a scalar made a length-1 dim) → valid times.
    for name in ("time", "step"):
        if name in ds.variables and name not in ds.dims:
            ds = ds.expand_dims(name)
    lead = [d for d in ("time", "step") if d in ds.dims]
    shape = [ds.sizes[d] for d in lead]
    step = xr.DataArray(_as_timedelta(ds["step"], path), dims=("step",)) if "step" in ds.dims else xr.DataArray(
        np.timedelta64(0, "ns"))
    _check_dates(ds["time"].values, "time", ds["time"], path)
    valid = ds["valid_time"] if "valid_time" in ds.variables else ds["time"] + step
    _check_dates(valid.values, "valid_time", valid, path)
    valid_all = np.broadcast_to(valid.transpose(*[d for d in lead if d in valid.dims]).values.astype("datetime64[ns]")
                                .reshape([ds.sizes[d] if d in valid.dims else 1 for d in lead]), shape).ravel()
    step_all = np.broadcast_to(step.values.reshape([-1 if d == "step" else 1 for d in lead]), shape).ravel()
    if np.isnat(valid_all).any():
        raise InputError(f"{path}: missing (NaT) valid times")
    order = np.lexsort((step_all.astype(np.int64), valid_all.astype(np.int64)))  # by valid time, then shortest step
    chosen = order[np.unique(valid_all[order], return_index=True)[1]]
    index = np.unravel_index(chosen, shape)
    ds = ds.drop_vars([n for n in ("valid_time", *lead) if n in ds.variables])
    if lead == ["time"]:
        ds = ds.isel(time=index[0])
    else:
        ds = ds.isel({d: xr.Variable("time", i) for d, i in zip(lead, index)})
    return ds.assign_coords(time=("time", valid_all[chosen]))


def _date_exists(t: np.datetime64, calendar: str) -> bool:
    """Whether the date of `t` exists in the CF `calendar` (30 January does not in 360_day)."""
    import cftime

    ts = pd.Timestamp(t)
    try:
        cftime.datetime(ts.year, ts.month, ts.day, ts.hour, ts.minute, ts.second, calendar=calendar)
    except ValueError:
        return False
    return True


def _normalize_members(ds: xr.Dataset, path: str) -> xr.Dataset:
    if "number" in ds.dims:
        if ds.sizes["number"] != 1:
            raise InputError(f"{path}: has {ds.sizes['number']} ensemble members (dim 'number'); select one member first")
        ds = ds.isel(number=0)
    if "expver" in ds.dims:
        merged = ds.isel(expver=0)
        for k in range(1, ds.sizes["expver"]):
            merged = merged.fillna(ds.isel(expver=k))
        ds = merged
    return ds.drop_vars([n for n in ("number", "expver") if n in ds.variables])


def _normalize_levels(ds: xr.Dataset) -> xr.Dataset:
    level_name = _find(ds, LEVEL_NAMES)
    if level_name is None:
        return ds
    if level_name != "level":
        ds = ds.rename({level_name: "level"})
    units = str(ds["level"].attrs.get("units", "")).strip().lower()
    if units in ("pa", "pascal") or (units == "" and float(np.max(ds["level"].values)) > 2000.0):
        ds = ds.assign_coords(level=ds["level"] / 100.0)
    return ds


def _variables(ds: xr.Dataset, path: str) -> tuple[list[GriddedVariable], list[str]]:
    out: list[GriddedVariable] = []
    unknown: list[str] = []
    for name, var in ds.data_vars.items():
        row, file_name = lookup_file_variable(str(name)), str(name)
        for attr in ("GRIB_shortName", "short_name", "shortName"):
            if row is None and attr in var.attrs:
                row, file_name = lookup_file_variable(str(var.attrs[attr])), str(var.attrs[attr])
        if row is None or "lat" not in var.dims or "lon" not in var.dims or "time" not in var.dims:
            unknown.append(str(name))
            continue
        extra = [d for d in var.dims if d not in ("time", "lat", "lon", "level")]
        if any(var.sizes[d] != 1 for d in extra):
            unknown.append(str(name))
            continue
        var = var.isel({d: 0 for d in extra})
        units = var.attrs.get("units") or implied_units(file_name)
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
                out.append(_make(channel, path, str(name), var.sel(level=lev).drop_vars("level"), units))
        else:
            if "level" in var.dims:
                if var.sizes["level"] != 1:
                    unknown.append(str(name))
                    continue
                var = var.isel(level=0)
            var = var.drop_vars("level", errors="ignore")
            out.append(_make(row.key, path, str(name), var, units))
    return out, unknown


def _make(channel: str, path: str, name: str, var: xr.DataArray, units: str | None) -> GriddedVariable:
    expected = channel_info(channel).units
    scale, offset = unit_conversion(units, expected, f"{path}: variable {name!r}")
    return GriddedVariable(channel, path, name, var.transpose("time", "lat", "lon"), scale, offset)


@dataclass(frozen=True)
class LatLonField:
    """One 2-D field on a rectilinear lat/lon grid.

    Parameters
    ----------
    lat : ndarray, shape (nlat,)
        Latitudes in degrees, strictly ascending.
    lon : ndarray, shape (nlon,)
        Longitudes in degrees, strictly ascending, `lon[0]` in [0, 360), spanning less than 360
        (a regional grid across Greenwich runs e.g. 340 … 400; see `contiguous_longitudes`).
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
        """True when the longitudes cover the whole circle (`is_periodic`)."""
        return is_periodic(self.lon)

    def _grid_lon(self, lon: np.ndarray) -> np.ndarray:
        """Point longitudes (any convention) on the grid's run [lon[0], lon[0] + 360)."""
        lon0 = self.lon[0]
        return lon0 + np.mod(np.asarray(lon, np.float64) - lon0 + 1e-9, 360.0) - 1e-9

    def _extended(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.periodic:
            return self.lon, self.values
        lon = np.concatenate([self.lon, [self.lon[0] + 360.0]])
        values = np.concatenate([self.values, self.values[:, :1]], axis=1)
        return lon, values

    @property
    def domain(self) -> Domain | None:
        """The lat/lon box the grid covers, where observation points are drawn; None for the whole
        globe (periodic in longitude, latitudes from pole to pole)."""
        lon_min, lon_max = (0.0, 360.0) if self.periodic else (float(self.lon[0]), float(self.lon[-1]))
        if self.periodic and self.lat[0] <= -90.0 + 1e-6 and self.lat[-1] >= 90.0 - 1e-6:
            return None
        return Domain(float(self.lat[0]), float(self.lat[-1]), lon_min, lon_max)

    def contains(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Whether each point lies inside the grid (the bilinear stencil exists), (n,) bool."""
        lat = np.asarray(lat, np.float64)
        inside = (lat >= self.lat[0] - 1e-9) & (lat <= self.lat[-1] + 1e-9)
        if not self.periodic:
            inside &= self._grid_lon(lon) <= self.lon[-1] + 1e-9
        return inside

    def sample(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Bilinear interpolation in (lat, lon) degrees at points, (n,) float64; NaN outside.

        A NaN at any of the 4 surrounding grid points gives NaN (QC drops it).
        """
        lat = np.asarray(lat, np.float64)
        glon, values = self._extended()
        out = np.full(lat.shape, np.nan)
        inside = self.contains(lat, lon)
        if not inside.any():
            return out
        la = np.clip(lat[inside], self.lat[0], self.lat[-1])
        lo = np.clip(self._grid_lon(np.asarray(lon, np.float64)[inside]), glon[0], glon[-1])
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

    def __init__(
        self, variables: list[GriddedVariable], unknown: dict[str, list[str]], paths: Sequence[str],
        resources: contextlib.ExitStack | None = None,
    ):
        self.variables = variables
        self.unknown = unknown
        self.paths = list(paths)
        self._resources = resources or contextlib.ExitStack()

    @classmethod
    def open(cls, paths: Sequence[str]) -> "GriddedSource":
        """Open (by content, `formats.open_datasets`) and normalise every file in `paths`
        (already expanded, see `expand_paths`)."""
        with contextlib.ExitStack() as stack:
            opened = [item for path in paths for item in open_datasets(path, stack)]
            return cls.from_datasets(opened, paths, stack.pop_all())

    @classmethod
    def from_datasets(
        cls, opened: Sequence[tuple[str, xr.Dataset]], paths: Sequence[str], resources: contextlib.ExitStack | None = None
    ) -> "GriddedSource":
        """Normalise opened (name, dataset) pairs; `resources` (closed by `close`) owns them."""
        variables: list[GriddedVariable] = []
        unknown: dict[str, list[str]] = {}
        for name, ds in opened:
            found, skipped = normalize_dataset(ds, name)
            variables.extend(found)
            unknown.setdefault(name, []).extend(skipped)
        return cls(variables, unknown, paths, resources)

    def close(self) -> None:
        self._resources.close()

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
        calendar = best[1].data["time"].attrs.get(CALENDAR_ATTR)
        if calendar is not None and not _date_exists(t, calendar):
            raise InputError(f"{best[1].path}: analysis time {format_time(t)} does not exist in the file's {calendar!r} "
                             f"calendar; {CALENDAR_FIX}")
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
    with contextlib.ExitStack() as stack:
        datasets = open_datasets(path, stack)
        healpix = [(name, ds) for name, ds in datasets if "cell" in ds.dims]
        if healpix:
            return _read_healpix(healpix[0][1], healpix[0][0], channels, times, grid, tolerance_hours)
        src = GriddedSource.from_datasets(datasets, [path])
        src.require(channels)
        return src.to_healpix(channels, times, grid, tolerance_hours)


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
            "channel": np.asarray(list(channels), dtype=str),
            "cell_ids": ("cell", grid.cell_ids, {"grid_name": "healpix", "level": grid.level, "indexing_scheme": "nested"}),
        },
        attrs={"nside": grid.nside},
    )
    ds.to_zarr(str(path), mode="w", zarr_format=3, consolidated=False)
