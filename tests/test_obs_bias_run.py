"""A run with `observations.bias` (DESIGN.md §5): an OSSE whose observations carry a known constant
bias per channel, the bias estimated jointly with the state on the Gaussian prior, against the
exact joint posterior; in-process and on a local Ray the same members and the same bias metrics;
bad bias settings are one `error:` line."""

from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before ray is imported: loopback only
os.environ["RAY_AUTH_MODE"] = "disabled"

import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from actors.run import run_pipeline  # noqa: E402
from ensemble_da.cli import app  # noqa: E402
from ensemble_da.config import RunConfig  # noqa: E402
from ensemble_da.io import open_run  # noqa: E402

MEMBERS = 48
TRUE_BIAS = {"T850": 2.0, "T500": -1.5}


def tree(**top):
    base = dict(
        run_name="bias", seed=5, times=["2020-01-01T00:00", "2020-01-02T00:00"], grid=dict(nside=4),
        model=dict(kind="gaussian", channels=["T850", "T500"], mean=dict(T850=275.0, T500=255.0),
                   std=dict(T850=6.0, T500=5.0), length_scale_km=2500),
        sampler=dict(steps=24, batch_size=24), guidance=dict(method="mmps", solver="cg", cg_iters=12),
        ensemble=dict(members=MEMBERS),
        observations=dict(channels=["T850", "T500"], num_obs=120, heldout_fraction=0.1,
                          sigma=dict(T850=0.7, T500=0.7), bias=dict(prior_sigma=2.0, truth=TRUE_BIAS)),
        cluster=dict(address="inprocess", replicas=1, members_per_unit=24),
    )
    return {**base, **top}


@pytest.fixture
def ray_tmp(monkeypatch, request):
    path = tempfile.mkdtemp(prefix="eda-ray-", dir="/tmp")
    request.addfinalizer(lambda: shutil.rmtree(path, ignore_errors=True))
    monkeypatch.setenv("RAY_TMPDIR", path)


def by_time(out):
    return list(json.loads((out / "summary.json").read_text())["by_time"].values())


def test_biased_osse_recovers_the_exact_joint_posterior_inprocess_and_on_ray(tmp_path, ray_tmp):
    """Tolerances: the ensemble's β mean errs from the exact posterior mean by its standard error
    spread/√M (M = 48); 4.5 of them at each of 4 (time, channel) pairs (a false failure < 1e-4).
    Its spread from 48 members has a relative standard error √(1/(2·47)) ≈ 0.10: 0.65–1.4.
    The state: mean error at Monte-Carlo level and the variance ratio 0.85–1.15, as the unbiased
    runs' tests."""
    cfg = RunConfig.model_validate(tree())
    run_pipeline(cfg, tmp_path / "inprocess", progress=False)
    for m in by_time(tmp_path / "inprocess"):
        for ch, true in TRUE_BIAS.items():
            mean, exact, spread = m[f"bias_mean/{ch}"], m[f"exact_bias_mean/{ch}"], m[f"exact_bias_spread/{ch}"]
            assert abs(mean - exact) < 4.5 * spread / np.sqrt(MEMBERS), (ch, mean, exact, spread)
            assert 0.65 < m[f"bias_spread/{ch}"] / spread < 1.4, (ch, m[f"bias_spread/{ch}"], spread)
            assert abs(exact - true) < 4 * spread  # the exact posterior itself finds the true bias
            assert spread < 2.0  # narrower than the prior: the observations inform it
            assert m[f"exact_var_ratio/{ch}"] > 0.85 and m[f"exact_var_ratio/{ch}"] < 1.15
            assert m[f"exact_mean_err/{ch}"] < 1.5 / np.sqrt(MEMBERS)

    on_ray = cfg.model_copy(update={"cluster": cfg.cluster.model_copy(update={"address": "local"})})
    run_pipeline(on_ray, tmp_path / "ray", progress=False)
    a, b = open_run(tmp_path / "inprocess"), open_run(tmp_path / "ray")
    np.testing.assert_array_equal(a["analysis"].values, b["analysis"].values)
    for ma, mb in zip(by_time(tmp_path / "inprocess"), by_time(tmp_path / "ray")):
        assert {k: v for k, v in ma.items() if "bias" in k} == {k: v for k, v in mb.items() if "bias" in k}


def test_ignoring_the_bias_leaves_the_analysis_biased(tmp_path):
    """Without the bias model the same observations pull the state toward truth + bias: the
    analysis-minus-exact-unbiased-answer error is larger than with it (the run with the model)."""
    biased = tree(ensemble=dict(members=16), times=["2020-01-01T00:00"])
    plain = {**biased, "observations": {**biased["observations"], "bias": None}}
    run_pipeline(RunConfig.model_validate(biased), tmp_path / "with", progress=False)
    # the unbiased-model run sees the same biased values: add them through a bias with a tiny prior
    plain["observations"]["bias"] = dict(prior_sigma=1e-6, truth=TRUE_BIAS)
    run_pipeline(RunConfig.model_validate(plain), tmp_path / "without", progress=False)
    truth = open_run(tmp_path / "with")["truth"].values[0]
    err_with = np.abs(open_run(tmp_path / "with")["ensemble_mean"].values[0] - truth).mean(-1)
    err_without = np.abs(open_run(tmp_path / "without")["ensemble_mean"].values[0] - truth).mean(-1)
    mean_with = open_run(tmp_path / "with")["ensemble_mean"].values[0] - truth
    mean_without = open_run(tmp_path / "without")["ensemble_mean"].values[0] - truth
    # the uncorrected analysis is shifted toward the bias's sign on each channel
    assert mean_without[0].mean() > mean_with[0].mean() and mean_without[1].mean() < mean_with[1].mean()
    assert err_with.mean() < err_without.mean()


@pytest.mark.parametrize("bias,message", [
    ({"prior_sigma": -1}, "prior_sigma must be a finite number > 0"),
    ({"kind": "constant", "predictors": ["latitude"]}, "predictors are for kind linear"),
    ({"truth": {"Q850": 1.0}}, "bias.truth names ['Q850'], not among the observed channels"),
    ({"prior_sgma": 1.0}, "prior_sgma"),
])
def test_bad_bias_settings_are_one_error_line(tmp_path, bias, message):
    t = tree()
    t["observations"]["bias"] = bias
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(t))
    result = CliRunner().invoke(app, ["run", str(cfg), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("top,message", [
    (dict(guidance=dict(method="dps")), "observations.bias needs guidance.method mmps or regression"),
    (dict(mode="cycle", model=dict(kind="gaussian_markov", rho=0.8, channels=["T850", "T500"],
                                   mean=dict(T850=275.0, T500=255.0), std=dict(T850=6.0, T500=5.0))),
     "observations.bias is for mode analysis"),
])
def test_bias_with_what_cannot_estimate_it_is_refused(tmp_path, top, message):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tree(**top)))
    result = CliRunner().invoke(app, ["run", str(cfg), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and message in result.output, result.output
