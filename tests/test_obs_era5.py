"""ERA5 readers (obs/era5.py): every layout, written here with xarray/netCDF4/zarr, reads back to
the same observations; a closed-form field is recovered to interpolation accuracy."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from conftest import small_config
from ensemble_da.channels import Normalization
from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.era5 import GriddedSource, LatLonField, open_source, read_healpix_truth
from ensemble_da.obs.inputs import prepare_inputs

TIMES = pd.to_datetime(["2020-01-01T00:00", "2020-01-01T06:00"]).to_numpy("datetime64[ns]")
LAT = np.linspace(-90.0, 90.0, 73)  # 2.5°, ascending (internal order)
LON = np.arange(144) * 2.5  # 0 .. 357.5
LEVELS = [850, 500]
PL = {"t": ("T", "temperature", "K"), "z": ("Z", "geopotential", "m**2 s**-2"), "u": ("U", "u_component_of_wind", "m s**-1")}
SL = {
    "t2m": ("tas", "2m_temperature", "K"),
    "u10": ("uas", "10m_u_component_of_wind", "m s**-1"),
    "msl": ("pres_msl", "mean_sea_level_pressure", "Pa"),
    "sst": ("sst", "sea_surface_temperature", "K"),
}
CHANNELS = ["T850", "T500", "Z500", "U850", "tas", "uas", "pres_msl", "sst"]


def closed_form(channel: str, t: int, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Smooth reference fields: T = 250 + 30 cos(lat) + 5 cos(lat) sin(lon) (+ per-channel shifts)."""
    phi, lam = np.deg2rad(lat), np.deg2rad(lon)
    shape = np.cos(phi) * (30.0 + 5.0 * np.sin(lam))
    base = {"T850": 250.0, "T500": 230.0, "Z850": 14000.0, "Z500": 52000.0, "U850": 0.0, "U500": 5.0,
            "tas": 255.0, "uas": -3.0, "pres_msl": 101000.0, "sst": 271.0}[channel]
    gain = {"Z850": 100.0, "Z500": 100.0, "pres_msl": 50.0, "U850": 0.5, "U500": 0.5, "uas": 0.2}.get(channel, 1.0)
    return base + gain * shape + 0.5 * t


