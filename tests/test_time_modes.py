"""`mode: cycle` and `mode: reanalysis` (DESIGN.md §10) against the Kalman filter and the RTS
smoother, in-process and on a local Ray (bit for bit), and the Python API for cycling."""

from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before ray is imported: loopback only
os.environ["RAY_AUTH_MODE"] = "disabled"

import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from actors.run import run_pipeline  # noqa: E402
from ensemble_da.config import RunConfig  # noqa: E402
from ensemble_da.cycling import create_generator  # noqa: E402
from ensemble_da.io import open_run  # noqa: E402
from ensemble_da.kalman import rts_smoother  # noqa: E402
from ensemble_da.obs.inputs import prepare_inputs  # noqa: E402
from ensemble_da.obs.operators import ObservationOperator  # noqa: E402
from ensemble_da.priors import load_prior  # noqa: E402
from ensemble_da.truth import osse_truths  # noqa: E402

pytestmark = pytest.mark.slow

SIX_HOURLY = [str(np.datetime64("2020-01-01T00:00") + np.timedelta64(6 * k, "h")) for k in range(12)]


def tree(times: int = 12, members: int = 64, nside: int = 8, **top):
    top = {"cluster": dict(address="inprocess", members_per_unit=32, replicas=2), **top}
    return dict(
        run_name="time", seed=1, times=SIX_HOURLY[:times], grid=dict(nside=nside),
        model=dict(kind="gaussian_markov", rho=0.8, channels=["T850", "T500"], mean=dict(T850=275.0, T500=255.0),
                   std=dict(T850=6.0, T500=5.0), length_scale_km=1500, channel_correlation=[[1, 0.6], [0.6, 1]]),
        # 8 CG iterations: 3 leave a Krylov bias of ~0.14 posterior std in the mean at nside 8.
        sampler=dict(steps=24, batch_size=32), guidance=dict(method="mmps", solver="cg", cg_iters=8),
        ensemble=dict(members=members),
        observations=dict(channels=["T850", "T500"], num_obs=100, sigma=dict(T850=1.0, T500=1.0)), **top)


def per_time(out, key):
    summary = json.loads((out / "summary.json").read_text())
    return np.array([[m[f"{key}/{c}"] for c in ("T850", "T500")] for m in summary["by_time"].values()])


@pytest.fixture
def ray_tmp(monkeypatch, request):
    path = tempfile.mkdtemp(prefix="eda-ray-", dir="/tmp")
    request.addfinalizer(lambda: shutil.rmtree(path, ignore_errors=True))
    monkeypatch.setenv("RAY_TMPDIR", path)


def test_cycle_equals_kalman_filter_at_every_time_inprocess_and_on_ray(tmp_path, ray_tmp):
    cfg = RunConfig.model_validate(tree(mode="cycle"))
    run_pipeline(cfg, tmp_path / "inprocess", progress=False)
    err, ratio = per_time(tmp_path / "inprocess", "exact_mean_err"), per_time(tmp_path / "inprocess", "exact_var_ratio")
    # An exact sampler's ensemble mean errs by 1/√M filter std (0.125 at M = 64); 1.5× leaves room
    # for its fluctuation over spatially correlated cells and the L = 2 window's small bias.
    assert err.shape == (12, 2) and err.max() < 1.5 / np.sqrt(64), err
    # Variance: the ensemble variance of 64 members has ~2 % MC error averaged over cells; 24 Heun
    # steps add ~3 %; 0.9–1.1 at every time is the bar.
    assert ratio.min() > 0.9 and ratio.max() < 1.1, ratio
    # No drift: the last third of the run is no further from the filter than the first third.
    assert err[-4:].mean() < err[:4].mean() + 0.03, err
    ds = open_run(tmp_path / "inprocess")
    for name in ("background_mean", "background_spread", "exact_mean", "exact_spread", "carried_state"):
        assert name in ds, name
    summary = json.loads((tmp_path / "inprocess" / "summary.json").read_text())
    assert {"ob_rmse/T850", "desroziers_sigma_o/T850", "chi2_per_obs/T850"} <= set(summary)
    # The background is the forecast of the previous analysis: its mean is ρ × that analysis mean
    # (normalised), up to the forecast noise averaged over 64 members (≤ 4 × 0.6/√64 std, physical).
    mean = ds["ensemble_mean"].values
    expect = 275.0 + 0.8 * (mean[:-1, 0] - 275.0)
    assert np.abs(ds["background_mean"].values[1:, 0] - expect).max() < 4 * 6.0 * 0.6 / 8

    on_ray = cfg.model_copy(update={"cluster": cfg.cluster.model_copy(update={"address": "local"})})
    run_pipeline(on_ray, tmp_path / "ray", progress=False)
    a, b = open_run(tmp_path / "inprocess"), open_run(tmp_path / "ray")
    for name in ("analysis", "carried_state", "ensemble_mean", "ensemble_spread", "background_mean", "exact_mean"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_reanalysis_equals_rts_smoother_and_members_are_trajectories(tmp_path):
    cfg = RunConfig.model_validate(tree(times=8, mode="reanalysis"))
    run_pipeline(cfg, tmp_path / "rea", progress=False)
    err, ratio = per_time(tmp_path / "rea", "exact_mean_err"), per_time(tmp_path / "rea", "exact_var_ratio")
    assert err.max() < 1.5 / np.sqrt(64), err  # as for the filter: MC level 0.125 at M = 64
    assert ratio.min() > 0.9 and ratio.max() < 1.1, ratio
    ds = open_run(tmp_path / "rea")
    prior = load_prior(cfg.model, cfg.grid)
    inputs = prepare_inputs(cfg, prior, osse_truths(prior, cfg))
    ops = [ObservationOperator.build(o.assimilated_only(), prior.grid, prior.normalization, "bilinear")
           for o in inputs.observations]
    rts = rts_smoother(prior, ops)
    z = prior.normalization.normalize(ds["analysis"].values.astype(np.float64))  # (time, member, C, cell)
    dev = z - z.mean(1, keepdims=True)
    lag = (dev[:-1] * dev[1:]).sum(1) / (z.shape[1] - 1)  # (time − 1, C, cell)
    # Averaged over 1536 elements the lag-one covariance of 64 members has a few % MC error; members
    # drawn independently per time would give ~0 (±0.005) instead of the smoother's ~0.17.
    np.testing.assert_allclose(lag.mean((1, 2)), rts.lag_one.mean((1, 2)), rtol=0.12)
    assert rts.lag_one.mean() > 0.1


def test_create_generator_gives_the_members_of_a_cycled_run(tmp_path):
    cfg = RunConfig.model_validate(tree(times=4, members=8, nside=4, mode="cycle",
                                        cluster=dict(address="inprocess", members_per_unit=8)))
    run_pipeline(cfg, tmp_path / "run", progress=False)
    prior = load_prior(cfg.model, cfg.grid)
    inputs = prepare_inputs(cfg, prior, osse_truths(prior, cfg))
    stored = open_run(tmp_path / "run")
    assert int(json.loads((tmp_path / "run" / "summary.json").read_text()).get("qc/background_rejected/T850", 0)) == 0
    gen = create_generator(prior, 8, cfg.seed, window=cfg.window_length(), sampler=cfg.sampler, guidance=cfg.guidance)
    assert next(gen) is None
    for t, obs in enumerate(inputs.observations):
        np.testing.assert_array_equal(gen.send(obs), stored["analysis"].values[t], err_msg=f"time {t}")
