"""Opening by content (obs/formats.py): GRIB written with ecCodes and read through cfgrib, zip
archives of NetCDF files (the new CDS download), both also under a `.nc` name; each then goes
through the same layout normalisation as NetCDF (a regional forecast GRIB is read at valid time)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from conftest import small_config
from ensemble_da.channels import Normalization
from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.era5 import open_source
from ensemble_da.obs.formats import file_kind
from ensemble_da.obs.inputs import prepare_inputs

BOX_LAT = np.arange(70.0, 29.0, -1.0)
BOX_LON = np.arange(-20.0, 41.0, 1.0)  # across Greenwich
CHANNELS = ["tas", "pres_msl"]


def t2m(lat, lon, ref_hour: int, step_h: int) -> np.ndarray:
    """280 + 0.2·lat + 0.5·lon (lon east of −20 counted from −20) + valid hour + 0.01·step."""
    return 280.0 + 0.2 * lat[:, None] + 0.5 * lon[None, :] + ref_hour + step_h + 0.01 * step_h


def write_grib(path, ref_hours=(0, 6), steps=(0, 6)) -> None:
    """GRIB2 2 m temperature on the 1° box 70N–30N, 20W–40E (longitudes 340 → 40 in GRIB), every
    reference time × step, from ecCodes' regular lat/lon sample."""
    import eccodes  # after ensemble_da (formats.py must load SQLite before ecCodes does)

    with open(path, "wb") as f:
        for hour in ref_hours:
            for step in steps:
                h = eccodes.codes_grib_new_from_samples("regular_ll_sfc_grib2")
                for key, value in dict(
                    Ni=BOX_LON.size, Nj=BOX_LAT.size, latitudeOfFirstGridPointInDegrees=70.0,
                    latitudeOfLastGridPointInDegrees=30.0, longitudeOfFirstGridPointInDegrees=340.0,
                    longitudeOfLastGridPointInDegrees=40.0, iDirectionIncrementInDegrees=1.0,
                    jDirectionIncrementInDegrees=1.0, dataDate=20200101, dataTime=hour * 100, stepUnits=1,
                    forecastTime=step,
                ).items():
                    eccodes.codes_set(h, key, value)
                eccodes.codes_set(h, "shortName", "2t")
                eccodes.codes_set_values(h, t2m(BOX_LAT, BOX_LON, hour, step).ravel())
                eccodes.codes_write(h, f)
                eccodes.codes_release(h)


def prior():
    norm = Normalization(tuple(CHANNELS), np.zeros(2), np.ones(2))
    return SimpleNamespace(normalization=norm, grid=HealpixGrid(4))


def config(path, channels, times, **obs):
    return small_config(times=times, model=dict(channels=CHANNELS),
                        observations={**dict(source="era5", path=[str(path)], channels=channels, num_obs=3000,
                                             strategy="random", sigma={}, heldout_fraction=0.0,
                                             time_tolerance_hours=0.0), **obs})


def test_grib_named_nc_regional_forecast_reads_at_valid_time(tmp_path):
    path = tmp_path / "download.nc"  # the CDS default format under a NetCDF name
    write_grib(path)
    assert file_kind(str(path)) == "grib"
    times = ["2020-01-01T06:00", "2020-01-01T12:00"]
    inputs = prepare_inputs(config(path, ["tas"], times), prior())
    # 06: reference 06 + 0 h (not 00 + 6 h); 12: 06 + 6 h. GRIB packs to 16 bits over a 40 K range:
    # quantisation ≤ 40 / 2¹⁶ ≈ 6e-4 K, so 2e-3 K separates the candidate fields (0.06 K apart).
    for t, obs, (ref, step) in zip(times, inputs.observations, [(6, 0), (6, 6)]):
        assert len(obs) > 0 and (obs.time == np.datetime64(t, "ns")).all()
        east = np.mod(obs.lon + 20.0, 360.0)
        assert ((obs.lat >= 30) & (obs.lat <= 70) & (east <= 60)).all()
        want = 280.0 + 0.2 * obs.lat + 0.5 * (east - 20.0) + ref + step + 0.01 * step
        np.testing.assert_allclose(obs.value, want, atol=2e-3)
    assert inputs.qc.outside_domain == 0 and inputs.qc.kept == inputs.qc.read == 2 * 3000  # all drawn in the box
    assert not list(tmp_path.glob("*.idx"))  # no index files left beside the user's data


