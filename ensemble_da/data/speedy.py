"""A training climate from the SPEEDY general-circulation model (jcm, the JAX port), on HEALPix.

`generate_speedy` integrates SPEEDY (T31, 8 sigma layers; Molteni 2003, Kucharski et al. 2013)
with jcm, built from the T30 climatological boundary data that jcm ships inside its wheel
(`jcm/data/bc/t30/clim/{terrain,forcing}.nc`: orography, land-sea mask, SST, sea ice, soil,
snow, albedo as a monthly climatology replayed every year). Nothing is fetched: jcm's
configuration presets point at a data hub and fail offline, so the model is assembled here with
jcm's Python API instead (`Model`, `TerrainData.from_file`, `ForcingData.from_file(...,
align_mode="wrap_year")`).

The run starts from jcm's isothermal rest state perturbed by `random_seed = seed` (so the
trajectory is deterministic given the seed), discards `spinup_days` (≥ 120), then stores one
instantaneous state every `interval_hours` (24: daily, the default; 6: six-hourly) for `days` days
(days · 24 / interval_hours states; the store's attrs `interval_hours` say the spacing):

- T, U, V, Z are interpolated from the sigma levels (p = σ · p_s) to pressure levels linearly
  in log-pressure. Below the lowest model level (850 hPa over high orography) T follows the
  standard lapse rate γ = 6.5 K/km from the lowest level, T = T_l (p/p_l)^(R_d γ/g), Z follows
  hydrostatically from that profile, Z = Z_l − (g/γ) T_l ((p/p_l)^(R_d γ/g) − 1) (the ECMWF
  convention for fields below ground), and U, V are held at the lowest level. Above the top
  level values are held (never needed for 850–300 hPa);
- the Gaussian lon/lat grid is regridded bilinearly to HEALPix NEST cells (DESIGN.md §3);
- channels are named as cBottle names them (T850, Z500, ...); Z is geopotential in m² s⁻².

Output: a zarr store with `state(time, channel, cell)` float32 in physical units, coordinates
`time`, `channel`, `cell_ids` (NEST, attrs grid_name/level/indexing_scheme), and per-channel
`center(channel)` / `scale(channel)` (mean and std over time and cells), plus provenance attrs.
`read_speedy` opens it again as numpy arrays.
"""

from __future__ import annotations

import hashlib
import time as _time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ensemble_da.channels import channel_info
from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid

__all__ = [
    "DEFAULT_CHANNELS",
    "SpeedyDataset",
    "generate_speedy",
    "read_speedy",
    "sigma_to_pressure_levels",
    "regrid_to_healpix",
    "dataset_hash",
]

DEFAULT_CHANNELS: tuple[str, ...] = ("T850", "T500", "T300", "U850", "V850", "Z500")

# channel variable letter -> jcm output variable
_JCM_VARIABLE = {"T": "temperature", "U": "u_wind", "V": "v_wind", "Z": "geopotential"}
_P0 = 1.0e5  # Pa; jcm's normalized_surface_pressure is p_s / p0


_RD, _G, _LAPSE = 287.04, 9.80665, 6.5e-3  # J kg-1 K-1, m s-2, K m-1
_K = _RD * _LAPSE / _G


