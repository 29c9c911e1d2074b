"""`ensemble-da run` end to end, in-process (DESIGN.md §7): outputs, summary and MLflow read
back from the real SQLite store, `--resume` after an interruption, bad inputs (exit 2, one
line, run directory untouched), and an unreachable tracking store."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import xarray as xr
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from actors.run import run_pipeline
from ensemble_da.cli import app
from ensemble_da.config import load_config
from ensemble_da.errors import InputError
from ensemble_da.io import is_complete, open_run

CHANNELS = ["T850", "T500", "T300"]
METRICS = ["oa_rmse", "oa_bias", "heldout_oa_rmse", "spread_at_obs", "spread", "rmse", "crps", "ssr",
           "exact_mean_err", "exact_var_ratio"]

# A tiny OSSE on the Gaussian prior: nside 4, 4 sampler steps, 2 times x 4 members in units of 2.
TINY = """
run_name: tiny
seed: 7
times: ["2020-01-01T00:00", "2020-01-01T12:00"]
grid: {nside: 4}
model:
  kind: gaussian
  channels: [T850, T500, T300]
  mean: {T850: 275.0, T500: 255.0, T300: 230.0}
  std: {T850: 6.0, T500: 5.0, T300: 4.0}
  length_scale_km: 2500
  channel_correlation: [[1.0, 0.6, 0.3], [0.6, 1.0, 0.6], [0.3, 0.6, 1.0]]
sampler: {steps: 4, batch_size: 2}
guidance: {method: mmps, cg_iters: 2}
ensemble: {members: 4}
observations:
  num_obs: 40
  heldout_fraction: 0.3
  sigma: {T850: 0.5, T500: 0.5, T300: 0.5}
cluster: {address: inprocess, replicas: 1, members_per_unit: 2}
"""


def invoke(*args, env=None):
    result = CliRunner(env=env).invoke(app, [str(a) for a in args])
    return result


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def finished_run(tiny_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "a"
    result = invoke("run", tiny_config, "--out", out)
    assert result.exit_code == 0, result.output + str(result.exception)
    return out, result


def snapshot(path):
    """Every file under `path` with its size and modification time."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


def test_run_writes_the_documented_outputs(finished_run):
    out, result = finished_run
    for name in CHANNELS:
        assert name in result.stdout
    assert f"run directory: {out}" in result.stdout
    # the terminal table: the report's titles, and per channel the summary.json means
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("┃ channel"))
    assert [c.strip() for c in header.strip("┃").split("┃")] == [
        "channel", "prior spread", "RMSE vs truth", "spread", "SSR", "exact mean err", "exact var ratio", "O−A RMS",
        "held-out O−A RMS"]
    summary = json.loads((out / "summary.json").read_text())
    for name in CHANNELS:
        cells = [c.strip() for c in next(line for line in lines if line.startswith(f"│ {name}")).strip("│").split("│")]
        keys = ("rmse", "spread", "ssr", "exact_mean_err", "exact_var_ratio", "oa_rmse", "heldout_oa_rmse")
        assert cells[2:] == [f"{summary[f'{k}/{name}']:.3f}" for k in keys], name
    assert (out / "config.yaml").is_file() and (out / "summary.json").is_file()
    for png in ("mean_spread_t0.png", "mean_spread_t1.png", "rank_histogram.png"):
        assert (out / "figures" / png).stat().st_size > 1000

    ds = open_run(out)
    assert ds.analysis.shape == (2, 4, 3, 192) and ds.analysis.dtype == np.float32
    assert list(ds.channel.values) == CHANNELS and ds.time.dtype.kind == "M"
    for var in ("truth", "exact_mean", "exact_spread", "ensemble_mean", "ensemble_spread"):
        assert ds[var].dims == ("time", "channel", "cell") and np.isfinite(ds[var].values).all()
    assert ds.attrs["nside"] == 4 and ds.attrs["seed"] == 7 and ds.attrs["guidance"] == "mmps"
    assert ds.attrs["ensemble_da_version"]
    assert yaml.safe_load(ds.attrs["config"]) == yaml.safe_load((out / "config.yaml").read_text())
    # Streaming (Chan) moments agree with the two-pass ones on the stored members
    # (float32 storage: relative 1e-5).
    a = ds.analysis.values.astype(np.float64)
    np.testing.assert_allclose(ds.ensemble_mean.values, a.mean(1), rtol=1e-5)
    np.testing.assert_allclose(ds.ensemble_spread.values, a.std(1, ddof=1), rtol=1e-4, atol=1e-5)

    obs = open_run(out, group="observations")
    assert set(obs.data_vars) >= {"time", "lat", "lon", "channel", "value", "sigma", "assimilated",
                                  "hx_mean", "hx_spread"}
    assert obs.assimilated.dtype == bool and (~obs.assimilated.values).any()
    assert np.isfinite(obs.hx_mean.values).all() and (obs.hx_spread.values > 0).all()


