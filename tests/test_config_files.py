"""What a study's hand-edited configs and CMIP files meet, through the CLI: a duplicate key (named
by its dotted path), a tab, an empty file, a negative prior std, a noleap/360_day calendar; each
is one `error:` line (exit 2) that names it, or a run. And `open_run` gives the observations group."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from ensemble_da.cli import app
from ensemble_da.io import open_observations, open_run


def _error_line(tmp_path, text: str, *extra: str) -> str:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    result = CliRunner().invoke(app, ["run", str(cfg), "--out", str(tmp_path / "out"), *extra])
    assert result.exit_code == 2, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert not (tmp_path / "out").exists()
    return errors[0]


def test_duplicate_key_names_the_key_and_both_lines(tmp_path):
    line = _error_line(tmp_path, "seed: 7\nrun_name: study\n# ...\nseed: 0\n")
    assert "duplicate key 'seed' at line 1 and line 4" in line and "c.yaml" in line


def test_nested_duplicate_key_names_its_dotted_path(tmp_path):
    line = _error_line(tmp_path, "model:\n  kind: gaussian\n  nugget: 0.1\n  nugget: 0.2\n")
    assert "duplicate key 'model.nugget' at line 3 and line 4" in line
    line = _error_line(tmp_path, "run_name: x\nsampler:\n  steps: 8\n  steps: 8\n")
    assert "duplicate key 'sampler.steps' at line 3 and line 4" in line
    # In a list of observation sets, the item's index; the same key in two sections is no duplicate.
    line = _error_line(tmp_path, "observations:\n- name: a\n  num_obs: 5\n- name: b\n  num_obs: 5\n  name: c\n")
    assert "duplicate key 'observations[1].name' at line 4 and line 6" in line


def test_a_negative_prior_std_names_the_channel_key(tmp_path):
    """Refused by the config (was: `scale must be > 0 for every channel` from the prior, later)."""
    from ensemble_da.config import model_config
    from ensemble_da.errors import InputError

    with pytest.raises(InputError, match=r"^model_config: bad value for 'model.std.T850' \(-1.0\): must be > 0"):
        model_config(kind="gaussian", std={"T850": -1.0})
    with pytest.raises(InputError, match=r"'model.std.T500' \(0.0\): must be > 0"):
        model_config(kind="gaussian_markov", rho=0.5, std={"T850": 1.0, "T500": 0.0})
    assert model_config(kind="gaussian", std={"T850": 0.5}).std == {"T850": 0.5}
    line = _error_line(tmp_path, "model:\n  kind: gaussian\n  std: {T850: 6.0, T500: -2.0, T300: 4.0}\n")
    assert "bad value for 'model.std.T500' (-2.0): must be > 0 (a standard deviation)" in line


def test_tab_indentation_names_the_line_and_the_tab(tmp_path):
    line = _error_line(tmp_path, "seed: 7\nmodel:\n\tkind: gaussian\n")
    assert "line 3 is indented with a tab character" in line and "'kind: gaussian'" in line
    assert "scanning for the next token" not in line


@pytest.mark.parametrize("text", ["", "# only a comment\n\n   \n# another\n"])
def test_empty_file_says_it_is_empty(tmp_path, text):
    line = _error_line(tmp_path, text)
    assert "the config file is empty" in line and "model.mean" not in line


def test_other_yaml_errors_name_the_line(tmp_path):
    line = _error_line(tmp_path, "seed: 7\ntimes: [\"2020-01-01T00:00\"\n")
    assert "not valid YAML at line" in line


CMIP_RUN = """
run_name: cmip
seed: 1
times: ["{time}"]
grid: {{nside: 2}}
model:
  kind: gaussian
  channels: [tas]
  mean: {{tas: 280.0}}
  std: {{tas: 6.0}}
  length_scale_km: 3000
sampler: {{steps: 4, batch_size: 2}}
guidance: {{method: mmps, cg_iters: 2}}
ensemble: {{members: 2}}
observations:
  source: era5
  path: {path}
  channels: [tas]
  num_obs: 10
  heldout_fraction: 0.2
  sigma: {{tas: 0.5}}
cluster: {{address: inprocess, replicas: 1, members_per_unit: 2}}
"""


def _cmip_file(path, calendar: str):
    """A CMIP-style file (CF time in days since 2020-01-01 in the given calendar; the variable under
    its ERA5 name `t2m`: CMIP variable names are not mapped by the reader), 6-hourly
    from 2020-02-27 to 2020-03-01 of that calendar (360_day: 27, 28, 29, 30 February)."""
    days = np.arange(0, 4, 0.25)
    lat, lon = np.linspace(-90, 90, 19), np.arange(0, 360, 10.0)
    rng = np.random.default_rng(0)
    ds = xr.Dataset({"t2m": (("time", "lat", "lon"), 280 + rng.normal(0, 3, (len(days), 19, 36)), {"units": "K"})},
                    coords={"time": ("time", days + 57,
                                     {"units": "days since 2020-01-01", "calendar": calendar}),
                            "lat": lat, "lon": lon})
    ds.to_netcdf(path)
    return path


def test_noleap_file_is_read_when_the_analysis_time_exists_in_it(tmp_path):
    path = _cmip_file(tmp_path / "tas_noleap.nc", "noleap")  # day 57 = 27 February
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CMIP_RUN.format(time="2020-02-28T06:00", path=path))
    result = CliRunner().invoke(app, ["run", str(cfg), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "is in the 'noleap' calendar" in result.stderr
    obs = open_observations(tmp_path / "out")  # the observations group, as open_run(..., group=...) gives it
    assert obs.sizes["obs"] == 10 and set(np.unique(obs["channel"].values)) == {"tas"}
    assert (obs["time"].values == np.datetime64("2020-02-28T06:00", "ns")).all()
    np.testing.assert_array_equal(open_run(tmp_path / "out", group="observations")["value"].values, obs["value"].values)


def test_noleap_file_names_the_calendar_when_the_analysis_time_is_29_february(tmp_path):
    path = _cmip_file(tmp_path / "tas_noleap.nc", "noleap")
    line = _error_line(tmp_path, CMIP_RUN.format(time="2020-02-29T00:00", path=path))
    assert "analysis time 2020-02-29T00:00 does not exist in the file's 'noleap' calendar" in line
    assert "convert_calendar('standard'" in line


def test_360_day_file_reads_its_real_dates_and_names_the_calendar_otherwise(tmp_path):
    path = _cmip_file(tmp_path / "tas_360.nc", "360_day")  # day 57 = 28 February in 360_day
    cfg = tmp_path / "ok.yaml"
    cfg.write_text(CMIP_RUN.format(time="2020-02-28T12:00", path=path))
    result = CliRunner().invoke(app, ["run", str(cfg), "--out", str(tmp_path / "ok")])
    assert result.exit_code == 0, result.output
    assert "that the standard calendar does not have" in result.stderr  # 29, 30 February left out, with a note
    line = _error_line(tmp_path, CMIP_RUN.format(time="2020-01-31T00:00", path=path))
    assert "does not exist in the file's '360_day' calendar" in line
