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
