"""Bad input for the time-aware modes (DESIGN.md §10): one `error:` line, exit 2, nothing written."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ensemble_da.cli import app

CASES = [
    (["mode=cycle", "times=[2020-01-01T00:00, 2020-01-01T06:00, 2020-01-01T18:00]", "model.kind=gaussian_markov",
      "model.rho=0.8"], "mode cycle needs equally spaced, increasing times; the spacings are [6.0, 12.0] hours"),
    (["mode=reanalysis", "times=[2020-01-01T06:00, 2020-01-01T00:00]", "model.kind=gaussian_markov", "model.rho=0.8"],
     "mode reanalysis needs equally spaced, increasing times; the spacings are [-6.0] hours"),
    (["model.kind=gaussian_markov", "model.rho=1.0"], "rho must be in (0, 1)"),
    (["model.kind=gaussian_markov", "model.rho=0"], "rho must be in (0, 1)"),
    (["model.kind=gaussian_markov"], "model.kind gaussian_markov needs 'model.rho'"),
    (["model.rho=0.5"], "'model.rho' is not a key of model.kind gaussian (it is a key of model.kind gaussian_markov)"),
    (["mode=cycle", "cycle.window=3", "model.kind=gaussian_markov", "model.rho=0.8"],
     "cycle.window 3 is longer than the run (2 analysis times)"),
    (["mode=cycle", "cycle.window=0", "model.kind=gaussian_markov", "model.rho=0.8"], "window must be >= 1"),
    (["mode=cycle"], "mode cycle needs a prior over time windows (model.kind gaussian_markov or a window checkpoint)"),
    (["mode=filter"], "'mode'"),
    (["mode=reanalysis", "diagnostics.background=true", "model.kind=gaussian_markov", "model.rho=0.8"],
     "a reanalysis has none"),
]


@pytest.mark.parametrize("overrides,message", CASES)
def test_bad_time_settings_are_one_error_line(tmp_path, overrides, message):
    out = tmp_path / "run"
    args = ["run", "--out", str(out), "--set", "cluster.address=inprocess", "--set", "grid.nside=2"]
    for item in overrides:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert not out.exists()