def grid_values(channel: str, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    return np.stack([closed_form(channel, t, la, lo) for t in range(len(TIMES))])  # (time, lat, lon)


def pressure_ds(lat=LAT, lon=LON, time="time", level="level", names="short") -> xr.Dataset:
    data = {}
    for short, (letter, arco, units) in PL.items():
        arr = np.stack([grid_values(f"{letter}{lev}", lat, lon) for lev in LEVELS], axis=1)
        data[short if names == "short" else arco] = ((time, level, "latitude", "longitude"), arr, {"units": units})
    return xr.Dataset(data, coords={time: TIMES, level: LEVELS, "latitude": lat, "longitude": lon})


def single_ds(lat=LAT, lon=LON, time="time", names="short") -> xr.Dataset:
    data = {}
    for short, (ch, arco, units) in SL.items():
        data[short if names == "short" else arco] = ((time, "latitude", "longitude"), grid_values(ch, lat, lon), {"units": units})
    return xr.Dataset(data, coords={time: TIMES, "latitude": lat, "longitude": lon})


def signed_lon(lon: np.ndarray) -> np.ndarray:
    return np.where(lon >= 180.0, lon - 360.0, lon)


def packed(ds: xr.Dataset) -> dict:
    """int16 packing as the old CDS did: scale = range / 2¹⁶ per variable."""
    enc = {}
    for name, var in ds.data_vars.items():
        lo, hi = float(var.min()), float(var.max())
        scale = (hi - lo) / 65000.0
        enc[name] = {"dtype": "int16", "scale_factor": scale, "add_offset": (hi + lo) / 2, "_FillValue": np.int16(-32767)}
    return enc


def write_old_cds(tmp) -> list[str]:
    """Old CDS: time/level/latitude(90→-90)/longitude(0..360), packed int16, NETCDF3 64-bit offset."""
    pl = pressure_ds(lat=LAT[::-1])
    sl = single_ds(lat=LAT[::-1])
    paths = [str(tmp / "old_pl.nc"), str(tmp / "old_sl.nc")]
    pl.to_netcdf(paths[0], engine="netcdf4", format="NETCDF3_64BIT", encoding=packed(pl))
    sl.to_netcdf(paths[1], engine="netcdf4", format="NETCDF3_64BIT", encoding=packed(sl))
    return paths


def new_cds(ds: xr.Dataset) -> xr.Dataset:
    return ds.assign_coords(number=0, expver=("valid_time", np.array(["0001", "0005"], dtype=object)))


def write_new_cds(tmp, lat=LAT[::-1], lon=LON, tag="new") -> list[str]:
    """New CDS: valid_time/pressure_level + number/expver, netCDF4 zlib, float32."""
    pl = new_cds(pressure_ds(lat=lat, lon=lon, time="valid_time", level="pressure_level"))
    sl = new_cds(single_ds(lat=lat, lon=lon, time="valid_time"))
    paths = [str(tmp / f"{tag}_pl.nc"), str(tmp / f"{tag}_sl.nc")]
    for ds, path in ((pl, paths[0]), (sl, paths[1])):
        enc = {n: {"zlib": True, "complevel": 4, "dtype": "float32"} for n in ds.data_vars}
        ds.to_netcdf(path, engine="netcdf4", format="NETCDF4", encoding=enc)
    return paths


def write_arco(tmp) -> list[str]:
    """ARCO-ERA5 style zarr (v2, consolidated): long names, dim `level`, lat 90→-90."""
    ds = xr.merge([pressure_ds(lat=LAT[::-1], names="arco"), single_ds(lat=LAT[::-1], names="arco")])
    path = str(tmp / "arco.zarr")
    ds.to_zarr(path, zarr_format=2, consolidated=True, mode="w")
    return [path]


def write_split_by_time(tmp) -> list[str]:
    """One file per analysis time (several files, glob-able), lat ascending, lon −180..180."""
    paths = []
    for k in range(len(TIMES)):
        ds = xr.merge([pressure_ds(lon=signed_lon(LON)), single_ds(lon=signed_lon(LON))]).isel(time=[k])
        paths.append(str(tmp / f"split_{k}.nc"))
        ds.to_netcdf(paths[-1], engine="netcdf4")
    return paths


def write_expver_dim(tmp) -> list[str]:
    """ERA5/ERA5T mixture: `expver` as a dim, each half NaN where the other holds data; `number` dim of size 1."""
    out = []
    for name, ds in (("ev_pl.nc", pressure_ds(time="valid_time", level="pressure_level")),
                     ("ev_sl.nc", single_ds(time="valid_time"))):
        first = ds.where(ds["valid_time"] == TIMES[0])
        second = ds.where(ds["valid_time"] != TIMES[0])
        both = xr.concat([first, second], dim=xr.DataArray(["0001", "0005"], dims="expver", name="expver"))
        both = both.expand_dims(number=[0])
        out.append(str(tmp / name))
        both.to_netcdf(out[-1], engine="netcdf4")
    return out


# Tolerances, in channel units (Z and msl in units of 100): int16 packing is off by at most half a
# quantum, range/130000: 0.32 m² s⁻² for `z` (both levels, range ~41500) = 0.0032 in units of 100;
# float32 storage is off by ~6e-8 relative: 52000 · 6e-8 / 100 ≈ 3e-5.
LAYOUTS = {
    "old_cds_packed_nc3": (write_old_cds, 0.004),
    "new_cds_nc4": (write_new_cds, 1e-4),
    "new_cds_lat_ascending_lon_signed": (
        lambda tmp: write_new_cds(tmp, lat=LAT, lon=signed_lon(LON), tag="asc"), 1e-4),
    "arco_zarr": (write_arco, 1e-9),
    "split_by_time_lon_signed": (write_split_by_time, 1e-9),
    "expver_and_number_dims": (write_expver_dim, 1e-9),
}


def fake_prior(nside: int = 4):
    """What prepare_inputs needs of a prior for era5 sources: channels and the grid."""
    norm = Normalization(tuple(CHANNELS), np.zeros(len(CHANNELS)), np.ones(len(CHANNELS)))
    return SimpleNamespace(normalization=norm, grid=HealpixGrid(nside))


def era5_config(paths, **obs):
    return small_config(
        times=[str(t) for t in TIMES],
        model=dict(channels=CHANNELS),
        observations={**dict(source="era5", path=paths, channels=CHANNELS, num_obs=400, strategy="random",
                             sigma={}, heldout_fraction=0.1), **obs},
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Observations from an unpacked float64 file in the plain (internal) layout."""
    tmp = tmp_path_factory.mktemp("ref")
    path = tmp / "ref.nc"
    xr.merge([pressure_ds(), single_ds()]).to_netcdf(path, engine="netcdf4")
    return prepare_inputs(era5_config([str(path)]), fake_prior())


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_reads_back_to_the_same_observations(layout, reference, tmp_path):
    write, tol = LAYOUTS[layout]
    paths = write(tmp_path)
    inputs = prepare_inputs(era5_config(paths), fake_prior())
    for ref, got in zip(reference.observations, inputs.observations):
        # Same seed → same locations, channels, held-out flags; values up to storage precision.
        np.testing.assert_array_equal(got.channel, ref.channel)
        np.testing.assert_allclose(got.lat, ref.lat)
        np.testing.assert_allclose(got.lon, ref.lon)
        np.testing.assert_array_equal(got.assimilated, ref.assimilated)
        np.testing.assert_array_equal(got.time, ref.time)
        scale = np.where(np.isin(got.channel, ["Z850", "Z500", "pres_msl"]), 100.0, 1.0)
        assert np.max(np.abs(got.value - ref.value) / scale) < tol, layout
    assert inputs.qc.kept == reference.qc.kept == 800


def test_glob_of_several_files(tmp_path, reference):
    write_split_by_time(tmp_path)
    inputs = prepare_inputs(era5_config(str(tmp_path / "split_*.nc")), fake_prior())
    np.testing.assert_allclose(inputs.observations[1].value, reference.observations[1].value)


def test_closed_form_field_at_stations_to_interpolation_accuracy(tmp_path):
    # T = 250 + 30 cos φ + 5 cos φ sin λ on a 2.5° grid. Bilinear error ≤ h²/8 (|T_φφ| + |T_λλ|)
    # with h = 2.5° = 0.0436 rad, |T_φφ| ≤ 35 K, |T_λλ| ≤ 5 K per rad²: 0.0095 K.
    h = np.deg2rad(2.5)
    tol = h**2 / 8 * 40.0
    path = tmp_path / "t.nc"
    pressure_ds(lat=LAT[::-1], lon=signed_lon(LON)).to_netcdf(path, engine="netcdf4")
    rng = np.random.default_rng(0)
    lat = np.concatenate([rng.uniform(-90, 90, 500), [90.0, -90.0, 0.0, 45.0]])
    lon = np.concatenate([rng.uniform(-180, 360, 500), [0.0, 123.0, 359.9, -0.1]])  # across the seam
    with open_source(str(path)) as src:
        field = src.field("T850", TIMES[1], 3.0)
        got = field.sample(lat, lon)
    want = closed_form("T850", 1, lat, lon)
    err = np.abs(got - want)
    assert err.max() < tol
    assert err.max() > tol / 20  # the comparison is not vacuous: interpolation error is visible


def test_nearest_time_within_tolerance(tmp_path):
    path = tmp_path / "t.nc"
    pressure_ds().to_netcdf(path, engine="netcdf4")
    with open_source(str(path)) as src:
        f = src.field("T850", np.datetime64("2020-01-01T04:00"), 3.0)  # 06:00 is nearest
        assert f.time == TIMES[1]
        f = src.field("T850", np.datetime64("2020-01-01T03:00"), 3.0)  # tie: the earlier file time
        assert f.time == TIMES[0]


def test_regional_grid_gets_every_observation_inside(tmp_path):
    lat = LAT[(LAT >= 20) & (LAT <= 70)]
    lon = LON[(LON >= 0) & (LON <= 60)]
    path = tmp_path / "europe.nc"
    xr.merge([pressure_ds(lat=lat, lon=lon), single_ds(lat=lat, lon=lon)]).to_netcdf(path, engine="netcdf4")
    inputs = prepare_inputs(era5_config([str(path)], num_obs=2000), fake_prior())
    for obs in inputs.observations:
        assert ((obs.lat >= 20) & (obs.lat <= 70) & (obs.lon <= 60)).all()
    assert inputs.qc.outside_domain == 0 and inputs.qc.kept == inputs.qc.read == 2 * 2000


def test_global_grid_draws_the_same_locations_as_before(tmp_path):
    """A global file draws over the whole sphere exactly as the documented formulas: random
    lat = asin(u), u ~ U(−1, 1), lon ~ U(0, 360) from the time's stream; uniform the Fibonacci lattice."""
    from ensemble_da.obs.strategies import fibonacci_points
    from ensemble_da.obs.synthetic import obs_rng

    path = tmp_path / "global.nc"
    pressure_ds().to_netcdf(path, engine="netcdf4")
    for strategy in ("random", "uniform"):
        cfg = era5_config([str(path)], channels=["T850", "Z500"], num_obs=300, strategy=strategy)
        inputs = prepare_inputs(cfg, fake_prior())
        for t, obs in enumerate(inputs.observations):
            if strategy == "random":
                rng = obs_rng(cfg.seed, t)
                lat, lon = np.rad2deg(np.arcsin(rng.uniform(-1.0, 1.0, 300))), rng.uniform(0.0, 360.0, 300)
            else:
                lat, lon = fibonacci_points(300)
            np.testing.assert_array_equal(obs.lat, lat)
            np.testing.assert_array_equal(obs.lon, lon)


def test_sst_nan_over_land_is_dropped_by_qc(tmp_path):
    ds = xr.merge([pressure_ds(), single_ds()])
    ds["sst"] = ds["sst"].where(ds["latitude"] < 0)  # "land" north of the equator
    path = tmp_path / "sst.nc"
    ds.to_netcdf(path, engine="netcdf4")
    inputs = prepare_inputs(era5_config([str(path)]), fake_prior())
    sst = inputs.observations[0].subset(inputs.observations[0].channel == "sst")
    assert (sst.lat < 0).all() and inputs.qc.nonfinite > 0


def test_units_are_converted_to_channel_units(tmp_path):
    ds = single_ds()
    ds["t2m"] = ds["t2m"] - 273.15
    ds["t2m"].attrs["units"] = "degC"
    ds["msl"] = ds["msl"] / 100.0
    ds["msl"].attrs["units"] = "hPa"
    path = tmp_path / "c.nc"
    ds.to_netcdf(path, engine="netcdf4")
    with open_source(str(path)) as src:
        for ch in ("tas", "pres_msl"):
            f = src.field(ch, TIMES[0], 0.0)
            np.testing.assert_allclose(f.values, grid_values(ch, LAT, LON)[0], rtol=1e-12)


def test_regrid_to_healpix_truth(tmp_path):
    path = tmp_path / "t.nc"
    xr.merge([pressure_ds(lat=LAT[::-1]), single_ds(lat=LAT[::-1])]).to_netcdf(path, engine="netcdf4")
    grid = HealpixGrid(8)
    truth = read_healpix_truth(str(path), ["T850", "tas"], TIMES, grid, 0.0)
    lon, lat = grid.lonlat
    assert truth.shape == (2, 2, grid.npix) and truth.dtype == np.float32
    np.testing.assert_allclose(truth[1, 0], closed_form("T850", 1, lat, lon), atol=0.02)


def test_latlon_field_periodic_detection():
    f = LatLonField(LAT, LON, np.zeros((LAT.size, LON.size)), TIMES[0])
    assert f.periodic and f.contains(np.array([0.0]), np.array([359.0]))[0]
    g = LatLonField(LAT, LON[:10], np.zeros((LAT.size, 10)), TIMES[0])
    assert not g.periodic and not g.contains(np.array([0.0]), np.array([100.0]))[0]


def test_source_lists_channels_of_every_layout(tmp_path):
    with GriddedSource.open(write_arco(tmp_path)) as src:
        assert set(src.channels) == {"T850", "T500", "Z850", "Z500", "U850", "U500", "tas", "uas", "pres_msl", "sst"}


# --- Regional grids: any grid not global in longitude, either convention, wherever its seam is.
BOX_LAT = np.arange(70.0, 29.0, -1.0)  # 70 → 30, as the CDS writes a box


def box_file(tmp_path, west: float, width: float, convention: str) -> str:
    """t2m on a 1° box from `west` eastwards `width` degrees: 280 + 0.2·lat + 0.5·(degrees east of `west`).

    `convention`: "signed" (−180..180, ascending as the new CDS writes a box across Greenwich),
    "wrapped" (0..360, sorted, so the box is split: a hole in the middle of the coordinate),
    "file_order" (0..360 in the box's own order, not monotonic)."""
    east = np.arange(0.0, width + 0.5, 1.0)
    lon = np.mod(west + east, 360.0)
    if convention == "signed":
        lon = np.where(lon >= 180.0, lon - 360.0, lon)
    if convention in ("signed", "wrapped"):
        order = np.argsort(lon)
        lon, east = lon[order], east[order]
    value = 280.0 + 0.2 * BOX_LAT[:, None] + 0.5 * east[None, :]
    ds = xr.Dataset({"t2m": (("valid_time", "latitude", "longitude"), np.stack([value, value + 1.0]), {"units": "K"})},
                    coords={"valid_time": TIMES, "latitude": BOX_LAT, "longitude": lon})
    path = str(tmp_path / f"box_{convention}.nc")
    ds.to_netcdf(path, engine="netcdf4")
    return path


def box_config(path: str, num_obs: int = 2000):
    return small_config(times=[str(TIMES[0])], model=dict(channels=CHANNELS),
                        observations=dict(source="era5", path=[path], channels=["tas"], num_obs=num_obs,
                                          strategy="random", sigma={}, heldout_fraction=0.0))


@pytest.mark.parametrize("west,width", [(-20.0, 60.0), (170.0, 60.0), (300.0, 100.0)],
                         ids=["across_greenwich", "across_dateline", "seam_at_340"])
@pytest.mark.parametrize("convention", ["signed", "wrapped", "file_order"])
def test_regional_grid_observes_only_inside_and_values_follow_the_formula(tmp_path, west, width, convention):
    path = box_file(tmp_path, west, width, convention)
    inputs = prepare_inputs(box_config(path), fake_prior())
    obs = inputs.observations[0]
    east = np.mod(obs.lon - west, 360.0)
    assert ((obs.lat >= 30.0) & (obs.lat <= 70.0) & (east <= width)).all()
    # Linear in lat and longitude east of the box edge: bilinear interpolation is exact.
    np.testing.assert_allclose(obs.value, 280.0 + 0.2 * obs.lat + 0.5 * east, atol=1e-9)
    # Every point is drawn inside the box, uniform in area: the part north of 50° holds a fraction p
    # of the box's area; that count ~ Binomial(2000, p), asserted within 5 standard deviations.
    assert inputs.qc.kept == inputs.qc.read == 2000 and inputs.qc.outside_domain == 0
    p = (np.sin(np.deg2rad(70.0)) - np.sin(np.deg2rad(50.0))) / (np.sin(np.deg2rad(70.0)) - np.sin(np.deg2rad(30.0)))
    assert abs(np.sum(obs.lat > 50.0) - 2000 * p) < 5 * np.sqrt(2000 * p * (1 - p))
    # ... and along the arc: the western half of the box holds half of them.
    assert abs(np.sum(east < width / 2) - 1000) < 5 * np.sqrt(500)


@pytest.mark.parametrize("west,width", [(-20.0, 60.0), (170.0, 60.0)], ids=["europe", "across_dateline"])
@pytest.mark.parametrize("strategy", ["random", "uniform"])
def test_regional_grid_gets_num_obs_observations_all_inside(tmp_path, west, width, strategy):
    """A small box with num_obs = 200: 200 observations (assimilated + held out), all inside,
    not the few a draw over the whole globe leaves (the box is ~2 % of the sphere)."""
    cfg = box_config(box_file(tmp_path, west, width, "signed"), num_obs=200)
    cfg.observations.strategy, cfg.observations.heldout_fraction = strategy, 0.1
    obs = prepare_inputs(cfg, fake_prior()).observations[0]
    assert len(obs) == 200 and (~obs.assimilated).sum() == 20
    east = np.mod(obs.lon - west, 360.0)
    assert ((obs.lat >= 30.0) & (obs.lat <= 70.0) & (east <= width) & (obs.lon >= 0) & (obs.lon < 360)).all()
    if strategy == "uniform":  # evenly spread: no two points closer than a fraction of the mean spacing
        d = np.hypot(obs.lat[:, None] - obs.lat, (east[:, None] - east) * np.cos(np.deg2rad(50.0)))
        np.fill_diagonal(d, np.inf)
        assert d.min() > 0.3 * np.sqrt(40.0 * width * np.cos(np.deg2rad(50.0)) / 200)


def test_regional_grid_is_not_periodic_and_samples_across_its_own_seam(tmp_path):
    path = box_file(tmp_path, -20.0, 60.0, "signed")
    with open_source(path) as src:
        f = src.field("tas", TIMES[0], 0.0)
    assert not f.periodic and f.lon[0] == 340.0 and f.lon[-1] == 400.0
    lat = np.array([50.0, 50.0, 50.5, 40.8, 40.0])
    lon = np.array([-0.5, 359.5, 0.25, 187.9, 41.0])  # across Greenwich, both conventions; two outside
    got = f.sample(lat, lon)
    want = 280.0 + 0.2 * lat + 0.5 * np.mod(lon + 20.0, 360.0)
    np.testing.assert_allclose(got[:3], want[:3], atol=1e-9)
    assert np.isnan(got[3:]).all() and not f.contains(lat, lon)[3:].any()


# --- Forecast layouts: observations at the VALID time (DESIGN.md §3).
REF = pd.to_datetime(["2020-01-01T00:00", "2020-01-01T06:00", "2020-01-01T12:00"]).to_numpy("datetime64[ns]")


def forecast_ds(ref: np.ndarray, steps_h: list[int], with_valid_time: bool) -> xr.Dataset:
    """cfgrib layout: t2m(time, [step,] latitude, longitude), value 270 + valid hour + 0.01 · step hours."""
    step = np.array(steps_h, "timedelta64[h]").astype("timedelta64[ns]")
    valid = ref[:, None] + step[None, :]
    hours = (valid - np.datetime64("2020-01-01T00:00")).astype("timedelta64[h]").astype(float)
    value = 270.0 + hours + 0.01 * np.array(steps_h, float)[None, :]
    field = value[:, :, None, None] + np.zeros((1, 1, LAT.size, LON.size))
    if len(steps_h) == 1:
        ds = xr.Dataset({"t2m": (("time", "latitude", "longitude"), field[:, 0], {"units": "K"})},
                        coords={"time": ref, "step": step[0], "latitude": LAT[::-1], "longitude": LON})
        if with_valid_time:
            ds = ds.assign_coords(valid_time=("time", valid[:, 0]))
    else:
        ds = xr.Dataset({"t2m": (("time", "step", "latitude", "longitude"), field, {"units": "K"})},
                        coords={"time": ref, "step": step, "latitude": LAT[::-1], "longitude": LON})
        if with_valid_time:
            ds = ds.assign_coords(valid_time=(("time", "step"), valid))
    return ds


@pytest.mark.parametrize("with_valid_time", [True, False], ids=["valid_time", "time_plus_step"])
def test_forecast_file_is_read_at_valid_time(tmp_path, with_valid_time):
    path = tmp_path / "fc.nc"
    forecast_ds(REF, [6], with_valid_time).to_netcdf(path, engine="netcdf4")
    times = ["2020-01-01T06:00", "2020-01-01T12:00", "2020-01-01T18:00"]
    cfg = box_config(str(path), num_obs=50).model_copy(update=dict(times=times))
    cfg.observations.time_tolerance_hours = 0.0
    inputs = prepare_inputs(cfg, fake_prior())
    for t, obs in zip(times, inputs.observations):
        hour = pd.Timestamp(t).hour
        assert (obs.time == np.datetime64(t, "ns")).all()
        np.testing.assert_allclose(obs.value, 270.0 + hour + 0.06, atol=1e-9)


def test_forecast_file_with_several_steps_keeps_the_shortest_step_per_valid_time(tmp_path):
    path = tmp_path / "fc_steps.nc"
    forecast_ds(REF[:2], [0, 6, 12], True).to_netcdf(path, engine="netcdf4")
    with open_source(str(path)) as src:
        (var,) = src.variables
        want_times = pd.to_datetime([f"2020-01-01T{h:02d}:00" for h in (0, 6, 12, 18)]).to_numpy("datetime64[ns]")
        np.testing.assert_array_equal(var.times, want_times)
        # 06: reference 06 + 0 h beats 00 + 6 h; 12: 06 + 6 h beats 00 + 12 h; 18: only 06 + 12 h.
        for t, step in zip(want_times, (0, 0, 6, 12)):
            f = src.field("tas", t, 0.0)
            hour = (t - np.datetime64("2020-01-01T00:00")).astype("timedelta64[h]").astype(float)
            np.testing.assert_allclose(f.values, 270.0 + hour + 0.01 * step, atol=1e-9)
