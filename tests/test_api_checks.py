"""The Python API is as safe as the CLI: `sample_posterior` and the observation constructors run
the CLI's own checks (quality control of values and locations, physical bounds, the plug-in
protocol check) and raise `InputError` with the CLI's message; an observation far outside the
prior is named before sampling, and a divergence names the largest normalised innovation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import ensemble_da
from ensemble_da.cli import app
from ensemble_da.config import GridConfig, model_config
from ensemble_da.errors import InputError
from ensemble_da.obs import ObservationOperator, ObservationSet
from ensemble_da.priors import GaussianPrior
from ensemble_da.sampling import DivergenceError

import plugin_denoiser

STATIONS_RUN = """
run_name: api-checks
seed: 1
times: ["2020-01-01T00:00"]
grid: {{nside: 4}}
model:
  kind: gaussian
  channels: [T850, T500]
  mean: {{T850: 275.0, T500: 255.0}}
  std: {{T850: 6.0, T500: 5.0}}
  length_scale_km: 2500
sampler: {{steps: 4, batch_size: 2}}
guidance: {{method: mmps, cg_iters: 2}}
ensemble: {{members: 2}}
observations:
  source: stations
  path: {path}
  channels: [T850, T500]
  num_obs: 100
  heldout_fraction: 0.0
  sigma: {{T850: 0.5, T500: 0.5}}