def test_summary_and_mlflow_read_back(finished_run):
    out, _ = finished_run
    summary = json.loads((out / "summary.json").read_text())
    names = [f"{m}/{c}" for m in METRICS for c in CHANNELS]
    for name in names:
        assert np.isfinite(summary[name]), name
    assert summary["members_done"] == 8 and summary["tracking_error"] is None
    assert summary["tracking_uri"] == f"sqlite:///{out.resolve()}/mlflow.db" and summary["wall_time_s"] > 0

    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.kind"] == "gaussian" and run.data.params["ensemble.members"] == "4"
    assert run.data.params["guidance.method"] == "mmps" and run.data.params["grid.nside"] == "4"
    for name in names:
        history = client.get_metric_history(run.info.run_id, name)
        assert sorted(m.step for m in history) == [0, 1], name
        # summary.json holds the mean over analysis times of what MLflow holds per time
        assert summary[name] == pytest.approx(np.mean([m.value for m in history]), rel=1e-12)
    # quality-control counts: per time in MLflow, summed over times in summary.json
    kept = client.get_metric_history(run.info.run_id, "qc/kept")
    assert sorted(m.step for m in kept) == [0, 1] and all(m.value > 0 for m in kept)
    assert summary["qc/kept"] == sum(m.value for m in kept) and summary["qc/read"] >= summary["qc/kept"]
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "summary.json", "figures"} <= top
    figs = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert "figures/rank_histogram.png" in figs and "figures/mean_spread_t0.png" in figs


def test_resume_after_interruption_equals_uninterrupted_run(finished_run, tiny_config, tmp_path):
    ref, _ = finished_run
    out = tmp_path / "b"
    units = []

    def interrupt(result, executor):
        units.append(result.unit)
        if len(units) == 3:  # time 0 finished and logged, time 1 half done
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(load_config(tiny_config), out, progress=False, on_unit=interrupt)
    assert not is_complete(out / "analysis.zarr") and not (out / "summary.json").exists()
    with pytest.raises(InputError, match="incomplete"):
        open_run(out)
    assert int(xr.open_zarr(out / "analysis.zarr", consolidated=False).member_done.sum()) == 6
    run_id = json.loads((out / "run_state.json").read_text())["run_id"]

    result = invoke("run", "--out", out, "--resume")  # no CONFIG: the run's own config.yaml
    assert result.exit_code == 0, result.output + str(result.exception)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["members_sampled"] == 2 and summary["members_done"] == 8
    assert summary["run_id"] == run_id

    a, b = open_run(ref), open_run(out)
    for var in ("analysis", "ensemble_mean", "ensemble_spread", "truth", "exact_mean", "exact_spread"):
        np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=var)
    oa, ob = open_run(ref, group="observations"), open_run(out, group="observations")
    for var in ("value", "hx_mean", "hx_spread"):
        np.testing.assert_array_equal(oa[var].values, ob[var].values, err_msg=var)
    ref_summary = json.loads((ref / "summary.json").read_text())
    for name in (f"{m}/{c}" for m in METRICS for c in CHANNELS):
        assert summary[name] == ref_summary[name], name
    # Time 0 was logged before the interruption and is not logged twice.
    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    assert sorted(m.step for m in client.get_metric_history(run_id, "rmse/T850")) == [0, 1]
    assert client.get_run(run_id).info.status == "FINISHED"
    # Resuming the finished run again does nothing (exit 0, as `sweep --resume` of a finished sweep)
    # and leaves its outputs alone.
    before = (out / "summary.json").read_bytes()
    again = invoke("run", "--out", out, "--resume")
    assert again.exit_code == 0 and again.stderr.startswith("note: the run in") and "nothing to resume" in again.stderr
    assert (out / "summary.json").read_bytes() == before
    # ... and a changed key is named, not reported as "complete".
    changed = invoke("run", "--out", out, "--resume", "--set", "seed=3")
    assert changed.exit_code == 2 and "config key 'seed' is 3 but the run in" in changed.output, changed.output
    assert (out / "summary.json").read_bytes() == before


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "{tmp}/missing.yaml"], "config file not found"),
        (["run", "{cfg}", "--set", "ensemble.memberz=3"], "memberz"),
        (["run", "{cfg}", "--set", "ensemble.members=0"], "members"),
        (["run", "{cfg}", "--set", "grid.nside=5"], "nside"),
        (["run", "{cfg}", "--set", "grid.nside=4096", "--set", "model.approximation=lowrank"], "201326592 cells"),
        (["run", "{cfg}", "--set", "observations.channels=[X999]"], "X999"),
        (["run", "{cfg}", "--set", "cluster.members_per_unit=0"], "members_per_unit"),
        (["run", "{cfg}", "--set", "cluster.address=no address"], "cluster.address"),
        (["run", "{cfg}", "--set", "cluster.address=127.0.0.1:9"], "nothing accepts connections"),
        (["run", "{cfg}", "--set", "cluster.gpus_per_replica=1"], "sees no CUDA"),
        (["run", "{cfg}", "--set", "cluster.straggler_factor=1.1"], "straggler_factor"),
        (["run", "{cfg}", "--set", "times=[yesterday]"], "yesterday"),
        (["run", "{cfg}", "--set", "seed"], "key=value"),
        (["run", "{cfg}", "--resume"], "--resume needs --out"),
        (["run", "{cfg}", "--resume", "--out", "{tmp}/nothing"], "not a run directory"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, needle, tiny_config, tmp_path):
    out = tmp_path / "new"
    argv = [a.format(tmp=tmp_path, cfg=tiny_config) for a in args]
    if "--out" not in argv and "--resume" not in argv:
        argv += ["--out", str(out)]
    result = invoke(*argv)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()  # nothing was created