def _nc(ds: xr.Dataset, path) -> None:
    ds.to_netcdf(path, engine="netcdf4", format="NETCDF4")


def test_zip_of_netcdf_named_nc_is_read_member_by_member(tmp_path):
    lat, lon = np.linspace(90, -90, 37), np.arange(72) * 5.0
    times = pd.to_datetime(["2020-01-01T00:00", "2020-01-01T06:00"]).to_numpy("datetime64[ns]")
    la = np.broadcast_to(lat[:, None], (37, 72))
    coords = {"valid_time": times, "latitude": lat, "longitude": lon}
    _nc(xr.Dataset({"t2m": (("valid_time", "latitude", "longitude"), np.stack([250 + 0.1 * la, 251 + 0.1 * la]),
                            {"units": "K"})}, coords=coords), tmp_path / "instant.nc")
    _nc(xr.Dataset({"msl": (("valid_time", "latitude", "longitude"), np.stack([1000 + 0.5 * la, 1001 + 0.5 * la]),
                            {"units": "hPa"})}, coords=coords), tmp_path / "accum.nc")
    path = tmp_path / "data.nc"
    with zipfile.ZipFile(path, "w") as z:
        z.write(tmp_path / "instant.nc", "data_stream-oper_stepType-instant.nc")
        z.write(tmp_path / "accum.nc", "data_stream-oper_stepType-accum.nc")
    assert file_kind(str(path)) == "zip"
    inputs = prepare_inputs(config(path, CHANNELS, [str(t) for t in times], num_obs=200), prior())
    for k, obs in enumerate(inputs.observations):
        tas, msl = obs.channel == "tas", obs.channel == "pres_msl"
        assert tas.any() and msl.any()
        np.testing.assert_allclose(obs.value[tas], 250 + k + 0.1 * obs.lat[tas], atol=1e-9)
        np.testing.assert_allclose(obs.value[msl], (1000 + k + 0.5 * obs.lat[msl]) * 100.0, atol=1e-7)
    with open_source(str(path)) as src:
        assert {v.path for v in src.variables} == {f"{path}:data_stream-oper_stepType-instant.nc",
                                                   f"{path}:data_stream-oper_stepType-accum.nc"}


def test_grib_without_the_extra_is_one_line_naming_the_extra(tmp_path):
    """In a fresh interpreter where cfgrib cannot be imported (as without `ensemble-da[grib]`)."""
    path = tmp_path / "download.nc"
    write_grib(path, ref_hours=(0,), steps=(0,))
    code = (
        "import sys; sys.modules['cfgrib'] = None\n"
        "from ensemble_da.cli import app\n"
        f"app(['run', '--set', 'grid.nside=4', '--set', 'observations.source=era5', '--set', 'observations.path={path}',"
        f" '--set', 'cluster.address=inprocess', '--out', '{tmp_path / 'run'}'])\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert str(path) in lines[0] and "GRIB" in lines[0] and "pip install 'ensemble-da[grib]'" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content,kind", [(b"GRIB\x00\x00", "grib"), (b"PK\x03\x04", "zip"), (b"CDF\x01", "netcdf"),
                                          (b"\x89HDF\r\n", "netcdf")])
def test_file_kind_by_content_not_suffix(tmp_path, content, kind):
    path = tmp_path / "x.grib"  # the suffix says GRIB; the content decides
    path.write_bytes(content + b"\x00" * 16)
    assert file_kind(str(path)) == kind


def test_sqlite_stays_usable_for_mlflow_after_reading_grib(tmp_path):
    """ecCodes bundles SQLite 3.26; MLflow's store needs >= 3.31 (a fresh interpreter, as a run)."""
    path = tmp_path / "download.grib"
    write_grib(path, ref_hours=(0,), steps=(0,))
    code = (
        "from ensemble_da.obs.era5 import open_source\n"
        f"open_source({str(path)!r}).close()\n"
        "import sqlite3\n"
        "print(sqlite3.sqlite_version)\n"
        "assert sqlite3.sqlite_version_info >= (3, 31), sqlite3.sqlite_version\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
