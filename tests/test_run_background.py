"""A run with a background ensemble (actors/background.py) in-process: `--resume` after an
interruption draws the background again and gives the same store and summary as an
uninterrupted run; QC that leaves nothing to assimilate is one clear error before the run
directory is touched."""

from __future__ import annotations

import json

import numpy as np
import pytest

from actors.run import run_pipeline
from ensemble_da.config import RunConfig
from ensemble_da.errors import InputError
from ensemble_da.io import open_run
from ray_helpers import TREE, assert_same_store


def _config(**diagnostics) -> RunConfig:
    return RunConfig.model_validate({**TREE, "diagnostics": {"background": True, **diagnostics}})


@pytest.mark.slow  # three small runs
def test_resume_with_background_equals_uninterrupted(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    run_pipeline(_config(), ref, progress=False)
    seen = []

    def interrupt(result, executor):
        seen.append(result.unit)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(_config(), out, progress=False, on_unit=interrupt)
    run_pipeline(_config(), out, resume=True, progress=False)
    assert_same_store(ref, out)
    a, b = open_run(ref), open_run(out)
    for var in ("background_mean", "background_spread", "increment"):
        np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=var)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (ref, out))
    assert sa["chi2_per_obs/T500"] == sb["chi2_per_obs/T500"] and np.isfinite(sa["chi2_per_obs/T500"])


def test_qc_rejecting_everything_is_an_error_before_writing(tmp_path):
    out = tmp_path / "run"
    # k so small that no innovation passes (|O−B| > 1e-6 · √(σ_o² + σ_b²) for every observation).
    with pytest.raises(InputError, match="rejected every assimilated observation"):
        run_pipeline(_config(qc_sigma_k=1e-6), out, progress=False)
    assert not out.exists()
