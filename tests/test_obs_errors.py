"""Every hard observation error of a run is exit 2 with one line `error: ...` naming the file,
variable or value, and nothing is written: the new run directory is not created and an existing
run directory beside it is left byte for byte as it was."""

from __future__ import annotations

import zipfile

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

from ensemble_da.cli import app

TIMES = pd.to_datetime(["2020-01-01T00:00", "2020-01-01T06:00"])
LAT = np.linspace(90, -90, 37)
LON = np.arange(72) * 5.0


def _era5(path, levels=(850, 500)):
    t = 250.0 + 30 * np.cos(np.deg2rad(LAT))[None, None, :, None] + np.zeros((2, len(levels), 37, 72))
    xr.Dataset({"t": (("valid_time", "pressure_level", "latitude", "longitude"), t, {"units": "K"})},
               coords={"valid_time": TIMES, "pressure_level": list(levels), "latitude": LAT, "longitude": LON}
               ).to_netcdf(path, engine="netcdf4")


def _stations(path, **change):
    df = pd.DataFrame(dict(time=["2020-01-01T00:00", "2020-01-01T06:00"] * 3, lat=[0.0, 10, 20, 30, 40, 50],
                           lon=[0.0, 10, 20, 30, 40, 50], variable=["T850"] * 6, observation=[280.0] * 6,
                           sigma=[0.5] * 6))
    for col, (row, value) in change.items():
        df.loc[row, col] = value
    df.to_csv(path, index=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    _era5(d / "t.nc")
    _stations(d / "ok.csv")
    _stations(d / "lat95.csv", lat=(2, 95.0))
    _stations(d / "sigma0.csv", sigma=(1, 0.0))
    pd.DataFrame(dict(time=["2020-01-01"], lat=[0.0], lon=[0.0], variable=["T850"])).to_csv(d / "nocol.csv", index=False)
    _stations(d / "dayfirst.csv", time=(3, "01/01/2020 06:00"))
    epoch = pd.read_csv(d / "ok.csv")
    epoch["time"] = [1577836800, 1577858400, 1577836800, 1577858400, 1577858400000, 1577858400]  # row 4 in ms
    epoch.to_csv(d / "epoch_mixed.csv", index=False)
    epoch["time"] = [20200101] * 6
    epoch.to_csv(d / "yyyymmdd.csv", index=False)
    ds = xr.open_dataset(d / "t.nc").load()
    ds["t"].attrs["units"] = "hPa"
    ds.to_netcdf(d / "t_hpa.nc", engine="netcdf4")
    ds["t"].attrs["units"] = "bananas"
    ds.to_netcdf(d / "t_bananas.nc", engine="netcdf4")
    (d / "garbage.nc").write_text("this is not a NetCDF file\n")
    with zipfile.ZipFile(d / "download.nc", "w") as z:
        z.write(d / "t.nc", "data_stream-oper_stepType-instant.nc")
        z.writestr("readme.txt", "not data")
    (d / "x.grib").write_bytes(b"GRIB")
    # A curvilinear grid (2-D latitude/longitude) and an unstructured one (points along `values`).
    y, x = np.meshgrid(np.arange(5.0), np.arange(6.0), indexing="ij")
    xr.Dataset({"t": (("time", "y", "x"), np.full((1, 5, 6), 280.0))},
               coords={"time": TIMES[:1], "latitude": (("y", "x"), 40 + y), "longitude": (("y", "x"), x + 0.1 * y)}
               ).to_netcdf(d / "curvilinear.nc", engine="netcdf4")
    xr.Dataset({"t2m": (("time", "values"), np.full((1, 4), 280.0))},
               coords={"time": TIMES[:1], "latitude": ("values", [0.0, 1, 2, 3]), "longitude": ("values", [0.0, 1, 2, 3])}
               ).to_netcdf(d / "unstructured.nc", engine="netcdf4")
    xr.Dataset({"tas": (("time", "cell"), np.full((1, 192), 280.0))}, coords={"time": TIMES[:1]}
               ).to_netcdf(d / "healpix.nc", engine="netcdf4")
    return d


def _config(tmp_path, files, obs: dict, **top) -> str:
    tree = dict(
        run_name="err",
        grid=dict(nside=4),
        model=dict(kind="gaussian", channels=["T850", "T500", "T300"], mean=dict(T850=275.0, T500=255.0, T300=230.0),
                   std=dict(T850=6.0, T500=5.0, T300=4.0), length_scale_km=2000),
        sampler=dict(steps=2),
        ensemble=dict(members=2),
        observations={**dict(source="era5", path=str(files / "t.nc"), channels=["T850", "T500"], num_obs=20,
                             sigma=dict(T850=0.5, T500=0.5)), **obs},
        cluster=dict(address="inprocess"),
    )
    tree["times"] = top.get("times", [str(t) for t in TIMES])
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def _snapshot(root) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def existing_run(tmp_path):
    run = tmp_path / "runs" / "previous"
    (run / "analysis.zarr").mkdir(parents=True)
    (run / "config.yaml").write_text("run_name: previous\n")
    (run / "analysis.zarr" / "zarr.json").write_text("{}")
    (run / "summary.json").write_text('{"oa_rmse/T850": 0.4}')
    return run


CASES = {
    "missing file": (dict(path="{d}/nope.nc"), {}, ["file not found", "nope.nc"]),
    "glob matches nothing": (dict(path="{d}/none_*.nc"), {}, ["no file matches", "none_*.nc"]),
    "unreadable file": (dict(path="{d}/garbage.nc"), {}, ["garbage.nc", "cannot read as NetCDF"]),
    "grib file": (dict(path="{d}/x.grib"), {}, ["x.grib", "GRIB"]),
    "channel not in file": (dict(channels=["T850", "T300"], sigma={}), {},
                            ["t.nc", "'T300'", "contain channels ['T850', 'T500']"]),
    "channel not in prior": (dict(channels=["T850", "Q700"], sigma={}), {},
                             ["'Q700' is not a channel of the prior", "['T850', 'T500', 'T300']"]),
    "sigma <= 0 in config": (dict(sigma=dict(T850=-1.0, T500=0.5)), {}, ["observations.sigma", "T850", "-1.0"]),
    "no data within tolerance": (dict(), dict(times=["2021-06-01T00:00"]),
                                 ["t.nc", "T850", "within 3 h", "2021-06-01T00:00", "nearest: 2020-01-01T06:00"]),
    "truth file missing": (dict(truth_path="{d}/no_truth.zarr"), {}, ["truth_path", "no_truth.zarr"]),
    "curvilinear grid": (dict(path="{d}/curvilinear.nc", channels=["T850"]), {}, ["curvilinear.nc", "cannot read the grid", "'latitude'"]),
    "unstructured grid": (dict(path="{d}/unstructured.nc", channels=["T850"]), {}, ["unstructured.nc", "cannot read the grid"]),
    "healpix file as era5": (dict(path="{d}/healpix.nc", channels=["T850"]), {}, ["healpix.nc", "no latitude/longitude"]),
    "station |lat| > 90": (dict(source="stations", path="{d}/lat95.csv", channels=["T850"]), {},
                           ["lat95.csv", "row 2", "latitude 95"]),
    "station sigma <= 0": (dict(source="stations", path="{d}/sigma0.csv", channels=["T850"]), {},
                           ["sigma0.csv", "row 1", "sigma must be > 0, got 0"]),
    "station missing column": (dict(source="stations", path="{d}/nocol.csv", channels=["T850"]), {},
                               ["nocol.csv", "'observation'"]),
    "station channel absent": (dict(source="stations", path="{d}/ok.csv", channels=["T850", "T500"]), {},
                               ["ok.csv", "'T500'", "['T850']"]),
    "station day-first date": (dict(source="stations", path="{d}/dayfirst.csv", channels=["T850"]), {},
                               ["dayfirst.csv", "row 3", "'01/01/2020 06:00'", "ISO 8601", "observations.dayfirst"]),
    "station time_format mismatch": (dict(source="stations", path="{d}/ok.csv", channels=["T850"],
                                          time_format="%d/%m/%Y %H:%M"), {},
                                     ["ok.csv", "row 0", "'2020-01-01T00:00'", "'%d/%m/%Y %H:%M'"]),
    "station epoch unit changes": (dict(source="stations", path="{d}/epoch_mixed.csv", channels=["T850"]), {},
                                   ["epoch_mixed.csv", "row 4", "1577858400000", "epoch s", "like row 0"]),
    "station dates as numbers": (dict(source="stations", path="{d}/yyyymmdd.csv", channels=["T850"]), {},
                                 ["yyyymmdd.csv", "row 0", "20200101", "time_format", "%Y%m%d"]),
    "units of another quantity": (dict(path="{d}/t_hpa.nc"), {}, ["t_hpa.nc", "'t'", "units 'hPa' cannot be converted to 'K'"]),
    "unreadable units": (dict(path="{d}/t_bananas.nc"), {}, ["t_bananas.nc", "'t'", "units 'bananas'"]),
    "zip member not data": (dict(path="{d}/download.nc"), {}, ["download.nc:readme.txt", "cannot read as NetCDF"]),
    "station no data within tolerance": (dict(source="stations", path="{d}/ok.csv", channels=["T850"]),
                                         dict(times=["2020-01-02T00:00"]), ["ok.csv", "within 3 h", "2020-01-02T00:00"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hard_errors_exit_2_with_one_line_and_write_nothing(case, files, tmp_path, existing_run):
    obs, top, expected = CASES[case]
    obs = {k: v.format(d=files) if isinstance(v, str) else v for k, v in obs.items()}
    cfg = _config(tmp_path, files, obs, **top)
    before = _snapshot(existing_run.parent)
    new = existing_run.parent / "new"
    res = CliRunner().invoke(app, ["run", cfg, "--out", str(new)])
    assert res.exit_code == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert not new.exists()
    assert _snapshot(existing_run.parent) == before


def test_osse_refuses_an_existing_directory(files, tmp_path, existing_run):
    cfg = _config(tmp_path, files, {})
    before = _snapshot(existing_run)
    res = CliRunner().invoke(app, ["osse", cfg, "--out", str(existing_run)])
    assert res.exit_code == 2
    assert res.stderr.strip().startswith("error: ") and "exists and is not empty" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert _snapshot(existing_run) == before
    assert [p.name for p in existing_run.parent.iterdir()] == ["previous"]  # no partial directory left
