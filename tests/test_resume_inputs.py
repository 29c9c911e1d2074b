"""`--resume` refuses inputs that changed behind the same config text: a climatology dataset
regenerated at the same `model.path` (which would mix members of two priors in one store), or
changed observations; an unchanged resume still equals the uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from actors.checks import check_resume_inputs
from actors.run import run_pipeline
from ensemble_da.config import RunConfig
from ensemble_da.data.speedy import write_dataset
from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid
from ensemble_da.io import STORE_NAME
from ray_helpers import TREE, assert_same_store, run_interrupted

NSIDE = 4


def _dataset(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    grid = HealpixGrid(NSIDE)
    state = np.array([280.0, 255.0, 230.0])[None, :, None] + 4.0 * rng.standard_normal((40, 3, grid.npix))
    times = np.datetime64("2001-01-01", "ns") + np.arange(40) * np.timedelta64(1, "D")
    write_dataset(path, state.astype(np.float32), times, ["T850", "T500", "T300"], grid, overwrite=True)


def _config(path: Path) -> RunConfig:
    model = {"kind": "gaussian_climatology", "path": str(path), "rank": 8, "channels": ["T850", "T500", "T300"]}
    return RunConfig.model_validate({**TREE, "model": model})


@pytest.mark.slow  # three small runs
def test_resume_refuses_a_regenerated_dataset_and_accepts_the_same_one(tmp_path):
    data = tmp_path / "clim.zarr"
    _dataset(data, seed=0)
    ref, out = tmp_path / "ref", tmp_path / "out"
    run_pipeline(_config(data), ref, progress=False)
    run_interrupted(_config(data), out)
    before = xr.open_zarr(out / STORE_NAME, consolidated=False)["analysis"].values  # incomplete: read as plain zarr

    _dataset(data, seed=1)  # same path, same config text, other states
    with pytest.raises(InputError, match="the prior differs"):
        run_pipeline(_config(data), out, resume=True, progress=False)
    np.testing.assert_array_equal(xr.open_zarr(out / STORE_NAME, consolidated=False)["analysis"].values, before)  # nothing written

    _dataset(data, seed=0)
    run_pipeline(_config(data), out, resume=True, progress=False)
    assert_same_store(ref, out)


def test_changed_observations_are_named_by_time(tmp_path):
    then = {"prior": {"data_hash": "a"}, "observations": ["x", "y", "z"]}
    check_resume_inputs(then, {"prior": {"data_hash": "a"}, "observations": ["x", "y", "z"]}, tmp_path)
    check_resume_inputs(None, {"prior": {}, "observations": []}, tmp_path)  # a store from before the record
    with pytest.raises(InputError, match=r"analysis time\(s\) \[1\]"):
        check_resume_inputs(then, {"prior": {"data_hash": "a"}, "observations": ["x", "Y", "z"]}, tmp_path)
