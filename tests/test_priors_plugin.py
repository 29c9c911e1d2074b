"""User plug-in priors (`model.kind: python`): loaded by name, checked, sampled in-process, by
the CLI and on Ray; errors are one line naming the factory."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from ensemble_da.cli import app
from ensemble_da.config import GridConfig, model_config
from ensemble_da.errors import InputError
from ensemble_da.io import open_run
from ensemble_da.priors import load_prior

TESTS = Path(__file__).parent

PLUGIN_RUN = """
run_name: plugin
seed: 3
times: ["2020-01-01T00:00"]
grid: {nside: 4}
model:
  kind: python
  factory: "plugin_denoiser:white_noise"
  options: {nside: 4, channels: [T850, T500], center: [275.0, 255.0], scale: [6.0, 5.0]}
sampler: {steps: 6, batch_size: 2}
guidance: {method: mmps, cg_iters: 2}
ensemble: {members: 4}
observations:
  channels: [T850, T500]
  num_obs: 20
  heldout_fraction: 0.2
  sigma: {T850: 0.5, T500: 0.5}
cluster: {address: inprocess, replicas: 1, members_per_unit: 2}
"""


def test_factory_options_build_the_denoiser():
    den = load_prior(model_config(kind="python", factory="plugin_denoiser:white_noise", options={"nside": 2}), GridConfig(nside=2))
    assert den.grid.nside == 2 and den.normalization.channels == ("T850", "T500")


@pytest.mark.parametrize(
    "factory, options, needle",
    [
        ("no_such_module:make", {}, "cannot import 'no_such_module'"),
        ("plugin_denoiser:missing", {}, "has no attribute 'missing'"),
        ("plugin_denoiser", {}, 'expected "package.module:function"'),
        ("plugin_denoiser:white_noise", {"colour": 1}, "TypeError"),
        ("plugin_denoiser:fails", {}, "weights not found on this node"),
        ("plugin_denoiser:wrong_shape", {}, "expected a tensor of shape (1, 2, 192)"),
        ("plugin_denoiser:nan_output", {}, "non-finite values"),
        ("plugin_denoiser:white_noise", {"nside": 8}, "nside 8, grid.nside is 4"),
    ],
)
def test_bad_plugins_are_one_line_errors_naming_the_factory(factory, options, needle):
    with pytest.raises(InputError) as info:
        load_prior(model_config(kind="python", factory=factory, options=options), GridConfig(nside=4))
    msg = str(info.value)
    assert needle in msg and factory in msg and "\n" not in msg


def test_config_requires_a_factory_for_python_and_only_there():
    from ensemble_da.config import RunConfig, validate_tree

    with pytest.raises(InputError, match="needs 'model.factory'"):
        validate_tree(RunConfig, {"model": {"kind": "python"}})
    with pytest.raises(InputError, match="'model.factory' is not a key of model.kind gaussian .it is a key of model.kind python"):
        validate_tree(RunConfig, {"model": {"kind": "gaussian", "factory": "a:b"}})


def test_cli_bad_factory_exits_2_with_one_line(tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(PLUGIN_RUN.replace("plugin_denoiser:white_noise", "plugin_denoiser:nan_output"))
    result = CliRunner().invoke(app, ["run", str(cfg), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: model.factory 'plugin_denoiser:nan_output'"), result.output


@pytest.mark.slow
def test_plugin_runs_through_the_cli_on_ray_like_in_process(tmp_path, monkeypatch, request):
    """The CLI with a local Ray (one replica process that imports the plug-in itself) writes the
    same members as the CLI in-process."""
    ray_tmp = tempfile.mkdtemp(prefix="eda-ray-", dir="/tmp")
    request.addfinalizer(lambda: shutil.rmtree(ray_tmp, ignore_errors=True))
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    # Ray's worker processes find the plug-in module the way a user's cluster would: on PYTHONPATH.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    cfg = tmp_path / "p.yaml"
    cfg.write_text(PLUGIN_RUN)
    runner = CliRunner()
    ref = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "inprocess")])
    assert ref.exit_code == 0, ref.output
    ray_run = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "ray"), "--set", "cluster.address=local"])
    assert ray_run.exit_code == 0, ray_run.output
    a, b = open_run(tmp_path / "inprocess"), open_run(tmp_path / "ray")
    assert a["analysis"].shape == (1, 4, 2, 192)
    np.testing.assert_array_equal(a["analysis"].values, b["analysis"].values)
    assert yaml.safe_load((tmp_path / "ray" / "config.yaml").read_text())["model"]["factory"] == "plugin_denoiser:white_noise"
    replicas = json.loads((tmp_path / "ray" / "summary.json").read_text())["replicas"]
    assert replicas and all(r["pid"] != os.getpid() and r["members"] > 0 for r in replicas)  # loaded in a Ray worker


def test_osse_truth_calls_sample_truth_as_documented():
    """README: a plug-in's optional `sample_truth(rng, n)` returns (n, channel, cell) physical draws;
    the OSSE passes n = 1 (a plug-in without a default for n used to crash), and the truth is the
    prior's draw from the truth stream SeedSequence([seed, t, TRUTH_STREAM])."""
    import numpy as np
    from ensemble_da.config import load_config
    from ensemble_da.obs.synthetic import TRUTH_STREAM
    from ensemble_da.truth import draw_truth
    from plugin_denoiser import WhiteNoisePrior

    class NoDefault(WhiteNoisePrior):
        def sample_truth(self, rng, n):
            return super().sample_truth(rng, n)

    prior = NoDefault(2, ["T850", "T500"], [275.0, 255.0], [6.0, 5.0])
    config = load_config(None, ["seed=7"])
    truth = draw_truth(prior, config, 1)
    z = np.random.default_rng(np.random.SeedSequence([7, 1, TRUTH_STREAM])).standard_normal((2, 48))
    np.testing.assert_allclose(truth, np.array([[275.0], [255.0]]) + np.array([[6.0], [5.0]]) * z)

    class WrongShape(WhiteNoisePrior):
        def sample_truth(self, rng, n):
            return np.zeros((n, 48))

    with pytest.raises(InputError, match=r"sample_truth\(rng, 1\) returned shape \(1, 48\)"):
        draw_truth(WrongShape(2, ["T850", "T500"], [275.0, 255.0], [6.0, 5.0]), config, 0)