def sigma_to_pressure_levels(
    field: np.ndarray,
    sigma: np.ndarray,
    ps: np.ndarray,
    levels_hpa: Sequence[float],
    below: str = "hold",
    temperature: np.ndarray | None = None,
) -> np.ndarray:
    """Interpolate a sigma-level field to pressure levels, linearly in log-pressure.

    Parameters
    ----------
    field : ndarray, shape (time, level, *horizontal)
        Values on the full sigma levels, any level order.
    sigma : ndarray, shape (level,)
        Full-level sigma values (p / p_s).
    ps : ndarray, shape (time, *horizontal)
        Surface pressure in Pa.
    levels_hpa : sequence of float
        Target pressure levels in hPa.
    below : {"hold", "temperature", "geopotential"}
        Below the lowest model level: hold the lowest value (winds), the standard-lapse-rate
        temperature, or the geopotential of that profile (needs `temperature`, the temperature
        on the same sigma levels). Above the top level the top value is held.
    temperature : ndarray, optional
        Temperature (time, level, *horizontal) for `below="geopotential"`.

    Returns
    -------
    ndarray, shape (time, len(levels_hpa), *horizontal)
    """
    order = np.argsort(sigma)  # top (small sigma) to bottom
    sigma = np.asarray(sigma, dtype=np.float64)[order]
    field = np.asarray(field, dtype=np.float64)[:, order]
    lnp = np.log(sigma[None, :, ...].reshape((1, -1) + (1,) * (ps.ndim - 1)) * ps[:, None])
    nlev = sigma.size
    out = []
    for level in levels_hpa:
        target = np.log(level * 100.0)
        # index k with lnp[k] <= target < lnp[k+1]; clipped to an end segment
        k = (lnp <= target).sum(axis=1) - 1  # (time, *horizontal)
        k = np.clip(k, 0, nlev - 2)
        lo = np.take_along_axis(lnp, k[:, None], axis=1)[:, 0]
        hi = np.take_along_axis(lnp, k[:, None] + 1, axis=1)[:, 0]
        flo = np.take_along_axis(field, k[:, None], axis=1)[:, 0]
        fhi = np.take_along_axis(field, k[:, None] + 1, axis=1)[:, 0]
        w = np.clip((target - lo) / (hi - lo), 0.0, 1.0)
        value = flo + w * (fhi - flo)
        under = target > lnp[:, -1]  # below the lowest model level
        if below != "hold" and under.any():
            ratio = np.exp(target - lnp[:, -1]) ** _K  # (p / p_lowest)^(R_d γ / g)
            if below == "temperature":
                value = np.where(under, field[:, -1] * ratio, value)
            elif below == "geopotential":
                if temperature is None:
                    raise ValueError("below='geopotential' needs the temperature")
                t_low = np.asarray(temperature, dtype=np.float64)[:, order][:, -1]
                value = np.where(under, field[:, -1] - (_G / _LAPSE) * t_low * (ratio - 1.0), value)
            else:
                raise ValueError(f"unknown below={below!r}")
        out.append(value)
    return np.stack(out, axis=1)


def regrid_to_healpix(field: np.ndarray, lon: np.ndarray, lat: np.ndarray, grid: HealpixGrid) -> np.ndarray:
    """Bilinear regridding from a regular-longitude, sorted-latitude grid to HEALPix NEST cells.

    Parameters
    ----------
    field : ndarray, shape (*leading, lon, lat)
    lon : ndarray, shape (lon,)
        Equally spaced longitudes in degrees, starting anywhere in [0, 360).
    lat : ndarray, shape (lat,)
        Ascending latitudes in degrees (e.g. Gaussian). The poles are padded with the zonal mean
        of the nearest row, longitudes wrap periodically.
    grid : HealpixGrid

    Returns
    -------
    ndarray, shape (*leading, cell) in NEST order.
    """
    from scipy.interpolate import RegularGridInterpolator

    lead = field.shape[:-2]
    f = field.reshape((-1,) + field.shape[-2:])  # (n, lon, lat)
    f = np.concatenate([f, f[:, :1]], axis=1)  # periodic longitude
    lon_p = np.concatenate([lon, [lon[0] + 360.0]])
    south = f[:, :, :1].mean(axis=1, keepdims=True).repeat(f.shape[1], axis=1)
    north = f[:, :, -1:].mean(axis=1, keepdims=True).repeat(f.shape[1], axis=1)
    f = np.concatenate([south, f, north], axis=2)
    lat_p = np.concatenate([[-90.0], lat, [90.0]])
    cell_lon, cell_lat = grid.lonlat
    cell_lon = np.mod(cell_lon - lon[0], 360.0) + lon[0]
    interp = RegularGridInterpolator((lon_p, lat_p), np.moveaxis(f, 0, -1), method="linear")
    out = interp(np.stack([cell_lon, cell_lat], axis=-1))  # (cell, n)
    return np.moveaxis(out, -1, 0).reshape(lead + (grid.npix,))


