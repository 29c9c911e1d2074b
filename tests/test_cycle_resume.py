"""`--resume` of a cycled run (`mode: cycle`, DESIGN.md §10) after an interruption equals the
uninterrupted run: every member (analysis and carried state), every statistic and background
field, the observations group and the summary metrics, bit for bit; in process, and interrupted
on a local Ray and resumed in process.

The run is small (nside 4, 4 members in 2 blocks, 5 six-hourly times, window 3 with carry, so
times 3 and 4 condition on carried states read from the store) and is interrupted (Ctrl-C, as
`ray_helpers.run_interrupted` does) part-way through a time and at a time boundary.
"""

from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before ray is imported: loopback only
os.environ["RAY_AUTH_MODE"] = "disabled"

import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from actors.run import run_pipeline  # noqa: E402
from ensemble_da.config import RunConfig  # noqa: E402
from ensemble_da.errors import InputError  # noqa: E402
from ensemble_da.io import is_complete, open_run  # noqa: E402
from ray_helpers import run_interrupted  # noqa: E402

TIMES = [str(np.datetime64("2020-01-01T00:00") + np.timedelta64(6 * k, "h")) for k in range(5)]
BLOCKS = 2  # member blocks per time: 4 members, 2 per unit

MEMBER_FIELDS = ("analysis", "carried_state", "member_done")
TIME_FIELDS = ("ensemble_mean", "ensemble_spread", "truth", "exact_mean", "exact_spread", "background_mean",
               "background_spread", "increment")
OBS_FIELDS = ("time", "lat", "lon", "value", "sigma", "assimilated", "hx_mean", "hx_spread", "hb_mean", "hb_spread")


def _config(address: str = "inprocess") -> RunConfig:
    return RunConfig.model_validate(dict(
        run_name="cycle-resume", seed=5, mode="cycle", times=TIMES, grid=dict(nside=4),
        model=dict(kind="gaussian_markov", rho=0.8, channels=["T850", "T500"], mean=dict(T850=275.0, T500=255.0),
                   std=dict(T850=6.0, T500=5.0), length_scale_km=1500, channel_correlation=[[1, 0.6], [0.6, 1]]),
        cycle=dict(window=3, carry=True, forecast="markov"),
        sampler=dict(steps=6, batch_size=2), guidance=dict(method="mmps", solver="cg", cg_iters=3),
        ensemble=dict(members=4),
        observations=dict(channels=["T850", "T500"], num_obs=40, sigma=dict(T850=1.0, T500=1.0)),
        # qc tight enough that each time rejects some observations: the resumed run must screen
        # (and so assimilate) exactly what the first run did, from the same backgrounds.
        diagnostics=dict(qc_sigma_k=1.5),
        cluster=dict(address=address, replicas=1, members_per_unit=2, device="cpu"),
    ))


def _metrics(out) -> dict:
    """summary.json's metrics (mean over times) and every time's: all but `mmps_residual/max`,
    which describes the sampling this run did (a time resumed from the store sampled nothing)."""
    s = json.loads((out / "summary.json").read_text())
    keep = {k: v for k, v in s.items() if "/" in k and not k.startswith("mmps_residual/")}
    for when, m in s["by_time"].items():
        keep.update({f"{when}:{k}": v for k, v in m.items() if not k.startswith("mmps_residual/")})
    return keep


