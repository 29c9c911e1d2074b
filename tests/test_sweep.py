"""`ensemble-da sweep` (every combination of a config grid in one Ray session) and growing a
finished run's ensemble with `--resume --set ensemble.members=N`."""

from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before ray is imported: loopback only
os.environ["RAY_AUTH_MODE"] = "disabled"

import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from ensemble_da.cli import app  # noqa: E402
from ensemble_da.io import open_run  # noqa: E402
from ray_helpers import assert_same_store  # noqa: E402

# nside 8, 8 sampler steps (below the resolved range: this checks bookkeeping, not calibration),
# one time, 4 members in one unit.
TREE = dict(
    run_name="uq", seed=5, times=["2020-01-01T00:00"], grid=dict(nside=8),
    model=dict(kind="gaussian", channels=["T850", "T500", "T300"],
               mean=dict(T850=275.0, T500=255.0, T300=230.0), std=dict(T850=6.0, T500=5.0, T300=4.0),
               length_scale_km=2000),
    sampler=dict(steps=8), guidance=dict(method="mmps", cg_iters=2), ensemble=dict(members=4),
    observations=dict(num_obs=40, sigma=dict(T850=0.5, T500=0.5, T300=0.5)),
    cluster=dict(address="inprocess", replicas=1, members_per_unit=4, device="cpu"),
)


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


@pytest.fixture
def cfg_file(tmp_path):
    def write(**changes):
        tree = json.loads(json.dumps(TREE))
        for key, value in changes.items():
            node = tree
            *head, last = key.split(".")
            for k in head:
                node = node.setdefault(k, {})
            node[last] = value
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump(tree))
        return path
    return write


