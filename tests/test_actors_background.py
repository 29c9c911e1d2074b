"""The background ensemble on Ray (actors/background.py): drawn by the same replicas before the
analysis, it gives the same store and diagnostics as in-process (DESIGN.md §2: same results
either way)."""

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
from ensemble_da.io import open_run  # noqa: E402
from ray_helpers import TREE, assert_same_store  # noqa: E402

pytestmark = pytest.mark.slow


def _config(**cluster) -> RunConfig:
    return RunConfig.model_validate({**TREE, "diagnostics": {"background": True},
                                     "cluster": {**TREE["cluster"], **cluster}})


def test_background_on_ray_equals_inprocess(tmp_path, monkeypatch, request):
    ray_tmp = tempfile.mkdtemp(prefix="eda-ray-", dir="/tmp")
    request.addfinalizer(lambda: shutil.rmtree(ray_tmp, ignore_errors=True))
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    ref, out = tmp_path / "inprocess", tmp_path / "local"
    run_pipeline(_config(), ref, progress=False)
    result = run_pipeline(_config(address="local", replicas=2), out, progress=False)
    assert_same_store(ref, out)  # analysis, statistics, summary metrics (diagnostics included)
    a, b = open_run(ref), open_run(out)
    for var in ("background_mean", "background_spread", "increment"):
        np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=var)
    oa, ob = open_run(ref, group="observations"), open_run(out, group="observations")
    np.testing.assert_array_equal(oa["hb_mean"].values, ob["hb_mean"].values)
    summary = json.loads((out / "summary.json").read_text())
    assert "chi2_per_obs/T850" in summary and "qc/background_rejected/T850" in summary
    # Each replica sampled background and analysis members: 2 times x 6 members x 2 ensembles in all.
    assert sum(r["members"] for r in result.summary["replicas"]) == 2 * 6 * 2