def test_existing_run_dir_is_left_untouched(finished_run, tiny_config):
    out, _ = finished_run
    before = snapshot(out)
    for argv in (
        ["run", tiny_config, "--out", out],  # exists, no --resume
        ["run", tiny_config, "--out", out, "--resume", "--set", "seed=8"],  # resume with another seed
        ["run", tiny_config, "--out", out, "--resume", "--set", "cluster.members_per_unit=4"],
    ):
        result = invoke(*argv)
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert snapshot(out) == before


def test_debug_shows_the_traceback(tiny_config, tmp_path):
    result = invoke("run", tiny_config, "--set", "ensemble.memberz=3", "--out", tmp_path / "x", "--debug")
    assert result.exit_code == 2 and "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_unreachable_tracking_store_still_finishes(tiny_config, tmp_path):
    out = tmp_path / "c"
    env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = invoke("run", tiny_config, "--out", out, "--set", "tracking.uri=http://127.0.0.1:9",
                        "--set", "ensemble.members=2", "--set", 'times=["2020-01-01T00:00"]', env=env)
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "warning: MLflow tracking failed" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tracking_error"] and summary["tracking_uri"] == "http://127.0.0.1:9"
    assert is_complete(out / "analysis.zarr") and np.isfinite(summary["rmse/T850"])


def test_streaming_metrics_equal_the_in_memory_reference(finished_run, tiny_config):
    """The pipeline's block-wise (Chan) reduction gives the metrics of `assimilate`, which holds
    the whole ensemble; members are batch-invariant, so only summation order differs (rtol 1e-6)."""
    from ensemble_da.assimilation import Assimilator, assimilate
    from ensemble_da.obs.inputs import prepare_inputs
    from ensemble_da.truth import osse_truths

    out, _ = finished_run
    config = load_config(tiny_config)
    assimilator = Assimilator(config)
    ref = assimilate(config, prepare_inputs(config, assimilator.prior, osse_truths(assimilator.prior, config)), assimilator)
    np.testing.assert_array_equal(open_run(out).analysis.values, ref.analysis)
    by_time = json.loads((out / "summary.json").read_text())["by_time"]
    for t, metrics in enumerate(by_time.values()):
        assert metrics.keys() == ref.metrics[t].keys()
        for name, value in metrics.items():
            assert value == pytest.approx(ref.metrics[t][name], rel=1e-6, abs=1e-9), name