@pytest.mark.slow
def test_sweep_2x2_on_local_ray(cfg_file, tmp_path, monkeypatch, request):
    ray_tmp = tempfile.mkdtemp(prefix="eda-ray-", dir="/tmp")
    request.addfinalizer(lambda: shutil.rmtree(ray_tmp, ignore_errors=True))
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    from actors.ray_backend.session import import_ray_loopback

    ray = import_ray_loopback()
    inits = []
    real_init = ray.init
    monkeypatch.setattr(ray, "init", lambda *a, **k: (inits.append(k), real_init(*a, **k))[1])
    config = cfg_file(**{"cluster.address": "local"})
    out = tmp_path / "sweep"
    result = invoke("sweep", config, "--grid", "observations.sigma.T850=0.5,2.0", "--grid", "seed=1,2", "--out", out)
    assert result.exit_code == 0, result.output
    assert len(inits) == 1  # one Ray session for the four runs
    assert not sys.modules["ray"].is_initialized()

    table = pd.read_parquet(out / "sweep.parquet")
    assert len(table) == 4
    assert table["seed"].dtype == np.int64 and table["observations.sigma.T850"].dtype == np.float64
    assert sorted(zip(table["observations.sigma.T850"], table["seed"])) == [(0.5, 1), (0.5, 2), (2.0, 1), (2.0, 2)]
    for col in ("rmse/T850", "ssr/T850", "spread/T500", "run_dir", "run_id"):
        assert col in table.columns
    csv = pd.read_csv(out / "sweep.csv")
    assert list(csv.columns) == list(table.columns)
    # The cluster has room for two runs (2 CPUs, one 1-CPU replica each): two runs went at once,
    # each on its own replica, and the two later runs took those replicas, prior kept (the model
    # config is the same).
    replicas = [json.loads((Path(d) / "summary.json").read_text())["replicas"] for d in table["run_dir"]]
    assert len({tuple(r["pid"] for r in rs) for rs in replicas}) == 2, replicas
    assert sorted(all(r["prior_kept"] for r in rs) for rs in replicas) == [False, False, True, True]
    html = (out / "sweep.html").read_text()
    assert "data:image/png;base64" in html and "rmse/T850" in html
    for run_dir in table["run_dir"]:
        for name in ("config.yaml", "analysis.zarr", "summary.json", "report.html"):
            assert (Path(run_dir) / name).exists()

    # MLflow: one parent, four children in one experiment.
    state = json.loads((out / "sweep.json").read_text())
    client = MlflowClient(tracking_uri=state["tracking_uri"])
    parent = client.get_run(state["parent_run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.info.run_id for r in children) == sorted(table["run_id"])
    assert sorted(r.info.run_name for r in children) == ["uq-00", "uq-01", "uq-02", "uq-03"]
    assert set(table["status"]) == {"finished"}
    # Each run's warnings are printed, naming the run (8 steps is below the resolved range).
    assert "warning: run 00 (observations.sigma.T850=0.5, seed=1): sampler.steps=8 is below" in result.output
    assert all(r.info.status == "FINISHED" for r in children) and parent.info.status == "FINISHED"
    spans = sorted((r.info.start_time, r.info.end_time) for r in children)
    assert spans[1][0] < spans[0][1], spans  # the first two runs overlapped in time
    assert all(client.get_metric_history(r.info.run_id, "rmse/T850") for r in children)

    # One run of the sweep equals a standalone `ensemble-da run` with its settings, bit for bit.
    row = table[(table["observations.sigma.T850"] == 2.0) & (table["seed"] == 2)].iloc[0]
    alone = tmp_path / "alone"
    res = invoke("run", config, "--set", "observations.sigma.T850=2.0", "--set", "seed=2",
                 "--set", "cluster.address=inprocess", "--out", alone)
    assert res.exit_code == 0, res.output
    assert_same_store(alone, Path(row["run_dir"]))

    # One run at a time (--max-parallel 1): the same replica process serves every run, and after
    # the first it keeps its prior.
    one = tmp_path / "one"
    res = invoke("sweep", config, "--grid", "seed=1,2", "--max-parallel", "1", "--out", one)
    assert res.exit_code == 0, res.output
    seq = [json.loads((Path(d) / "summary.json").read_text())["replicas"]
           for d in pd.read_parquet(one / "sweep.parquet")["run_dir"]]
    assert len({tuple(r["pid"] for r in rs) for rs in seq}) == 1, seq
    assert [all(r["prior_kept"] for r in rs) for rs in seq] == [False, True]

    # --resume of a finished sweep runs nothing and rewrites the same table.
    again = invoke("sweep", config, "--grid", "observations.sigma.T850=0.5,2.0", "--grid", "seed=1,2",
                   "--out", out, "--resume")
    assert again.exit_code == 0, again.output
    assert len(inits) == 2  # the --max-parallel 1 sweep; nothing to run here: no Ray started
    pd.testing.assert_frame_equal(pd.read_parquet(out / "sweep.parquet"), table)


def test_sweep_resume_runs_only_unfinished(cfg_file, tmp_path):
    config = cfg_file()
    out = tmp_path / "sweep"
    assert invoke("sweep", config, "--grid", "seed=1,2", "--out", out).exit_code == 0
    table = pd.read_parquet(out / "sweep.parquet")
    kept = (out / "runs" / "00" / "summary.json").stat().st_mtime_ns
    # In-process too, run 01 reused run 00's replica and prior; run again alone below (a fresh
    # replica and prior), it gives the same metrics.
    assert json.loads((out / "runs" / "01" / "summary.json").read_text())["replicas"][0]["prior_kept"]
    shutil.rmtree(out / "runs" / "01")
    result = invoke("sweep", config, "--out", out, "--resume")  # the grid comes from the sweep directory
    assert result.exit_code == 0, result.output
    assert (out / "runs" / "00" / "summary.json").stat().st_mtime_ns == kept
    new = pd.read_parquet(out / "sweep.parquet")
    metrics = [c for c in table.columns if "/" in c and not c.startswith("mmps_residual/")]
    pd.testing.assert_frame_equal(new[metrics], table[metrics])


def test_sweep_grid_from_the_config_file(cfg_file, tmp_path):
    config = cfg_file()
    tree = yaml.safe_load(config.read_text())
    tree["sweep"] = {"guidance.method": ["mmps", "dps"]}
    config.write_text(yaml.safe_dump(tree))
    from actors.sweep import plan_sweep

    plan = plan_sweep(config, [], tmp_path / "s")
    assert [r.params for r in plan.runs] == [{"guidance.method": "mmps"}, {"guidance.method": "dps"}]
    assert plan.runs[1].config.guidance.method == "dps"


@pytest.mark.parametrize("grid, needle", [
    (["ensemble.memberz=1,2"], "error: --grid ensemble.memberz: unknown config key 'ensemble.memberz'"),
    (["ensemble.members=0,2"], "error: --grid ensemble.members: bad value for 'ensemble.members' (0)"),
    (["seed="], "error: --grid seed: empty list of values"),
    (["seed"], "error: --grid expects KEY=V1,V2,..."),
    ([], "error: sweep: no grid"),
    (["observations.sigma.T999=1,2"], "error: --grid observations.sigma.T999: 'T999' is not an observed channel "
                                      "(observations.channels: ['T850', 'T500', 'T300']), so every run ignores"),
    (["observations.channels=[T850]", "observations.sigma.T500=1,2"], "error: --grid observations.sigma.T500: "
                                                                      "'T500' is not an observed channel"),
])
def test_bad_grid_is_one_error_line_before_anything_runs(grid, needle, cfg_file, tmp_path):
    config = cfg_file()
    args = ["sweep", config, *[x for g in grid for x in ("--grid", g)], "--out", tmp_path / "s"]
    result = invoke(*args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(needle), result.output
    assert not (tmp_path / "s").exists()


def test_grow_8_to_16_members(cfg_file, tmp_path):
    config = cfg_file(**{"ensemble.members": 8})
    grown, fresh = tmp_path / "grown", tmp_path / "fresh"
    assert invoke("run", config, "--out", grown).exit_code == 0
    before = open_run(grown).analysis.values.copy()
    old_id = json.loads((grown / "summary.json").read_text())["run_id"]
    result = invoke("run", "--out", grown, "--resume", "--set", "ensemble.members=16")
    assert result.exit_code == 0, result.output
    assert "8 sampled now" in result.output
    assert invoke("run", config, "--set", "ensemble.members=16", "--out", fresh).exit_code == 0
    after = open_run(grown)
    assert after.analysis.shape[1] == 16
    assert after.analysis.values[:, :8].tobytes() == before.tobytes()  # the first members as they were
    assert_same_store(fresh, grown)  # members, statistics, observation-space stats and every metric
    summary = json.loads((grown / "summary.json").read_text())
    assert summary["members_done"] == 16 and summary["members_sampled"] == 8
    # The largest MMPS residual covers the 8 members sampled before the grow as well.
    fresh_summary = json.loads((fresh / "summary.json").read_text())
    residual = [{t: m["mmps_residual/max"] for t, m in s["by_time"].items()} for s in (summary, fresh_summary)]
    assert residual[0] == residual[1] and summary["mmps_residual/max"] == fresh_summary["mmps_residual/max"]
    assert yaml.safe_load((grown / "config.yaml").read_text())["ensemble"]["members"] == 16

    # MLflow: the grow is a new run (params cannot change), tagged with the run it grew from, in
    # the same experiment; each run has one metric history, the new one the 16-member values.
    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    new, old = client.get_run(summary["run_id"]), client.get_run(old_id)
    assert new.info.run_id != old_id and new.data.tags["grown_from"] == old_id
    assert new.info.experiment_id == old.info.experiment_id and new.info.run_name == old.info.run_name
    assert (new.data.params["ensemble.members"], old.data.params["ensemble.members"]) == ("16", "8")
    assert new.data.tags["members"] == "16" and new.info.status == old.info.status == "FINISHED"
    for run in (new, old):
        assert [m.step for m in client.get_metric_history(run.info.run_id, "rmse/T850")] == [0]
    assert client.get_metric_history(new.info.run_id, "rmse/T850")[0].value == pytest.approx(fresh_summary["rmse/T850"])
    assert json.loads((grown / "run_state.json").read_text())["run_id"] == new.info.run_id

    # Fewer members than the run has: one error line, nothing touched.
    stamp = {p: p.stat().st_mtime_ns for p in grown.rglob("*") if p.is_file()}
    refused = invoke("run", "--out", grown, "--resume", "--set", "ensemble.members=12")
    assert refused.exit_code == 2
    assert refused.output.strip().splitlines() == [
        f"error: --resume: ensemble.members=12 is fewer than the 16 members of the run in {grown}; "
        "an ensemble can only grow (its outputs are left as they are)"]
    assert {p: p.stat().st_mtime_ns for p in grown.rglob("*") if p.is_file()} == stamp


@pytest.mark.parametrize("text, needle", [
    ("seed: 7\nrun_name: x\nseed: 0\n", "duplicate key 'seed' at line 1 and line 3"),
    ("run_name: x\nsampler:\n\tsteps: 8\n", "line 3 is indented with a tab character"),
    ("# only a comment\n", "the config file is empty"),
])
def test_sweep_reads_config_files_with_runs_checks(text, needle, tmp_path):
    """Nothing is started or written when the file is bad (a second try is not 'already exists')."""
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    result = invoke("sweep", config, "--grid", "seed=1,2", "--out", tmp_path / "s")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.output
    assert not (tmp_path / "s").exists()


def test_a_swept_sigma_counts_when_some_run_observes_its_channel(cfg_file, tmp_path):
    """Refused only where every run ignores it; the file's sweep: section is named for its keys."""
    from actors.sweep import plan_sweep
    from ensemble_da.errors import InputError

    plan = plan_sweep(cfg_file(), ["observations.channels=[T850],[T500]", "observations.sigma.T500=1,2"], tmp_path / "s")
    assert [r.config.observations.sigma["T500"] for r in plan.runs] == [1, 2, 1, 2]
    config = cfg_file()
    tree = yaml.safe_load(config.read_text())
    tree["sweep"] = {"observations.sigma.Q700": [1, 2]}
    config.write_text(yaml.safe_dump(tree))
    with pytest.raises(InputError, match=r"cfg.yaml: sweep: observations.sigma.Q700: 'Q700' is not an observed channel"):
        plan_sweep(config, [], tmp_path / "s")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("args, needle", [
    (["--set", "sampler.stepz=3"], "error: --set sampler.stepz: unknown config key 'sampler.stepz'"),
    (["--set", "ensemble.members=0"], "error: --set ensemble.members: bad value for 'ensemble.members' (0)"),
    (["--set", "nosection"], "error: --set expects key=value, got 'nosection'"),
])
def test_a_bad_set_is_one_error_line_before_anything_runs(args, needle, cfg_file, tmp_path):
    result = invoke("sweep", cfg_file(), "--grid", "seed=1,2", *args, "--out", tmp_path / "s")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(needle), result.output
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("args, needle", [
    (["--grid", "seed=0,0"], "error: --grid seed: value 0 is given twice"),
    (["--resume"], "is not a sweep directory (no sweep.json)"),
])
def test_sweep_grid_and_resume_mistakes_are_one_line(args, needle, cfg_file, tmp_path):
    result = invoke("sweep", cfg_file(), *args, "--out", tmp_path / "s")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.output


def test_an_unknown_key_of_the_files_sweep_section_names_that_section(cfg_file):
    config = cfg_file()
    tree = yaml.safe_load(config.read_text())
    tree["sweep"] = {"sampler.stepz": [1, 2]}
    config.write_text(yaml.safe_dump(tree))
    from actors.sweep import plan_sweep
    from ensemble_da.errors import InputError

    with pytest.raises(InputError, match=r"cfg.yaml: sweep: sampler.stepz: unknown config key"):
        plan_sweep(config, [], config.parent / "s")


def test_a_failed_run_is_recorded_and_the_sweep_goes_on(cfg_file, tmp_path):
    """A combination that fails (here a channel the prior lacks, found when the run reads its
    inputs) is a row with status failed; the other runs finish; the command ends with one error
    line naming it, and --resume tries it again."""
    config, out = cfg_file(), tmp_path / "sweep"
    result = invoke("sweep", config, "--grid", "observations.channels=[Q700],[T850]", "--out", out)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        "error: 1 of 2 sweep runs failed: runs/00 (observations.channels: 'Q700' is not a channel of the prior "
        f"(model channels: ['T850', 'T500', 'T300'])); the other runs are in {out}")
    table = pd.read_parquet(out / "sweep.parquet")
    assert list(table["status"]) == ["failed", "finished"]
    assert "'Q700' is not a channel" in table["error"][0] and table["error"][1] == ""
    assert np.isnan(table["rmse/T850"][0]) and np.isfinite(table["rmse/T850"][1])
    # Counts stay integers beside the failed run's missing value; members is known for both.
    assert table["qc/read"].dtype == pd.Int64Dtype() and pd.isna(table["qc/read"][0]) and table["qc/read"][1] == 40
    assert table["members"].dtype == np.int64 and list(table["members"]) == [4, 4]
    assert (out / "runs" / "01" / "summary.json").is_file()
    again = invoke("sweep", config, "--out", out, "--resume")
    assert again.exit_code == 2 and "1 of 2 sweep runs failed: runs/00" in again.output


# The 2x2 sweep the tests below read (in-process; `--set sampler.steps=6` before the grid).
GRID_2X2 = ["--grid", "observations.sigma.T850=0.5,2.0", "--grid", "seed=1,2"]


@pytest.fixture(scope="module")
def sweep_2x2(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep2x2")
    config = tmp / "cfg.yaml"
    config.write_text(yaml.safe_dump(TREE))
    out = tmp / "sweep"
    result = invoke("sweep", config, *GRID_2X2, "--set", "sampler.steps=6", "--out", out)
    assert result.exit_code == 0, result.output
    return config, out, pd.read_parquet(out / "sweep.parquet")


def test_sweep_set_members_and_integer_counts(sweep_2x2):
    config, out, table = sweep_2x2
    for run_dir, members in zip(table["run_dir"], table["members"]):
        resolved = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
        assert resolved["sampler"]["steps"] == 6 and resolved["ensemble"]["members"] == members == 4
    assert table["members"].dtype == np.int64
    qc = [c for c in table.columns if c.startswith("qc/")]
    assert "qc/read" in qc and all(table[c].dtype == np.int64 for c in qc)
    assert list(table["qc/read"]) == [TREE["observations"]["num_obs"]] * 4
    for _, row in table.iterrows():
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        assert {c: row[c] for c in qc} == {c: int(summary[c]) for c in qc}
    assert pd.read_csv(out / "sweep.csv")["qc/kept"].dtype == np.int64


def test_sweep_html_plots_every_numeric_metric_against_every_key(sweep_2x2, monkeypatch):
    from matplotlib.axes import Axes

    from actors.sweep import plan_sweep, sweep_html

    config, out, table = sweep_2x2
    titles = []
    real = Axes.set_title
    monkeypatch.setattr(Axes, "set_title", lambda ax, text, *a, **k: (titles.append(text), real(ax, text, *a, **k))[1])
    plan = plan_sweep(config, GRID_2X2[1::2], out, resume=True, overrides=["sampler.steps=6"])
    html = sweep_html(plan, table)
    metrics = [c for c in table.columns if "/" in c]
    for family in ("oa_bias/", "spread_at_obs/", "heldout_ssr/", "heldout_crps/", "mmps_residual/", "qc/"):
        assert any(m.startswith(family) for m in metrics)
    assert sorted(titles) == sorted(metrics * 2)  # a panel per metric and swept key
    assert html.count("data:image/png;base64") == 2


def test_sweep_resume_is_independent_of_the_grid_order(sweep_2x2):
    config, out, table = sweep_2x2
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("summary.json")}
    result = invoke("sweep", config, *GRID_2X2[2:], *GRID_2X2[:2], "--set", "sampler.steps=6", "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("summary.json")} == stamps  # nothing ran
    again = pd.read_parquet(out / "sweep.parquet")
    assert list(again.columns[:2]) == ["observations.sigma.T850", "seed"]  # the sweep's own order
    pd.testing.assert_frame_equal(again, table)


@pytest.mark.parametrize("args, needle", [
    (["--grid", "seed=1,3", "--grid", "observations.sigma.T850=0.5,2.0", "--set", "sampler.steps=6"],
     "the grid differs from the sweep in {out}: seed=1,3 here but seed=1,2 in the sweep"),
    (["--grid", "seed=1,2", "--set", "sampler.steps=6"],
     "the grid differs from the sweep in {out}: the sweep's grid has observations.sigma.T850=0.5,2.0, not given here"),
    ([*GRID_2X2, "--grid", "sampler.steps=6,8"], "sampler.steps=6,8 is not in the sweep's grid"),
    (GRID_2X2, "config key 'sampler.steps' is 8 but the sweep in {out} (run 00) used 6; resume with"),
    ([*GRID_2X2, "--set", "sampler.steps=6", "--set", "guidance.cg_iters=3"],
     "config key 'guidance.cg_iters' is 3 but the sweep in {out} (run 00) used 2; resume with"),
    ([*GRID_2X2, "--set", "guidance.cg_iters=3"],  # every differing key is named, not the first only
     "config key 'guidance.cg_iters' is 3 but the sweep in {out} (run 00) used 2; 'sampler.steps' is 8 (was 6); "
     "resume with"),
])
def test_sweep_resume_names_what_differs(args, needle, sweep_2x2):
    config, out, _ = sweep_2x2
    stamp = (out / "sweep.json").stat().st_mtime_ns
    result = invoke("sweep", config, *args, "--out", out, "--resume")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --resume: ") and needle.format(out=out) in lines[0], \
        result.output
    assert (out / "sweep.json").stat().st_mtime_ns == stamp


def test_a_grown_sweep_run_stays_under_the_parent_and_its_table_row_says_so(cfg_file, tmp_path):
    config, out = cfg_file(), tmp_path / "sweep"
    assert invoke("sweep", config, "--grid", "seed=1,2", "--out", out).exit_code == 0
    old_id = json.loads((out / "runs" / "00" / "summary.json").read_text())["run_id"]
    grow = invoke("run", "--out", out / "runs" / "00", "--resume", "--set", "ensemble.members=8")
    assert grow.exit_code == 0, grow.output
    result = invoke("sweep", config, "--out", out, "--resume")  # nothing to run: the table rewritten
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out / "sweep.parquet")
    assert list(table["members"]) == [8, 4]
    new_id = json.loads((out / "runs" / "00" / "summary.json").read_text())["run_id"]
    assert table["run_id"][0] == new_id != old_id
    state = json.loads((out / "sweep.json").read_text())
    client = MlflowClient(tracking_uri=state["tracking_uri"])
    new, old = client.get_run(new_id), client.get_run(old_id)
    for tag in ("mlflow.parentRunId", "sweep_index", "sweep.seed"):
        assert new.data.tags[tag] == old.data.tags[tag]
    assert new.data.tags["mlflow.parentRunId"] == state["parent_run_id"] and new.data.tags["grown_from"] == old_id
    assert new.info.run_name == "uq-00" and new.data.params["ensemble.members"] == "8"


def test_a_grid_flag_replacing_the_files_sweep_values_is_a_note(cfg_file, tmp_path):
    """`--grid` wins over the file's `sweep:` section for its key, and the plan says so."""
    from actors.sweep import plan_sweep

    config = cfg_file()
    tree = yaml.safe_load(config.read_text())
    tree["sweep"] = {"seed": [1, 2], "observations.sigma.T850": [0.5, 2.0]}
    config.write_text(yaml.safe_dump(tree))
    plan = plan_sweep(config, ["seed=5,6,7"], tmp_path / "s")
    assert plan.grid == {"seed": [5, 6, 7], "observations.sigma.T850": [0.5, 2.0]}
    assert plan.notes == [f"--grid seed=5,6,7 replaces the values 1,2 of {config}'s sweep: section"]
    assert plan_sweep(config, ["seed=1,2"], tmp_path / "s").notes == []  # the same values: nothing to say
