"""A run with each new kind of operator selected in the config (DESIGN.md §5, §7): a column OSSE
on the Gaussian prior keeps its exact posterior and reads the store's ensemble in observation space
through the column; a wind-speed OSSE finishes without exact_* fields and says why in one warning."""

import json

import healpy as hp
import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from ensemble_da.cli import app

BASE = """
run_name: ops
seed: 3
times: ["2020-01-01T00:00"]
grid: {{nside: 4}}
model:
  kind: gaussian
  channels: {channels}
  mean: {mean}
  std: {std}
  length_scale_km: 2500
sampler: {{steps: 8, batch_size: 4}}
guidance: {{method: mmps, cg_iters: 3}}
ensemble: {{members: 4}}
observations:
  num_obs: 30
  heldout_fraction: 0.2
  channels: [{label}]
  sigma: {{{label}: 0.5}}
  operator: {operator}
cluster: {{address: inprocess, replicas: 1, members_per_unit: 4}}
"""
COLUMN = BASE.format(channels="[T850, T500, T300]", mean="{T850: 275.0, T500: 255.0, T300: 230.0}",
                     std="{T850: 6.0, T500: 5.0, T300: 4.0}", label="T850",
                     operator="{kind: column, weights: {T850: 0.5, T500: 0.3, T300: 0.2}}")
WIND = BASE.format(channels="[U850, V850]", mean="{U850: 8.0, V850: -2.0}", std="{U850: 4.0, V850: 3.0}",
                   label="U850", operator="{kind: wind_speed, level: 850}")


def run(tmp_path, text):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    result = CliRunner().invoke(app, ["run", str(cfg), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output + str(result.exception)
    return result, xr.open_zarr(tmp_path / "run" / "analysis.zarr"), xr.open_zarr(tmp_path / "run" / "analysis.zarr",
                                                                                  group="observations")


def test_column_run_has_its_exact_posterior_and_column_fits(tmp_path):
    result, ds, obs = run(tmp_path, COLUMN)
    assert "exact_mean" in ds
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert np.isfinite(summary["exact_mean_err/T850"])
    mean = ds["ensemble_mean"].isel(time=0).values.astype(np.float64)
    lon, lat = obs["lon"].values, obs["lat"].values
    column = sum(w * hp.get_interp_val(mean[c], lon, lat, nest=True, lonlat=True)
                 for c, w in enumerate([0.5, 0.3, 0.2]))
    # H is linear, so the mean of H x_m is H of the mean (float32 store: 1e-5)
    np.testing.assert_allclose(obs["hx_mean"].values, column, rtol=1e-5)


def test_wind_speed_run_goes_on_without_an_exact_posterior(tmp_path):
    result, ds, obs = run(tmp_path, WIND)
    warnings = [line for line in result.stderr.splitlines() if "nonlinear observation operator wind_speed" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning:") and "continues without exact_mean" in warnings[0]
    assert "exact_mean" not in ds and np.isfinite(ds["analysis"].values).all()
    mean = ds["analysis"].isel(time=0).values.astype(np.float64)
    lon, lat = obs["lon"].values, obs["lat"].values
    speeds = np.stack([np.hypot(hp.get_interp_val(m[0], lon, lat, nest=True, lonlat=True),
                                hp.get_interp_val(m[1], lon, lat, nest=True, lonlat=True)) for m in mean])
    np.testing.assert_allclose(obs["hx_mean"].values, speeds.mean(0), rtol=1e-5)


def test_column_run_exact_posterior_is_dense_gaussian_conditioning_of_its_observations(tmp_path):
    """The run's exact_mean/exact_spread against x ~ N(m, S Σ S) conditioned on the store's assimilated
    observations through a column W built here from healpy's weights (Σ element by element,
    tests/test_priors_gaussian.py). Tolerance 1e-5 relative: the store keeps float32 fields; both
    sides are float64 direct solves of a well-conditioned 576-dimensional system."""
    from ensemble_da.config import model_config
    from test_priors_gaussian import dense_covariance

    _, ds, obs = run(tmp_path, COLUMN)
    weights = {"T850": 0.5, "T500": 0.3, "T300": 0.2}
    model = model_config(kind="gaussian", channels=list(weights), length_scale_km=2500,
                        mean={"T850": 275.0, "T500": 255.0, "T300": 230.0}, std={"T850": 6.0, "T500": 5.0, "T300": 4.0})
    if model.channel_correlation is None:
        model.channel_correlation = np.eye(3).tolist()
    nside, npix = 4, 192
    used = obs["assimilated"].values
    lon, lat = obs["lon"].values[used], obs["lat"].values[used]
    y, s_o = obs["value"].values[used], obs["sigma"].values[used]
    w = np.zeros((len(lon), 3 * npix))
    pix, interp = hp.get_interp_weights(nside, lon, lat, nest=True, lonlat=True)
    for c, weight in enumerate(weights.values()):
        for k in range(4):
            np.add.at(w, (np.arange(len(lon)), c * npix + pix[k]), weight * interp[k])
    s = np.repeat([6.0, 5.0, 4.0], npix)
    m = np.repeat([275.0, 255.0, 230.0], npix)
    cov = s[:, None] * dense_covariance(nside, model) * s[None, :]
    gain = cov @ w.T @ np.linalg.inv(w @ cov @ w.T + np.diag(s_o**2))
    mean_ref = m + gain @ (y - w @ m)
    spread_ref = np.sqrt(np.diag(cov - gain @ w @ cov))
    np.testing.assert_allclose(ds["exact_mean"].isel(time=0).values.reshape(-1), mean_ref, rtol=1e-5)
    np.testing.assert_allclose(ds["exact_spread"].isel(time=0).values.reshape(-1), spread_ref, rtol=1e-5)


BAD_PLUGIN = BASE.format(channels="[U850, V850]", mean="{U850: 8.0, V850: -2.0}", std="{U850: 4.0, V850: 3.0}",
                         label="U850", operator='{kind: python, object: "plugin_operators:{name}"}')


@pytest.mark.parametrize("name,message", [
    ("wrong_shape", "returned shape"),
    ("nan", "returned NaN or inf on the probe state"),
    ("through_numpy", "is not differentiable with respect to the state"),
])
def test_bad_plugin_through_the_cli_is_one_error_line_and_exit_2(tmp_path, name, message):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(BAD_PLUGIN.replace("{name}", name))
    result = CliRunner().invoke(app, ["run", str(cfg), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output + repr(result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: observations.operator.object") and message in lines[0]
