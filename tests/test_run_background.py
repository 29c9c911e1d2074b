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
from ray_helpers import TREE, assert_same_store, run_interrupted


def _config(**diagnostics) -> RunConfig:
    return RunConfig.model_validate({**TREE, "diagnostics": {"background": True, **diagnostics}})


@pytest.mark.slow  # three small runs
def test_resume_with_background_equals_uninterrupted(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    run_pipeline(_config(), ref, progress=False)
    run_interrupted(_config(), out)
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


def test_background_diagnostics_of_a_run_equal_the_in_memory_reference(tmp_path):
    """The streaming background (block-wise moments, actors/background.py) and `assimilate`
    (whole ensembles in memory) screen and score alike: same QC, same §7 diagnostics per time;
    only summation order differs (rtol 1e-6)."""
    from ensemble_da.assimilation import Assimilator, assimilate
    from ensemble_da.obs.inputs import prepare_inputs
    from ensemble_da.truth import osse_truths

    config = _config(qc_sigma_k=2.0)  # tight enough to reject some observations
    result = run_pipeline(config, tmp_path / "run", progress=False)
    assimilator = Assimilator(config)
    ref = assimilate(config, prepare_inputs(config, assimilator.prior, osse_truths(assimilator.prior, config)), assimilator)
    assert sum(q.rejected[c] for q in ref.qc for c in q.rejected) > 0
    for metrics, run_metrics in zip(ref.metrics, result.summary["by_time"].values(), strict=True):
        assert "chi2_per_obs/T850" in metrics and metrics.keys() == run_metrics.keys()
        for name, value in metrics.items():
            assert run_metrics[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    obs = open_run(tmp_path / "run", group="observations")
    np.testing.assert_allclose(obs["hb_mean"].values, np.concatenate([f.hx_mean for f in ref.background_fits]), rtol=1e-6)