cluster: {{address: inprocess, replicas: 1, members_per_unit: 2}}
"""

# Two bad reports among good ones: a 470 K T850 (beyond the 150–350 K bounds) and one without a latitude.
BAD = [dict(lat=10.0, lon=20.0, variable="t850", observation=470.0),
       dict(lat=np.nan, lon=20.0, variable="t850", observation=270.0)]


@pytest.fixture(scope="module")
def prior():
    return GaussianPrior.from_config(
        model_config(kind="gaussian", channels=["T850", "T500"], mean={"T850": 275.0, "T500": 255.0},
                    std={"T850": 6.0, "T500": 5.0}, length_scale_km=2500), GridConfig(nside=4))


@pytest.fixture(scope="module")
def cli_notes(tmp_path_factory):
    """The `note:` lines of a CLI run on a station table holding the BAD reports (and lon 400)."""
    tmp = tmp_path_factory.mktemp("stations")
    rng = np.random.default_rng(0)
    good = [dict(lat=float(rng.uniform(-60, 60)), lon=float(rng.uniform(0, 360)), variable=v,
                 observation=275.0 if v == "t850" else 255.0) for v in ["t850", "t500"] * 6]
    good[0]["lon"] = 400.0  # wrapped to 40, with a note
    rows = pd.DataFrame(good + BAD).assign(time="2020-01-01T00:00:00")
    rows.to_csv(tmp / "s.csv", index=False)
    (tmp / "run.yaml").write_text(STATIONS_RUN.format(path=tmp / "s.csv"))
    result = CliRunner().invoke(app, ["run", str(tmp / "run.yaml"), "--out", str(tmp / "out")])
    assert result.exit_code == 0, result.output
    return [line for line in result.stderr.splitlines() if line.startswith("note: ")]


def _cli_message(notes: list[str], reason: str) -> str:
    (line,) = [n for n in notes if f"quality control removed 1 observation ({reason})" in n]
    return line.split("; the first: ", 1)[1]


def _set(value=470.0, lat=10.0, lon=20.0) -> ObservationSet:
    return ObservationSet(time=np.datetime64("2020-01-01"), lat=[lat, -30.0], lon=[lon, 100.0],
                          channel=["T850", "T500"], value=[value, 255.0], sigma=0.5)


def test_470_K_is_refused_with_the_clis_message(prior, cli_notes):
    cli = _cli_message(cli_notes, "out_of_bounds")
    assert cli == "observation T850 = 470 K at lat 10, lon 20 is outside the physical bounds of T850 (150 to 350 K)"
    with pytest.raises(InputError) as info:
        ensemble_da.sample_posterior(prior, _set(470.0), 2, sampler={"steps": 4})
    assert str(info.value) == cli
    # the cell-based constructor of the API runs the same check with the same words
    with pytest.raises(InputError, match="is outside the physical bounds of T850 \\(150 to 350 K\\)"):
        ObservationOperator.at_cells([3], ["T850"], [470.0], [0.5], prior.grid, prior.normalization)


def test_nan_location_is_refused_with_the_clis_message(cli_notes):
    cli = _cli_message(cli_notes, "nonfinite")
    assert cli == "observation location is not finite (lat nan, lon 20) for T850 = 270 K"
    with pytest.raises(InputError) as info:
        _set(270.0, lat=np.nan)
    assert str(info.value) == cli


def test_a_wrapped_longitude_is_a_note(cli_notes):
    assert any("longitude outside [-180, 360) wrapped to [0, 360), e.g. 400 -> 40" in n for n in cli_notes), cli_notes
    # In a Python script with no logging set up, the note still reaches stderr (logged as a warning).
    script = ("import numpy as np; from ensemble_da.obs import ObservationSet; "
              "ObservationSet(time=np.datetime64('2020-01-01'), lat=[10.0], lon=[400.0], channel=['T850'], "
              "value=[270.0], sigma=0.5)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "wrapped to [0, 360), e.g. 400 -> 40 (T850 at lat 10)" in proc.stderr


def test_wrong_shape_plugin_is_refused_with_the_clis_message(tmp_path, prior):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(STATIONS_RUN.format(path="unused").replace(
        "  kind: gaussian\n", '  kind: python\n  factory: "plugin_denoiser:wrong_shape"\n  options: {nside: 4}\n'
    ).replace("  mean: {T850: 275.0, T500: 255.0}\n  std: {T850: 6.0, T500: 5.0}\n  length_scale_km: 2500\n", ""))
    result = CliRunner().invoke(app, ["run", str(cfg), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
    cli = line.split("': ", 1)[1]  # after "error: model.factory 'plugin_denoiser:wrong_shape'"
    assert cli.startswith("denoiser returned (1, 384), expected a tensor of shape (1, 2, 192)")
    with pytest.raises(InputError) as info:
        ensemble_da.sample_posterior(plugin_denoiser.wrong_shape(4), _set(276.0), 2, sampler={"steps": 4})
    assert str(info.value) == f"denoiser Flat: {cli}"  # not torch's "Mismatch in shape: grad_output[0] ..."


def test_an_observation_far_from_the_prior_is_named_before_sampling(prior):
    """340 K against a T850 prior of 275 ± 6 K with σ_o = 0.5 K: 65 K = 10.8 prior+obs std (> 6)."""
    with pytest.raises(InputError) as info:
        ensemble_da.sample_posterior(prior, _set(340.0), 2, sampler={"steps": 4})
    msg = str(info.value)
    assert msg.startswith("observation T850 = 340 K at lat 10, lon 20 (innovation +65 K = 10.8 prior+obs std) is beyond 6")
    assert "\n" not in msg
    x = ensemble_da.sample_posterior(prior, _set(340.0), 2, sampler={"steps": 4}, innovation_k=None)  # opted out
    assert np.isfinite(x).all()


def test_divergence_names_the_largest_innovation_not_only_the_sampler(prior):
    """Regression guidance without γ at 4 steps diverges; with a 70 K outlier among 40 good
    observations (σ_o 0.1 K) the message points at that observation first."""
    rng = np.random.default_rng(0)
    n = 40
    channel = np.array(["T850", "T500"] * (n // 2))
    value = np.where(channel == "T850", 275.0, 255.0)
    value[0] = 345.0
    obs = ObservationSet(time=np.datetime64("2020-01-01"), lat=rng.uniform(-80, 80, n), lon=rng.uniform(0, 360, n),
                         channel=channel, value=value, sigma=0.1)
    with pytest.raises(DivergenceError) as info:
        ensemble_da.sample_posterior(prior, obs, 2, sampler={"steps": 4}, guidance={"method": "regression", "gamma": 0.0},
                                     innovation_k=None)
    msg = str(info.value)
    assert f"Fix: observation T850 = 345 K at lat {obs.lat[0]:g}, lon {obs.lon[0]:g} (innovation +70 K" in msg
    assert "has the largest normalised innovation" in msg and "\n" not in msg
