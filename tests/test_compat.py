"""The seed sketch's calls over our core (`ensemble_da.compat`): shapes, pixel order, honoured
observation uncertainty, the ERA5 and synthetic set-ups."""

from __future__ import annotations

import json
from pathlib import Path

import healpy as hp
import numpy as np
import pytest
import torch
import xarray as xr

from ensemble_da.compat import (
    RegressionGuidedModel,
    load_custom_model_with_regression_guidance,
    load_era5_for_regression_guidance,
    synthetic_regression_guidance_setup,
)
from ensemble_da.errors import InputError
from plugin_denoiser import white_noise
from cbottle_helpers import CHANNELS, standin, write_checkpoint  # noqa: F401


@pytest.fixture
def cbottle_checkpoint(tmp_path, standin):  # noqa: F811
    return write_checkpoint(tmp_path / "a.checkpoint", seed=1)


def test_seed_synthetic_method_on_a_cbottle_checkpoint(cbottle_checkpoint):
    with pytest.raises(InputError, match="conditioned on SST"):
        load_custom_model_with_regression_guidance(str(cbottle_checkpoint))
    model = load_custom_model_with_regression_guidance(str(cbottle_checkpoint), model_name="my-weather-model", sst=291.0)
    locations = torch.tensor([0, 5, 17])  # in the model's own order: HEALPIX_PAD_XY
    model.set_regression_guidance(
        observation_data=torch.tensor([[271.0, 286.0], [265.0, 290.0], [275.0, 281.0]]),
        observation_locations=locations,
        observation_variables=["T850", "tas"],
        observation_uncertainty=0.1,
        guidance_scale=1.0,
    )
    ref = json.loads((Path(__file__).parent / "data" / "earth2grid_pad_xy.json").read_text())["nest_index_at_pad_xy"]["2"]
    cells = model.operator.flat[:, 0] % 48
    np.testing.assert_array_equal(cells, np.repeat(np.asarray(ref)[[0, 5, 17]], 2))
    batch = {"target": torch.randn(2, 5, 1, 48), "second_of_day": torch.tensor([0.0, 0.0]), "day_of_year": torch.tensor([40.0, 40.0])}
    model.sampler["steps"] = 4
    output, coords = model.sample(batch, seed=42)
    assert output.shape == (2, 5, 1, 48) and torch.isfinite(output).all()
    assert coords.channels == tuple(CHANNELS) and coords.pixel_order == "nest" and coords.nside == 2


@pytest.mark.parametrize("s", [0.1, 3.0, 12.0])
def test_observation_uncertainty_is_honoured(s):
    """White-noise prior (T850: centre 275 K, scale 6 K), one observation of 287 K with error s:
    the exact posterior is N(275 + 12/(1 + r²), 6² r²/(1 + r²)), r = s/6. With the default (MMPS)
    and 128 members, the mean's standard error is ≤ 0.5 K and the std's ≤ 6%: tolerances of 4
    standard errors. The sketch ignored s; its default 0.1 K is included."""
    model = RegressionGuidedModel(white_noise(nside=1), sampler=dict(steps=24, batch_size=128))
    model.set_regression_guidance([[287.0]], [4], ["T850"], observation_uncertainty=s)
    out, _ = model.sample({"target": torch.zeros(128, 2, 1, 12)}, seed=1)
    r2 = (s / 6.0) ** 2
    mean, std = 275.0 + 12.0 / (1 + r2), 6.0 * np.sqrt(r2 / (1 + r2))
    x = out[:, 0, 0, 4].double().numpy()
    assert abs(x.mean() - mean) < 4 * std / np.sqrt(128) + 0.01
    assert abs(x.std(ddof=1) / std - 1) < 4 * np.sqrt(1 / 254) + 0.05


def test_era5_loader_reads_values_at_model_pixels(tmp_path):
    lat = np.linspace(90, -90, 73)
    lon = np.arange(0, 360, 2.5)
    t = 250.0 + 0.2 * lat[:, None] + 0 * lon[None, :]
    xr.Dataset(
        {"t": (("time", "level", "latitude", "longitude"), t[None, None].astype(np.float32))},
        coords={"time": [np.datetime64("2021-01-01T00:00", "ns")], "level": [850], "latitude": lat, "longitude": lon},
    ).to_netcdf(tmp_path / "era5.nc")
    model = RegressionGuidedModel(white_noise(nside=4))
    data, locs = load_era5_for_regression_guidance(str(tmp_path / "era5.nc"), ["T850"], num_pixels=50, model=model)
    assert data.shape == (50, 1) and locs.shape == (50,)
    _, lat_c = hp.pix2ang(4, model.to_nest(locs.numpy()), nest=True, lonlat=True)
    np.testing.assert_allclose(data[:, 0].numpy(), 250.0 + 0.2 * lat_c, atol=1e-3)
    with pytest.raises(InputError, match="T500"):
        load_era5_for_regression_guidance(str(tmp_path / "era5.nc"), ["T500"], num_pixels=10, model=model)


def test_synthetic_setup_is_an_osse_the_posterior_moves_towards():
    model = RegressionGuidedModel(white_noise(nside=2), sampler=dict(steps=16, batch_size=16))
    truth, batch = synthetic_regression_guidance_setup(model, ["T850", "T500"], num_obs=30, observation_uncertainty=0.5, batch_size=16)
    out, _ = model.sample(batch, seed=5)
    mean = out[:, :, 0].mean(0).numpy()
    observed = np.unique(model.operator.flat[:, 0])
    err_post = np.abs(mean.reshape(-1)[observed] - truth.reshape(-1)[observed]).mean()
    prior_mean = model.denoiser.normalization.center[observed // 48]
    err_prior = np.abs(prior_mean - truth.reshape(-1)[observed]).mean()
    assert err_post < 0.3 * err_prior


def test_sample_takes_a_member_count_and_refuses_other_batches():
    """The sketch's `sample(batch)` also accepts a plain member count for an unconditional model."""
    model = RegressionGuidedModel(white_noise(nside=1), sampler=dict(steps=6))
    out, coords = model.sample(3, seed=2)
    assert out.shape == (3, len(coords.channels), 1, 12) and torch.isfinite(out).all()
    same, _ = model.sample({"target": torch.zeros(3, 2, 1, 12)}, seed=2)
    assert torch.equal(out, same)
    with pytest.raises(InputError, match="member count or a dict"):
        model.sample([1, 2, 3], seed=2)
