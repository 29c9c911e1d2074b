"""SPEEDY dataset helpers (data/speedy.py): vertical interpolation, regridding, the store layout.

A full jcm integration takes minutes and is exercised by `ensemble-da data speedy`; here one
two-day run (a day of spin-up, one kept) checks the output interval against a daily run.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from ensemble_da.data.speedy import (
    _G,
    _K,
    _LAPSE,
    read_speedy,
    regrid_to_healpix,
    save_sample,
    sigma_to_pressure_levels,
    write_dataset,
)
from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid
from ensemble_da.priors.checkpoint import shipped_heldout_sample

SIGMA = np.array([0.95, 0.835, 0.685, 0.51, 0.34, 0.2, 0.095, 0.025])  # SPEEDY full levels, surface first


def test_log_pressure_interpolation_is_exact_for_profiles_linear_in_log_p():
    ps = np.array([[101000.0, 98000.0]])  # (time, column)
    lnp = np.log(SIGMA[None, :, None] * ps[:, None, :])
    field = 3.0 * lnp - 7.0
    out = sigma_to_pressure_levels(field, SIGMA, ps, [850, 500, 300], below="hold")
    for j, level in enumerate([850, 500, 300]):
        np.testing.assert_allclose(out[:, j], 3.0 * np.log(level * 100.0) - 7.0, atol=1e-9)


def test_below_the_lowest_level_standard_lapse_rate_and_hydrostatic_geopotential():
    ps = np.array([[60000.0]])  # high plateau: 850 hPa is far below the lowest level (570 hPa)
    p_low = SIGMA[0] * ps[0, 0]
    t_low, z_low = 250.0, 40000.0
    temp = np.full((1, 8, 1), t_low)
    geo = np.full((1, 8, 1), z_low)
    t850 = sigma_to_pressure_levels(temp, SIGMA, ps, [850], below="temperature")[0, 0, 0]
    z850 = sigma_to_pressure_levels(geo, SIGMA, ps, [850], below="geopotential", temperature=temp)[0, 0, 0]
    assert t850 == pytest.approx(t_low * (85000.0 / p_low) ** _K)
    # hydrostatic: dZ/dlnp = -R_d T along the lapse-rate profile, integrated numerically
    lnp = np.linspace(np.log(p_low), np.log(85000.0), 20001)
    t_profile = t_low * np.exp((lnp - np.log(p_low)) * _K)
    z_numeric = z_low - _K * _G / _LAPSE * np.trapezoid(t_profile, lnp)
    assert z850 == pytest.approx(z_numeric, rel=1e-7)
    assert t850 > t_low and z850 < z_low
    wind = sigma_to_pressure_levels(np.arange(8.0)[None, :, None], SIGMA, ps, [850], below="hold")
    assert wind[0, 0, 0] == 0.0  # held at the lowest level's value


def test_regridding_a_smooth_field_to_healpix():
    lon = np.arange(96) * 3.75
    lat = np.linspace(-87.159, 87.159, 48)
    lo, la = np.meshgrid(np.deg2rad(lon), np.deg2rad(lat), indexing="ij")
    field = np.cos(la) * np.cos(lo) + 0.5 * np.sin(la)  # a degree-1 harmonic: smooth everywhere
    grid = HealpixGrid(16)
    out = regrid_to_healpix(field[None], lon, lat, grid)[0]
    hl, hb = (np.deg2rad(a) for a in grid.lonlat)
    expected = np.cos(hb) * np.cos(hl) + 0.5 * np.sin(hb)
    # bilinear error ~ (grid spacing)² · curvature / 8 ≈ (0.065 rad)² / 8 ≈ 5e-4, poles a bit worse
    assert np.abs(out - expected).max() < 5e-3


def test_store_round_trip_and_sample(tmp_path):
    grid = HealpixGrid(2)
    rng = np.random.default_rng(0)
    state = (rng.normal(size=(5, 2, grid.npix)) * [[[2.0], [300.0]]] + [[[280.0], [55000.0]]]).astype(np.float32)
    times = np.datetime64("2001-03-01", "ns") + np.arange(5) * np.timedelta64(1, "D")
    write_dataset(tmp_path / "d.zarr", state, times, ["T850", "Z500"], grid, attrs={"seed": 3})
    with pytest.raises(Exception):
        write_dataset(tmp_path / "d.zarr", state, times, ["T850", "Z500"], grid)  # no silent overwrite
    ds = xr.open_zarr(tmp_path / "d.zarr", consolidated=False)
    assert ds["state"].dims == ("time", "channel", "cell")
    assert ds["cell_ids"].attrs == {"grid_name": "healpix", "level": 1, "indexing_scheme": "nested"}
    d = read_speedy(tmp_path / "d.zarr")
    np.testing.assert_array_equal(d.state, state)
    np.testing.assert_allclose(d.center, state.astype(np.float64).mean(axis=(0, 2)))
    np.testing.assert_allclose(d.scale, state.astype(np.float64).std(axis=(0, 2)))
    save_sample(d, np.array([1, 3]), tmp_path / "s.npz")
    s = read_speedy(tmp_path / "s.npz")
    np.testing.assert_array_equal(s.state, state[[1, 3]])
    assert s.data_hash == d.data_hash and s.channels == ("T850", "Z500") and s.nside == 2
    np.testing.assert_array_equal(s.time, times[[1, 3]])
    with pytest.raises(InputError, match="not found"):
        read_speedy(tmp_path / "missing.zarr")


def test_unknown_or_unavailable_channels_are_input_errors(tmp_path):
    from ensemble_da.data.speedy import generate_speedy

    with pytest.raises(InputError, match="not available from SPEEDY"):
        generate_speedy(tmp_path / "x.zarr", channels=["tas"])
    with pytest.raises(InputError, match="unknown channel"):
        generate_speedy(tmp_path / "x.zarr", channels=["T85O"])
    (tmp_path / "exists.zarr").mkdir()
    with pytest.raises(InputError, match="already exists"):
        generate_speedy(tmp_path / "exists.zarr")


def test_six_hourly_output_is_the_daily_trajectory_sampled_four_times_a_day(tmp_path):
    from ensemble_da.data.speedy import generate_speedy

    common = dict(days=1, spinup_days=1, chunk_days=1, nside=4, channels=["T850", "Z500"], progress=False)
    daily = read_speedy(generate_speedy(tmp_path / "daily.zarr", **common))
    six = read_speedy(generate_speedy(tmp_path / "six.zarr", interval_hours=6, **common))
    assert six.state.shape == (4, 2, 192) and daily.state.shape == (1, 2, 192)
    np.testing.assert_array_equal(np.diff(six.time), np.timedelta64(6, "h"))
    # The same integration, saved more often: the state at the end of the day is the daily state.
    assert six.time[-1] == daily.time[0]
    np.testing.assert_allclose(six.state[-1], daily.state[0], rtol=1e-6)
    assert xr.open_zarr(tmp_path / "six.zarr", consolidated=False).attrs["interval_hours"] == 6
    assert xr.open_zarr(tmp_path / "daily.zarr", consolidated=False).attrs["interval_hours"] == 24
    with pytest.raises(InputError, match="interval_hours must divide 24"):
        generate_speedy(tmp_path / "x.zarr", interval_hours=5)


def test_packaged_held_out_sample_is_physical():
    s = read_speedy(shipped_heldout_sample())
    assert s.state.shape[1:] == (6, 12 * 16**2) and s.nside == 16
    assert s.channels == ("T850", "T500", "T300", "U850", "V850", "Z500")
    t850, z500 = s.state[:, 0], s.state[:, 5]
    assert 200 < t850.min() and t850.max() < 320  # K
    assert 4.5e4 < z500.min() and z500.max() < 6.1e4  # m2 s-2 (4.6-6.2 km geopotential height)
    # colder aloft everywhere on average: T850 > T500 > T300 in the global mean
    means = s.state.mean(axis=(0, 2))
    assert means[0] > means[1] > means[2]
