"""A cycle without a per-time barrier (`cycle.first_guess_check: false`, DESIGN.md §10
"Scheduling"): the same members and statistics as the barrier schedule, bit for bit; `--resume`
mid-run; on a local Ray, a slow block does not stall the other blocks' next cycles and the run
still equals the in-process one.

The run is small: nside 4, 8 members in 4 blocks of 2, 6 six-hourly times, window 3 with carry.
"""

from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before ray is imported: loopback only
os.environ["RAY_AUTH_MODE"] = "disabled"

import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from actors.run import run_pipeline  # noqa: E402
from ensemble_da.config import RunConfig  # noqa: E402
from ray_helpers import run_interrupted  # noqa: E402
from test_cycle_resume import _assert_same_run  # noqa: E402

TESTS = Path(__file__).parent
TIMES = [str(np.datetime64("2020-01-01T00:00") + np.timedelta64(6 * k, "h")) for k in range(6)]
BLOCKS = 4


def _config(address: str = "inprocess", first_guess_check: bool = False, forecast="markov", **cluster) -> RunConfig:
    return RunConfig.model_validate(dict(
        run_name="cycle-flow", seed=3, mode="cycle", times=TIMES, grid=dict(nside=4),
        model=dict(kind="gaussian_markov", rho=0.8, channels=["T850", "T500"], mean=dict(T850=275.0, T500=255.0),
                   std=dict(T850=6.0, T500=5.0), length_scale_km=1500, channel_correlation=[[1, 0.6], [0.6, 1]]),
        cycle=dict(window=3, carry=True, forecast=forecast, first_guess_check=first_guess_check),
        sampler=dict(steps=6, batch_size=2), guidance=dict(method="mmps", solver="cg", cg_iters=3),
        ensemble=dict(members=8),
        observations=dict(channels=["T850", "T500"], num_obs=40, sigma=dict(T850=1.0, T500=1.0)),
        # A screen that rejects nothing (k = 10⁶): the barrier schedule assimilates what the flow does.
        diagnostics=dict(qc_sigma_k=1e6),
        cluster={"address": address, "replicas": 1, "members_per_unit": 2, "device": "cpu", **cluster},
    ))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted in-process run, flowing."""
    out = tmp_path_factory.mktemp("flow") / "ref"
    run_pipeline(_config(), out, progress=False)
    return out


def test_flow_equals_the_barrier_schedule_bit_for_bit(reference, tmp_path):
    run_pipeline(_config(first_guess_check=True), tmp_path / "barrier", progress=False)
    summary = json.loads((tmp_path / "barrier" / "summary.json").read_text())
    assert summary["qc/background_rejected/T850"] == summary["qc/background_rejected/T500"] == 0
    _assert_same_run(tmp_path / "barrier", reference)


def test_resume_of_an_interrupted_flow_equals_the_uninterrupted_run(reference, tmp_path):
    """Interrupted mid-time 2 (times 0 and 1 done, one block of time 2): the resumed run draws the
    backgrounds of the blocks on disk again and samples only the rest."""
    out = tmp_path / "resumed"
    run_interrupted(_config(), out, after=2 * BLOCKS + 1)
    result = run_pipeline(_config(), out, resume=True, progress=False)
    assert result.summary["members_sampled"] == 2 * (BLOCKS * len(TIMES) - 2 * BLOCKS - 1)
    _assert_same_run(reference, out)


@pytest.fixture
def ray_tmp(monkeypatch, request):
    path = tempfile.mkdtemp(prefix="eda-ray-", dir="/tmp")
    request.addfinalizer(lambda: shutil.rmtree(path, ignore_errors=True))
    monkeypatch.setenv("RAY_TMPDIR", path)
    # Ray's worker processes find the forecast plug-in module on PYTHONPATH, as on a user's cluster.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))


@pytest.mark.slow  # a local Ray with 2 replicas (~30 s)
def test_a_slow_block_does_not_stall_the_others_on_ray(reference, tmp_path, ray_tmp):
    """Block 0's forecast into time 2 is held back (the `slow_block` plug-in: `ar1`, whose members
    equal `markov`'s) until another block has been delivered at time 3, at most 180 s. Meanwhile
    the other replica takes the other blocks on through the later times: with a barrier per time
    none of them could pass time 2 before block 0 does, and the hold would run out instead."""
    signal = tmp_path / "others-at-time-3"
    slow = dict(kind="python", object="plugin_forecast:slow_block",
                options=dict(seconds=180.0, time=2, member=0, until=str(signal)))
    cfg = _config("local", forecast=slow, replicas=2, straggler_factor=0)
    delivered = []

    def on_unit(report, executor):
        delivered.append((report.unit.t_index, report.unit.members[0]))
        if report.unit.t_index >= 3 and report.unit.members[0] != 0:
            signal.touch()

    run_pipeline(cfg, tmp_path / "ray", progress=False, on_unit=on_unit)
    assert len(delivered) == len(set(delivered)) == BLOCKS * len(TIMES)
    before_slow = delivered[:delivered.index((2, 0))]
    others_reached = max(t for t, m in before_slow if m != 0)
    # max_lead 4 lets them run to the last time (5 ≤ 2 + 4); time 3 is already past the barrier.
    assert others_reached >= 3, delivered
    print(f"while block 0 was slow at time 2, the other blocks reached time {others_reached}")
    _assert_same_run(reference, tmp_path / "ray")
