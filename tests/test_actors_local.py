"""The embedded default `cluster.address: local`: a private Ray started on loopback for the run
and shut down after it (DESIGN.md §8, RAY-LOOPBACK.md); same store as in-process."""

from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before ray is imported: loopback only
os.environ["RAY_AUTH_MODE"] = "disabled"

import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

from actors.run import run_pipeline  # noqa: E402
from ray_helpers import assert_same_store, config, is_loopback, listening_addresses  # noqa: E402

pytestmark = pytest.mark.slow


def test_local_ray_on_loopback_equals_inprocess(tmp_path, monkeypatch, request):
    # A short private Ray temp dir (socket paths have a length limit; no stale session files).
    ray_tmp = tempfile.mkdtemp(prefix="eda-ray-", dir="/tmp")
    request.addfinalizer(lambda: shutil.rmtree(ray_tmp, ignore_errors=True))
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    ref = tmp_path / "inprocess"
    run_pipeline(config(), ref, progress=False)
    seen = {}

    def watch(result, executor):
        seen.setdefault("listen", listening_addresses())

    result = run_pipeline(config(address="local", replicas=2), tmp_path / "local", progress=False, on_unit=watch)
    assert seen["listen"] and all(is_loopback(ip) for ip in seen["listen"]), seen["listen"]
    # Pull-style: both replicas took units.
    assert [r["members"] > 0 for r in result.summary["replicas"]] == [True, True]
    assert_same_store(ref, tmp_path / "local")
    # The run's Ray is gone with the run.
    assert not sys.modules["ray"].is_initialized()


def test_diagnostics_exact_false_skips_the_exact_reference(tmp_path):
    """`diagnostics.exact: false` on a Gaussian prior: no exact fields or metrics, and the
    analysis itself is unchanged (the reference never feeds the sampler)."""
    import json

    import numpy as np

    from ensemble_da.io import open_run

    run_pipeline(config(), tmp_path / "with", progress=False)
    cfg = config().model_copy(update={"diagnostics": config().diagnostics.model_copy(update={"exact": False})})
    run_pipeline(cfg, tmp_path / "without", progress=False)
    a, b = open_run(tmp_path / "with"), open_run(tmp_path / "without")
    assert "exact_mean" in a and "exact_mean" not in b and "exact_spread" not in b
    np.testing.assert_array_equal(a["analysis"].values, b["analysis"].values)
    summary = json.loads((tmp_path / "without" / "summary.json").read_text())
    assert not [k for k in summary if k.startswith("exact_")], summary
    full = json.loads((tmp_path / "with" / "summary.json").read_text())
    assert any(k.startswith("exact_") for k in full)
    # timings_s: the run's phases, one after another, each timed once, so they add up to at most
    # the run's wall time (measured by its own clock from the start), and none is missing.
    timings = full["timings_s"]
    phases = ("prepare_s", "runtime_start_s", "exact_s", "store_tracking_s", "aggregators_start_s",
              "replicas_start_s", "units_s", "drain_s", "outputs_s")
    assert all(timings[k] >= 0 for k in phases), timings
    assert sum(timings[k] for k in phases) <= full["wall_time_s"] + 0.05, timings
    assert timings["sampling_s"] > 0 and timings["aggregating_s"] <= timings["units_s"] + timings["drain_s"] + \
        timings["aggregators_start_s"], timings
