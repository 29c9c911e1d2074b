"""`cycle.forecast` (DESIGN.md §10): the config union, `build_forecast`, and `python` plug-in
forecast models (tests/plugin_forecast.py) in a cycled run and through the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from actors.run import run_pipeline
from ensemble_da.cli import app
from ensemble_da.config import RunConfig, load_config
from ensemble_da.dynamics import MarkovForecast, build_forecast
from ensemble_da.errors import InputError
from ensemble_da.io import open_run
from ensemble_da.priors import load_prior

SIX_HOURLY = [str(np.datetime64("2020-01-01T00:00") + np.timedelta64(6 * k, "h")) for k in range(4)]


def tree(forecast="markov", times: int = 4, members: int = 4, **top):
    # tests/test_time_modes.py's cycle config, shrunk.
    top = {"cluster": dict(address="inprocess", members_per_unit=2, replicas=1), **top}
    return dict(
        run_name="fc", seed=1, times=SIX_HOURLY[:times], grid=dict(nside=4), mode="cycle",
        cycle=dict(window=2, forecast=forecast),
        model=dict(kind="gaussian_markov", rho=0.8, channels=["T850", "T500"], mean=dict(T850=275.0, T500=255.0),
                   std=dict(T850=6.0, T500=5.0), length_scale_km=1500, channel_correlation=[[1, 0.6], [0.6, 1]]),
        sampler=dict(steps=4, batch_size=2), guidance=dict(method="mmps", solver="cg", cg_iters=2),
        ensemble=dict(members=members),
        observations=dict(channels=["T850", "T500"], num_obs=20, sigma=dict(T850=1.0, T500=1.0)), **top)


def test_forecast_config_kinds():
    assert RunConfig.model_validate(tree("markov")).cycle.forecast.kind == "markov"
    assert RunConfig.model_validate(tree({"kind": "markov"})).cycle.forecast.kind == "markov"
    assert RunConfig.model_validate(tree()).model_copy().cycle.forecast.kind == "markov"
    py = RunConfig.model_validate(tree({"kind": "python", "object": "plugin_forecast:ar1", "options": {}}))
    assert py.cycle.forecast.object == "plugin_forecast:ar1"
    sp = RunConfig.model_validate(tree({"kind": "speedy", "spinup_days": 1}))
    assert sp.cycle.forecast.spinup_days == 1.0
    # The resolved config round-trips (a run's config.yaml is a CONFIG again).
    again = RunConfig.model_validate(yaml.safe_load(py.to_yaml()))
    assert again.cycle.forecast == py.cycle.forecast


@pytest.mark.parametrize("forecast, needle", [
    ({"kind": "markov", "rho": 0.5}, "rho"),                                    # unknown key
    ({"kind": "python", "object": "plugin_forecast:ar1", "colour": 1}, "colour"),
    ({"kind": "python"}, "object"),                                             # missing setting
    ("python", "object"),
    ({"kind": "lorenz"}, "lorenz"),
    ({"kind": "speedy", "spinup_days": -1}, "spinup_days"),
])
def test_bad_forecast_config_is_an_error(forecast, needle, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree(forecast)))
    with pytest.raises(InputError, match=needle):
        load_config(path)


def test_markov_refuses_another_prior_with_one_line():
    cfg = RunConfig.model_validate(tree())
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"kind": "gaussian", "rho": None})})
    prior = load_prior(cfg.model, cfg.grid)
    with pytest.raises(InputError, match="cycle.forecast markov is the transition of model.kind gaussian_markov, "
                                         "got model.kind gaussian"):
        build_forecast(cfg, prior)


def test_build_forecast_markov_and_plugin_agree_with_the_transition():
    cfg = RunConfig.model_validate(tree())
    prior = load_prior(cfg.model, cfg.grid)
    assert isinstance(build_forecast(cfg, prior), MarkovForecast)
    plug = build_forecast(RunConfig.model_validate(tree({"kind": "python", "object": "plugin_forecast:ar1"})), prior)
    x0 = plug.forecast(None, 0, [0, 3], 5)
    assert x0.dtype == np.float32 and x0.shape == (2, 2, prior.grid.npix)
    # Independent: the AR(1) mean is ρ × the previous anomaly (normalised); with the same noise
    # stream the difference of two forecasts from different states is exactly ρ × their difference.
    x1a, x1b = plug.forecast(x0, 1, [0, 3], 5), plug.forecast(x0 + 1.0, 1, [0, 3], 5)
    np.testing.assert_allclose(x1b - x1a, 0.8 * 1.0, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(x1a, MarkovForecast(prior).forecast(x0, 1, [0, 3], 5))


def test_plugin_reproducing_markov_gives_the_same_cycled_run_bit_for_bit(tmp_path):
    markov = RunConfig.model_validate(tree("markov"))
    plugin = RunConfig.model_validate(tree({"kind": "python", "object": "plugin_forecast:ar1"}))
    run_pipeline(markov, tmp_path / "markov", progress=False)
    run_pipeline(plugin, tmp_path / "plugin", progress=False)
    a, b = open_run(tmp_path / "markov"), open_run(tmp_path / "plugin")
    for name in ("background_mean", "background_spread", "analysis", "ensemble_mean"):
        assert name in a, name
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    assert np.isfinite(a["background_mean"].values).all()


@pytest.mark.parametrize("obj, needle", [
    ("plugin_forecast:wrong_shape", "returned shape (1, 3), expected (1, 2, 192)"),
    ("plugin_forecast:nan_at", "non-finite values (NaN or inf)"),
    ("plugin_forecast:no_forecast", "has no forecast(x, t_index, members, seed) method"),
    ("plugin_forecast:missing", "has no attribute 'missing'"),
])
def test_bad_plugin_is_one_error_line_exit_2(obj, needle, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree({"kind": "python", "object": obj}, times=3)))
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert f"cycle.forecast.object {obj!r}" in lines[0] and needle in lines[0], lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("cluster, extra, needle", [
    (dict(address="inprocess", replicas=2), [], "set cluster.address inprocess and cluster.replicas 1"),
    (dict(address="local", replicas=1), [], "set cluster.address inprocess and cluster.replicas 1"),
])
def test_speedy_forecast_outside_one_inprocess_replica_is_refused(cluster, extra, needle, tmp_path):
    # Refused before jcm is imported or the run directory exists.
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree({"kind": "speedy"}, times=3, cluster=dict(members_per_unit=2, **cluster))))
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "run"), *extra])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    assert not (tmp_path / "run").exists()