def _assert_same_run(ref, out) -> None:
    a, b = open_run(ref), open_run(out)
    for name in MEMBER_FIELDS + TIME_FIELDS:
        assert name in a and name in b, name
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    oa, ob = open_run(ref, group="observations"), open_run(out, group="observations")
    assert oa.sizes["obs"] == ob.sizes["obs"]
    for name in OBS_FIELDS:
        np.testing.assert_array_equal(oa[name].values, ob[name].values, err_msg=name)
    ma, mb = _metrics(ref), _metrics(out)
    assert ma.keys() == mb.keys()
    assert {"rmse/T850", "exact_mean_err/T850", "ob_rmse/T850", "chi2_per_obs/T500"} <= ma.keys()
    # NaN-free: a NaN metric would compare unequal anyway, but say so plainly.
    assert np.isfinite([ma["rmse/T850"], ma["exact_mean_err/T850"], ma["chi2_per_obs/T500"]]).all()
    assert ma == mb


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted in-process run."""
    out = tmp_path_factory.mktemp("cycle") / "ref"
    run_pipeline(_config(), out, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    # The screen has something to do: some observations rejected over the run, the rest assimilated.
    assert summary["qc/background_rejected/T850"] + summary["qc/background_rejected/T500"] > 0
    return out


def _interrupted_state(out, after: int) -> np.ndarray:
    assert not is_complete(out / "analysis.zarr") and not (out / "summary.json").exists()
    with pytest.raises(InputError, match="incomplete"):
        open_run(out)
    return xr.open_zarr(out / "analysis.zarr", consolidated=False)["member_done"].values


@pytest.mark.parametrize("after", [2 * BLOCKS + 1, 3 * BLOCKS], ids=["mid-time", "time-boundary"])
def test_resume_of_an_interrupted_cycle_equals_the_uninterrupted_run(reference, tmp_path, after):
    """Interrupted after `after` analysis units: mid-time 2 (times 0, 1 done, one block of 2),
    or at the end of time 2 (times 3, 4 then need the carried states of time 2 from the store)."""
    out = tmp_path / "resumed"
    run_interrupted(_config(), out, after=after)
    done = _interrupted_state(out, after)
    assert done.sum(1).tolist() == [2 * min(max(after - BLOCKS * t, 0), BLOCKS) for t in range(len(TIMES))]
    run_id = json.loads((out / "run_state.json").read_text())["run_id"]

    result = run_pipeline(_config(), out, resume=True, progress=False)
    # Only what was missing was sampled: 2 members per unit.
    assert result.summary["members_sampled"] == 2 * (BLOCKS * len(TIMES) - after)
    assert result.summary["members_done"] == 4 * len(TIMES)
    _assert_same_run(reference, out)
    # The resumed run continued the same MLflow run and logged each time once.
    assert result.summary["run_id"] == run_id
    client = MlflowClient(tracking_uri=result.summary["tracking_uri"])
    assert sorted(m.step for m in client.get_metric_history(run_id, "rmse/T850")) == list(range(len(TIMES)))


def test_resume_refuses_a_changed_cycle_window(reference, tmp_path):
    """The carried states depend on the window: a resume with another one is refused before
    anything is written."""
    out = tmp_path / "resumed"
    run_interrupted(_config(), out, after=BLOCKS)
    before = xr.open_zarr(out / "analysis.zarr", consolidated=False)["analysis"].values
    changed = _config().model_copy(update={"cycle": _config().cycle.model_copy(update={"window": 2})})
    with pytest.raises(InputError, match="cycle.window"):
        run_pipeline(changed, out, resume=True, progress=False)
    np.testing.assert_array_equal(xr.open_zarr(out / "analysis.zarr", consolidated=False)["analysis"].values, before)


@pytest.fixture
def ray_tmp(monkeypatch, request):
    path = tempfile.mkdtemp(prefix="eda-ray-", dir="/tmp")
    request.addfinalizer(lambda: shutil.rmtree(path, ignore_errors=True))
    monkeypatch.setenv("RAY_TMPDIR", path)


@pytest.mark.slow  # starts a local Ray (~5 s)
def test_cycle_interrupted_on_ray_and_resumed_in_process_equals_the_uninterrupted_run(reference, tmp_path, ray_tmp):
    """The members depend only on (seed, time, member) and the carried states in the store, not
    on where they ran: a cycle interrupted on a local Ray mid-time 3 (one conditioned time done)
    and resumed in process equals the in-process reference."""
    out = tmp_path / "ray"
    run_interrupted(_config("local"), out, after=3 * BLOCKS + 1)
    done = _interrupted_state(out, 3 * BLOCKS + 1)
    assert done[:3].all() and done[3].sum() >= 2 and not done[4].any()
    result = run_pipeline(_config(), out, resume=True, progress=False)
    assert result.summary["members_done"] == 4 * len(TIMES)
    _assert_same_run(reference, out)
