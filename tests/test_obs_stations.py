"""Station tables (obs/stations.py) through prepare_inputs: CSV = Parquet, time windows, sigma."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from conftest import small_config
from ensemble_da.channels import Normalization
from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.inputs import prepare_inputs
from ensemble_da.obs.stations import open_stations

CHANNELS = ["T850", "tas", "uas"]


def prior():
    norm = Normalization(tuple(CHANNELS), np.zeros(3), np.ones(3))
    return SimpleNamespace(normalization=norm, grid=HealpixGrid(4))


def table(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """Reports over 00Z ± 2 h and 06Z ± 2 h, in earth2studio column names and variable names."""
    rng = np.random.default_rng(seed)
    lat = rng.uniform(-80, 80, n)
    lon = rng.uniform(-180, 180, n)
    hours = np.where(np.arange(n) % 2 == 0, 0.0, 6.0) + rng.uniform(-2, 2, n)
    time = (pd.Timestamp("2020-01-01T00:00") + pd.to_timedelta(hours, unit="h")).floor("s")
    variable = np.array(["t850", "t2m", "u10m"])[np.arange(n) % 3]
    value = np.where(variable == "u10m", 3.0, 250.0 + 30.0 * np.cos(np.deg2rad(lat)))
    return pd.DataFrame(dict(time=time, lat=lat, lon=lon, variable=variable, observation=value,
                             sigma=np.where(variable == "t850", 0.7, np.nan), station_id=[f"S{i:03d}" for i in range(n)]))


def config(path, **obs):
    return small_config(
        times=["2020-01-01T00:00", "2020-01-01T06:00"],
        model=dict(channels=CHANNELS),
        observations={**dict(source="stations", path=path, channels=CHANNELS, num_obs=1000, heldout_fraction=0.0,
                             sigma={"tas": 1.5}), **obs},
    )


def test_csv_and_parquet_give_the_same_observations(tmp_path):
    df = table()
    df.to_csv(tmp_path / "s.csv", index=False)
    df.to_parquet(tmp_path / "s.parquet")
    a = prepare_inputs(config(str(tmp_path / "s.csv")), prior())
    b = prepare_inputs(config(str(tmp_path / "s.parquet")), prior())
    for x, y in zip(a.observations, b.observations):
        np.testing.assert_array_equal(x.channel, y.channel)
        np.testing.assert_allclose(x.value, y.value)
        np.testing.assert_allclose(x.lat, y.lat)
        np.testing.assert_array_equal(x.time, y.time)
    assert a.qc.kept == len(df)


def test_reports_go_to_the_nearest_analysis_time_within_the_window(tmp_path):
    df = table()
    df.to_csv(tmp_path / "s.csv", index=False)
    inputs = prepare_inputs(config(str(tmp_path / "s.csv"), time_tolerance_hours=1.0), prior())
    for t, obs in zip(inputs.times, inputs.observations):
        dt = np.abs((obs.time - t).astype("timedelta64[s]").astype(float)) / 3600
        assert dt.max() <= 1.0
    n_in = (np.abs(((pd.to_datetime(df["time"]) - pd.Timestamp("2020-01-01")).dt.total_seconds() / 3600 + 3) % 6 - 3) <= 1).sum()
    assert sum(len(o) for o in inputs.observations) == n_in


def test_sigma_from_file_then_config_then_default(tmp_path):
    table().to_parquet(tmp_path / "s.parquet")
    obs = prepare_inputs(config(str(tmp_path / "s.parquet")), prior()).observations[0]
    assert set(obs.sigma[obs.channel == "T850"]) == {0.7}  # the file's column
    assert set(obs.sigma[obs.channel == "tas"]) == {1.5}  # observations.sigma
    assert set(obs.sigma[obs.channel == "uas"]) == {1.5}  # the table default for uas


def test_variable_names_map_to_channels(tmp_path):
    table().to_csv(tmp_path / "s.csv", index=False)
    src = open_stations(str(tmp_path / "s.csv"))
    assert src.channels == sorted(CHANNELS)


def test_num_obs_thins_uniformly_and_strategies_filter(tmp_path):
    df = table(n=600)
    df.to_parquet(tmp_path / "s.parquet")
    inputs = prepare_inputs(config(str(tmp_path / "s.parquet"), num_obs=50, strategy="uniform"), prior())
    assert all(len(o) == 50 for o in inputs.observations)
    assert inputs.qc.not_selected == 600 - 100
    from ensemble_da.obs.strategies import is_land

    land = prepare_inputs(config(str(tmp_path / "s.parquet"), strategy="land_only"), prior())
    assert all(is_land(o.lat, o.lon).all() for o in land.observations)
    assert 0.15 < land.qc.kept / 600 < 0.45  # ~29% of uniform points are on land


@pytest.mark.parametrize("tz", ["Z", "+02:00"])
def test_timezone_aware_times_are_utc(tmp_path, tz):
    df = table(n=6)
    shift = pd.Timedelta(hours=2) if tz == "+02:00" else pd.Timedelta(0)
    df["time"] = [(t + shift).strftime("%Y-%m-%dT%H:%M:%S") + tz for t in pd.to_datetime(df["time"])]
    df.to_csv(tmp_path / "s.csv", index=False)
    src = open_stations(str(tmp_path / "s.csv"))
    np.testing.assert_array_equal(src.frame["time"].to_numpy(), pd.to_datetime(table(n=6)["time"]).to_numpy())


def test_variables_that_are_not_asked_for_are_ignored_and_counted(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("time,lat,lon,variable,observation\n"
                    "2020-01-01T00:00:00Z,37.62,237.62,t2m,285.15\n"
                    "2020-01-01T00:00:00Z,37.62,237.62,ws10m,4.1\n")
    inputs = prepare_inputs(small_config(times=["2020-01-01T00:00"], model=dict(channels=CHANNELS),
                                         observations=dict(source="stations", path=str(path), channels=["tas"],
                                                           heldout_fraction=0.0)), prior())
    obs = inputs.observations[0]
    assert list(obs.channel) == ["tas"] and list(obs.value) == [285.15] and list(obs.lon) == [237.62]
    assert (inputs.qc.read, inputs.qc.other_variable, inputs.qc.kept) == (2, 1, 1)


def earth2studio_frame(n: int = 40, seed: int = 1) -> pd.DataFrame:
    """An earth2studio-style observation frame: extra columns and variables that are no channel."""
    rng = np.random.default_rng(seed)
    variable = np.array(["t2m", "ws10m", "d2m", "tp", "u10m"])[np.arange(n) % 5]
    return pd.DataFrame(dict(
        time=pd.Timestamp("2020-01-01T00:00", tz="UTC") + pd.to_timedelta(rng.integers(-60, 60, n), unit="min"),
        lat=rng.uniform(-60, 60, n), lon=rng.uniform(0, 360, n), observation=rng.uniform(270, 290, n),
        variable=variable, station=[f"{720000 + i}{i:05d}" for i in range(n)], elev=rng.uniform(0, 2000, n),
        type=["surface"] * n, source=["ISD"] * n,
    ))


def test_earth2studio_frame_with_extra_columns_and_variables_reads(tmp_path):
    df = earth2studio_frame()
    df.loc[df["variable"] == "u10m", "observation"] = 3.0
    df.to_parquet(tmp_path / "e2s.parquet")
    cfg = small_config(times=["2020-01-01T00:00"], model=dict(channels=CHANNELS),
                       observations=dict(source="stations", path=str(tmp_path / "e2s.parquet"), channels=["tas", "uas"],
                                         heldout_fraction=0.0, num_obs=1000))
    inputs = prepare_inputs(cfg, prior())
    obs = inputs.observations[0]
    want = df[df["variable"].isin(["t2m", "u10m"])]
    assert inputs.qc.other_variable == len(df) - len(want) == 24
    assert sorted(obs.value.tolist()) == sorted(want["observation"].tolist())
    src = open_stations(str(tmp_path / "e2s.parquet"))
    assert set(src.frame["station_id"]) == set(df["station"])


EPOCH = pd.to_datetime(["2020-01-01T00:00:00", "2020-01-01T05:30:00", "2020-01-01T06:00:01"])


@pytest.mark.parametrize("unit,factor", [("s", 1), ("ms", 1000), ("us", 10**6)])
def test_epoch_times_are_detected_by_magnitude(tmp_path, unit, factor):
    seconds = (EPOCH - pd.Timestamp("1970-01-01")).total_seconds().astype(np.int64)
    assert seconds[0] == 1577836800
    df = pd.DataFrame(dict(time=seconds * factor, lat=[1.0, 2, 3], lon=[1.0, 2, 3], variable="t2m", observation=280.0))
    df.to_csv(tmp_path / "s.csv", index=False)
    np.testing.assert_array_equal(open_stations(str(tmp_path / "s.csv")).frame["time"].to_numpy(), EPOCH.to_numpy())


def test_time_format_and_dayfirst_from_config(tmp_path):
    df = pd.DataFrame(dict(time=["13/01/2020 06:00", "01/02/2020 00:30"], lat=[1.0, 2], lon=[1.0, 2], variable="t2m",
                           observation=280.0))
    df.to_csv(tmp_path / "s.csv", index=False)
    want = pd.to_datetime(["2020-01-13T06:00", "2020-02-01T00:30"]).to_numpy()
    for kwargs in (dict(dayfirst=True), dict(time_format="%d/%m/%Y %H:%M")):
        np.testing.assert_array_equal(open_stations(str(tmp_path / "s.csv"), **kwargs).frame["time"].to_numpy(), want)
    seconds = pd.DataFrame(dict(time=[1000, 2000], lat=[1.0, 2], lon=[1.0, 2], variable="t2m", observation=280.0))
    seconds.to_csv(tmp_path / "early.csv", index=False)  # 1970: only read as epoch when asked to
    got = open_stations(str(tmp_path / "early.csv"), time_format="epoch_s").frame["time"].to_numpy()
    np.testing.assert_array_equal(got, pd.to_datetime(["1970-01-01T00:16:40", "1970-01-01T00:33:20"]).to_numpy())


def test_parquet_with_time_as_the_index(tmp_path):
    df = table()
    df.to_csv(tmp_path / "s.csv", index=False)
    df.set_index("time").to_parquet(tmp_path / "s.parquet")
    a = open_stations(str(tmp_path / "s.csv")).frame
    b = open_stations(str(tmp_path / "s.parquet")).frame
    np.testing.assert_array_equal(a["time"].to_numpy(), b["time"].to_numpy())
    np.testing.assert_allclose(a["value"].to_numpy(), b["value"].to_numpy())