def test_exact_posterior_too_big_for_memory_is_skipped_with_a_warning(tmp_path, tiny_config, monkeypatch):
    """The exact posterior is a reference, not the analysis: when it would not fit in memory the run
    still finishes, says so in one warning line, and writes no exact fields. The exact posterior's
    memory estimate (only its, not the prior's) is made to exceed any machine's."""
    import ensemble_da.exact
    from ensemble_da.memory import check_fits

    monkeypatch.setattr(ensemble_da.exact, "check_fits", lambda need, what, error: check_fits(2**70, what, error))
    result = invoke("run", tiny_config, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:") and "exact posterior with" in line]
    assert len(warnings) == 1 and "GiB" in warnings[0]
    ds = xr.open_zarr(tmp_path / "run" / "analysis.zarr")
    assert "exact_mean" not in ds and "analysis" in ds
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert not any(k.startswith("exact_") for k in summary)


def test_too_few_steps_and_a_variance_far_from_exact_are_not_silent(tmp_path, tiny_config):
    """An analysis that finishes but is not a posterior sample says so: 4 steps is flagged as
    under-resolved, and the exact-variance check is applied to the summary's own ratios (computed
    here from the store, independently of the run's metrics)."""
    from actors.command import sanity_warnings

    result = invoke("run", tiny_config, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert any(line.startswith("warning: sampler.steps=4 is below 16") for line in result.stderr.splitlines())
    ds = xr.open_zarr(tmp_path / "run" / "analysis.zarr")
    var = ds["analysis"].var("member", ddof=1).mean("cell") / (ds["exact_spread"] ** 2).mean("cell")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for c in ds.channel.values:
        ratio = float(var.sel(channel=c).mean("time"))
        assert summary[f"exact_var_ratio/{c}"] == pytest.approx(ratio, rel=1e-3)
        flagged = any(line.startswith(f"warning: exact_var_ratio/{c} = ") for line in result.stderr.splitlines())
        assert flagged == (not 0.5 <= ratio <= 2.0), (c, ratio)
    lines = sanity_warnings(32, {"exact_var_ratio/T850": 7.2, "exact_var_ratio/T500": 1.0})
    assert len(lines) == 1 and "exact_var_ratio/T850 = 7.2" in lines[0] and "\n" not in lines[0]
    assert sanity_warnings(32, {"exact_var_ratio/T850": 0.9}) == []
    assert len(sanity_warnings(32, {"exact_var_ratio/T850": 0.3})) == 1
    qc = sanity_warnings(32, {"qc/read": 60.0, "qc/nonfinite": 6.0, "qc/other_variable": 4.0, "qc/kept": 54.0})
    assert qc == ["warning: quality control removed 6 of 60 observations read (nonfinite: 6); the analysis used the "
                  "rest (counts per reason in summary.json, qc/*)"]
    background = sanity_warnings(32, {"qc/read": 60.0, "qc/background_rejected/T850": 3.0, "qc/background_rejected/T500": 0.0})
    assert len(background) == 1 and "removed 3 of 60" in background[0] and "background_rejected/T850: 3" in background[0]


def test_a_key_of_another_prior_kind_is_one_error_line(tmp_path):
    """`--set model.kind=checkpoint` on the demo keeps none of the demo's Gaussian keys (here the
    run stops at once: the --out directory is taken); a Gaussian key the user sets with it is one
    `error:` line naming the kinds that have it, exit 2, before anything is written."""
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "file").write_text("x")
    quiet = invoke("run", "--set", "model.kind=checkpoint", "--out", taken)
    assert quiet.exit_code == 2 and quiet.stderr.strip().splitlines() == [
        f"error: output directory {taken} already exists; choose another --out or add --resume"]
    fresh = tmp_path / "fresh"
    loud = invoke("run", "--set", "model.kind=checkpoint", "--set", "model.std={T850: 1.0}", "--out", fresh)
    assert loud.exit_code == 2 and not fresh.exists()
    assert loud.stderr.strip().splitlines() == [
        "error: --set model.std: 'model.std' is not a key of model.kind checkpoint (it is a key of model.kind "
        "gaussian, gaussian_markov)"]


def test_unit_conversions_of_the_readers_are_notes_on_stderr(tmp_path):
    """A Z500 file in geopotential height (gpm): the run says, in one `note:` line, that it read it
    as geopotential × 9.80665, and the stored observations are those values."""
    lat, lon = np.linspace(90.0, -90.0, 19), np.arange(0.0, 360.0, 20.0)
    height = (5500.0 + 2.0 * lat[:, None] + 0.0 * lon)[None, None]
    xr.Dataset({"z": (("time", "level", "latitude", "longitude"), height, {"units": "gpm"})},
               coords={"time": [np.datetime64("2020-01-01T00:00", "ns")], "level": [500], "latitude": lat,
                       "longitude": lon}).to_netcdf(tmp_path / "z500.nc")
    config = tmp_path / "z.yaml"
    config.write_text(f"""
times: ["2020-01-01T00:00"]
grid: {{nside: 4}}
model: {{kind: gaussian, channels: [Z500], mean: {{Z500: 54000.0}}, std: {{Z500: 1000.0}}, length_scale_km: 2500}}
sampler: {{steps: 4, batch_size: 2}}
ensemble: {{members: 2}}
observations: {{source: era5, path: {tmp_path / 'z500.nc'}, channels: [Z500], num_obs: 20, sigma: {{Z500: 50.0}}}}
cluster: {{address: inprocess, replicas: 1, members_per_unit: 2}}
""")
    result = invoke("run", config, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output + str(result.exception)
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1, result.stderr
    assert "variable 'z': geopotential height in 'gpm' converted to geopotential" in notes[0] and "9.80665" in notes[0]
    obs = open_run(tmp_path / "run", group="observations")
    np.testing.assert_allclose(obs["value"].values, 9.80665 * (5500.0 + 2.0 * obs["lat"].values), rtol=1e-6)
