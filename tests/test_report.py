"""`ensemble-da report DIR` (ensemble_da/report.py) on the packaged demo run (shrunk), opened in
headless Chromium (Debian's `chromium` + `chromium-driver`, driven over WebDriver by selenium):
every image decodes, the per-channel table is there; and runs that are not finished are refused."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ensemble_da.cli import app

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
DEMO_OVERRIDES = ["grid.nside=8", "sampler.steps=8", "ensemble.members=8", "cluster.address=inprocess",
                  "diagnostics.background=true",
                  "times=['2020-01-01T00:00']", "observations.num_obs=120", "observations.heldout_fraction=0.25"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "run"
    args = ["run", "--out", out]
    for o in DEMO_OVERRIDES:
        args += ["--set", o]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return out


def _browser(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,1000"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


def test_report_opens_in_headless_chromium(demo_run, tmp_path):
    result = invoke("report", demo_run)
    assert result.exit_code == 0, result.output
    page = demo_run / "report.html"
    text = page.read_text()
    # Self-contained: every image is embedded, nothing is fetched from elsewhere.
    assert not re.search(r"""(src|href)=['"](?!data:)""", text)

    driver = _browser(tmp_path)
    try:
        driver.get(page.as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
        # One time: maps, O−A map, truth ranks, held-out ranks, spread reliability.
        assert [i[0] for i in images] == ["maps_t0", "obs_residuals_t0", "rank_histogram_truth",
                                          "rank_histogram_heldout", "spread_skill"]
        assert all(done and w > 0 and h > 0 for _, done, w, h in images), images
        rows = driver.execute_script(
            "return Array.from(document.querySelectorAll('#channel-table tbody tr'))"
            ".map(r => Array.from(r.cells).map(c => c.textContent))")
        header = driver.execute_script(
            "return Array.from(document.querySelectorAll('#channel-table thead th')).map(c => c.textContent)")
        driver.set_window_size(1400, driver.execute_script("return document.body.scrollHeight") + 50)
        driver.save_screenshot(str(tmp_path / "report.png"))
    finally:
        driver.quit()
    assert header == ["metric", "T850", "T500", "T300"]
    table = {r[0]: r[1:] for r in rows}
    summary = json.loads((demo_run / "summary.json").read_text())
    for title, key in (("RMSE vs truth", "rmse"), ("O−B RMS", "ob_rmse"), ("χ²/n", "chi2_per_obs")):
        assert [float(v) for v in table[title]] == pytest.approx(
            [summary[f"{key}/{c}"] for c in ("T850", "T500", "T300")], rel=1e-3)  # shown to 4 significant digits
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_report_refuses_unfinished_runs(demo_run, tmp_path):
    # Not a directory / not a run.
    for bad, words in ((tmp_path / "missing", "is not a directory"), (tmp_path, "not a run directory")):
        result = invoke("report", bad)
        assert result.exit_code == 2 and words in result.output and len(result.output.strip().splitlines()) == 1
    # A run that failed before finishing: summary missing and the store not marked complete.
    broken = tmp_path / "broken"
    shutil.copytree(demo_run, broken)
    (broken / "summary.json").unlink()
    (broken / "report.html").unlink(missing_ok=True)
    result = invoke("report", broken)
    assert result.exit_code == 2 and "did not finish" in result.output and len(result.output.strip().splitlines()) == 1
    import zarr

    zarr.open_group(str(broken / "analysis.zarr"), mode="r+", zarr_format=3).attrs["complete"] = False
    result = invoke("report", broken)
    assert result.exit_code == 2 and "incomplete" in result.output, result.output
    assert not (broken / "report.html").exists()


def test_demo_run_stores_background_diagnostics_and_tags(demo_run):
    """The run's background is the unguided prior drawn with the analysis' seeds (checked against the
    in-process sampler), its diagnostics are in summary.json, and MLflow has the tags and figures."""
    import numpy as np
    from mlflow import MlflowClient

    from ensemble_da.assimilation import Assimilator
    from ensemble_da.config import load_config
    from ensemble_da.io import open_run

    ds, obs = open_run(demo_run), open_run(demo_run, group="observations")
    cfg = load_config(demo_run / "config.yaml")
    prior_members = Assimilator(cfg).sample(None, 0, list(range(cfg.ensemble.members))).analysis.astype(np.float64)
    np.testing.assert_allclose(ds["background_mean"][0].values, prior_members.mean(0), rtol=0, atol=1e-3)
    np.testing.assert_allclose(ds["background_spread"][0].values, prior_members.std(0, ddof=1), rtol=0, atol=1e-3)
    np.testing.assert_allclose(ds["increment"].values, ds["ensemble_mean"].values - ds["background_mean"].values,
                               atol=1e-4)

    summary = json.loads((demo_run / "summary.json").read_text())
    assim = obs["assimilated"].values
    for c in ("T850", "T500", "T300"):
        sel = assim & (obs["channel"].values == c)
        o_b = obs["value"].values[sel] - obs["hb_mean"].values[sel]
        o_a = obs["value"].values[sel] - obs["hx_mean"].values[sel]
        assert summary[f"ob_rmse/{c}"] == pytest.approx(np.sqrt(np.mean(o_b**2)), rel=1e-5)
        assert summary[f"desroziers_sigma_o/{c}"] == pytest.approx(np.sqrt(np.mean(o_a * o_b)), rel=1e-4)
        assert summary[f"qc/background_rejected/{c}"] == 0.0
        assert summary[f"heldout_improvement/{c}"] > 0  # prior spread 4–6 K against 0.5 K observations

    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    run = client.get_run(summary["run_id"])
    assert {k: run.data.tags[k] for k in ("prior", "guidance", "nside", "members")} == {
        "prior": "gaussian", "guidance": "mmps", "nside": "8", "members": "8"}
    assert run.data.params["diagnostics.background"] == "True"
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "figures/report")}
    assert {"figures/report/maps_t0.png", "figures/report/spread_skill.png"} <= arts
    assert "report.html" in {a.path for a in client.list_artifacts(run.info.run_id)}