def _parse_channels(channels: Sequence[str]) -> list[tuple[str, str, int]]:
    parsed = []
    for name in channels:
        info = channel_info(name)
        if info.level is None or info.variable not in _JCM_VARIABLE:
            raise InputError(
                f"channel {name!r} is not available from SPEEDY here (pressure-level T, U, V, Z only)"
            )
        parsed.append((name, info.variable, info.level))
    return parsed


def _to_channels(ds, parsed, grid: HealpixGrid) -> np.ndarray:
    """jcm output dataset (time, level, lon, lat) -> (time, channel, cell) float32."""
    sigma = np.asarray(ds["level"].values, dtype=np.float64)
    ps = np.asarray(ds["normalized_surface_pressure"].transpose("time", "lon", "lat").values, np.float64) * _P0
    lon = np.asarray(ds["lon"].values, dtype=np.float64)
    lat = np.asarray(ds["lat"].values, dtype=np.float64)
    if np.any(np.diff(lat) <= 0):
        raise RuntimeError("expected ascending latitudes in the jcm output")
    temperature = ds["temperature"].transpose("time", "level", "lon", "lat").values
    below = {"T": "temperature", "Z": "geopotential", "U": "hold", "V": "hold"}
    planes = []
    for _, var, level in parsed:
        field = ds[_JCM_VARIABLE[var]].transpose("time", "level", "lon", "lat").values
        planes.append(sigma_to_pressure_levels(field, sigma, ps, [level], below[var], temperature)[:, 0])
    stacked = np.stack(planes, axis=1)  # (time, channel, lon, lat)
    return regrid_to_healpix(stacked, lon, lat, grid).astype(np.float32)


def _build_model():
    """SPEEDY T31L8 with jcm's packaged T30 climatological boundary data (no network)."""
    from importlib import resources

    from jcm.forcing import ForcingData
    from jcm.model import Model
    from jcm.physics.speedy.speedy_coords import get_speedy_coords
    from jcm.terrain import TerrainData

    bc = resources.files("jcm.data.bc.t30.clim")
    coords = get_speedy_coords()
    terrain = TerrainData.from_file(bc / "terrain.nc", coords=coords)
    forcing = ForcingData.from_file(bc / "forcing.nc", coords=coords, align_mode="wrap_year")
    model = Model(coords=coords, terrain=terrain, time_step=40.0)
    return model, forcing


def generate_speedy(
    out: str | Path,
    *,
    seed: int = 0,
    spinup_days: int = 120,
    days: int = 365,
    nside: int = 16,
    channels: Sequence[str] = DEFAULT_CHANNELS,
    chunk_days: int = 10,
    start_time: str = "2000-01-01",
    progress: bool = True,
    overwrite: bool = False,
    interval_hours: int = 24,
) -> Path:
    """Integrate SPEEDY and write HEALPix states every `interval_hours` to a zarr store.

    Parameters
    ----------
    out : path
        Output zarr directory (must not exist unless `overwrite`).
    seed : int
        Seed of the initial-state perturbation; the dataset is a deterministic function of it.
    spinup_days : int
        Days integrated and discarded first (≥ 120 for a climate; fewer allowed for tests).
    days : int
        Days of states stored after the spin-up (days · 24 / interval_hours states).
    nside : int
        HEALPix resolution of the output.
    channels : sequence of str
        Pressure-level channels of T, U, V, Z (e.g. T850, Z500).
    chunk_days : int
        Days integrated per compiled call (one compilation, reused).
    start_time : str
        Model start date; stored times begin `spinup_days` later.
    interval_hours : int
        Hours between stored states, a divisor of 24 (24: daily, bit for bit the earlier output).

    Returns
    -------
    Path of the written store.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"output {out} already exists (pass --overwrite to replace it)")
    if days < 1 or spinup_days < 0 or chunk_days < 1:
        raise InputError(f"need days >= 1, spinup_days >= 0, chunk_days >= 1 (got {days}, {spinup_days}, {chunk_days})")
    if interval_hours < 1 or 24 % interval_hours:
        raise InputError(f"interval_hours must divide 24 (1, 2, 3, 4, 6, 8, 12 or 24), got {interval_hours}")
    per_day = 24 // interval_hours
    parsed = _parse_channels(channels)
    grid = HealpixGrid(nside)

    try:
        import jcm  # noqa: F401
    except ImportError:
        raise InputError("jcm is not installed: pip install 'ensemble-da[speedy]'") from None

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    t0 = _time.time()
    model, forcing = _build_model()
    initial = model.initial_state(random_seed=int(seed))
    n_spin = -(-spinup_days // chunk_days)
    n_keep = -(-days // chunk_days)
    states: list[np.ndarray] = []
    times: list[np.ndarray] = []
    with Progress(
        TextColumn("[bold]SPEEDY[/] {task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} days"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not progress,
    ) as bar:
        task = bar.add_task("spin-up", total=(n_spin + n_keep) * chunk_days)
        for i in range(n_spin + n_keep):
            kwargs = dict(forcing=forcing, save_interval=1.0 if per_day == 1 else interval_hours / 24.0, total_time=float(chunk_days))
            pred = model.run(initial_state=initial, **kwargs) if i == 0 else model.resume(**kwargs)
            if i >= n_spin:
                ds = pred.to_xarray()
                ds = ds[["temperature", "u_wind", "v_wind", "geopotential", "normalized_surface_pressure"]]
                x = _to_channels(ds, parsed, grid)
                if not np.all(np.isfinite(x)):
                    raise RuntimeError(f"SPEEDY produced non-finite values in chunk {i}")
                states.append(x)
                times.append(np.asarray(ds["time"].values).astype("datetime64[ns]"))
            bar.update(task, advance=chunk_days, description="spin-up" if i + 1 < n_spin else "climate")
            if progress and not bar.console.is_terminal:  # a log file: one plain line per chunk
                print(f"SPEEDY day {(i + 1) * chunk_days}/{(n_spin + n_keep) * chunk_days} ({_time.time() - t0:.0f} s)", flush=True)
    state = np.concatenate(states)[:days * per_day]
    time_axis = np.concatenate(times)[:days * per_day]
    elapsed = _time.time() - t0
    write_dataset(
        out,
        state,
        time_axis,
        [p[0] for p in parsed],
        grid,
        attrs={
            "source": "SPEEDY T31L8 (jcm) with jcm's packaged T30 climatological boundary data",
            "jcm_version": _version("jcm"),
            "jax_version": _version("jax"),
            "jaxlib_version": _version("jaxlib"),
            "seed": int(seed),
            "spinup_days": int(spinup_days),
            "start_time": start_time,
            "time_step_minutes": 40.0,
            "interval_hours": int(interval_hours),
            "vertical_interpolation": "linear in log-pressure from sigma levels (p = sigma * ps); "
            "below the lowest level: standard lapse rate 6.5 K/km for T, hydrostatic Z, winds held",
            "horizontal_regridding": "bilinear, Gaussian T31 grid -> HEALPix NEST",
            "generation_seconds": round(elapsed, 1),
        },
        overwrite=overwrite,
    )
    return out


def _version(package: str) -> str:
    """The installed version of `package`: the trajectory is reproducible only with the same jcm/jax/jaxlib."""
    from importlib.metadata import version

    return version(package)


def write_dataset(
    out: str | Path,
    state: np.ndarray,
    time_axis: np.ndarray,
    channels: Sequence[str],
    grid: HealpixGrid,
    attrs: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `state(time, channel, cell)` with center/scale and NEST coords as zarr (v3)."""
    import xarray as xr

    state = np.asarray(state, dtype=np.float32)
    center = state.astype(np.float64).mean(axis=(0, 2))
    scale = state.astype(np.float64).std(axis=(0, 2))
    ds = xr.Dataset(
        {
            "state": (("time", "channel", "cell"), state),
            "center": (("channel",), center),
            "scale": (("channel",), scale),
        },
        coords={
            "time": np.asarray(time_axis).astype("datetime64[ns]"),
            "channel": np.asarray(list(channels), dtype=str),
            "cell_ids": (
                ("cell",),
                grid.cell_ids,
                {"grid_name": "healpix", "level": grid.level, "indexing_scheme": "nested"},
            ),
        },
        attrs={"nside": grid.nside, **(attrs or {})},
    )
    ds["state"].attrs["units"] = "physical (K, m s-1, m2 s-2 per channel)"
    ds.attrs["data_hash"] = dataset_hash(state)
    ds.to_zarr(Path(out), mode="w" if overwrite else "w-", zarr_format=3, consolidated=False)
    return Path(out)


def dataset_hash(state: np.ndarray) -> str:
    """SHA-256 (first 16 hex digits) of the float32 state array: the training-data hash."""
    return hashlib.sha256(np.ascontiguousarray(state, dtype=np.float32).tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class SpeedyDataset:
    """A SPEEDY-on-HEALPix dataset in memory.

    Attributes
    ----------
    state : ndarray, shape (time, channel, cell), float32, physical units
    time : ndarray of datetime64[ns], shape (time,)
    channels : tuple of str
    center, scale : ndarray, shape (channel,)
    nside : int
    data_hash : str
    """

    state: np.ndarray
    time: np.ndarray
    channels: tuple[str, ...]
    center: np.ndarray
    scale: np.ndarray
    nside: int
    data_hash: str


def read_speedy(path: str | Path) -> SpeedyDataset:
    """Open a store written by `generate_speedy` (zarr) or a `.npz` sample of one."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"dataset not found: {path}")
    if path.suffix == ".npz":
        with np.load(path) as f:
            state = f["state"].astype(np.float32)
            return SpeedyDataset(
                state=state,
                time=f["time"].astype("datetime64[ns]"),
                channels=tuple(str(c) for c in f["channels"]),
                center=f["center"].astype(np.float64),
                scale=f["scale"].astype(np.float64),
                nside=int(f["nside"]),
                data_hash=str(f["data_hash"]),
            )
    import xarray as xr

    try:
        ds = xr.open_zarr(path, consolidated=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable store is bad input
        raise InputError(f"{path}: not a readable zarr dataset ({exc})") from None
    for name in ("state", "center", "scale"):
        if name not in ds:
            raise InputError(f"{path}: missing variable {name!r} (expected a SPEEDY HEALPix dataset)")
    state = np.asarray(ds["state"].values, dtype=np.float32)
    return SpeedyDataset(
        state=state,
        time=np.asarray(ds["time"].values).astype("datetime64[ns]"),
        channels=tuple(str(c) for c in ds["channel"].values),
        center=np.asarray(ds["center"].values, dtype=np.float64),
        scale=np.asarray(ds["scale"].values, dtype=np.float64),
        nside=int(ds.attrs["nside"]),
        data_hash=str(ds.attrs.get("data_hash") or dataset_hash(state)),
    )


def save_sample(dataset: SpeedyDataset, index: np.ndarray, out: str | Path) -> Path:
    """Write states `index` of `dataset` as a compressed `.npz` (the packaged held-out sample).

    The center/scale and data hash of the full dataset are kept, so the sample normalises
    exactly like the training data.
    """
    index = np.asarray(index)
    np.savez_compressed(
        out,
        state=dataset.state[index].astype(np.float32),
        time=dataset.time[index].astype("datetime64[ns]"),
        channels=np.asarray(dataset.channels),
        center=dataset.center,
        scale=dataset.scale,
        nside=np.int64(dataset.nside),
        data_hash=np.asarray(dataset.data_hash),
    )
    return Path(out)
