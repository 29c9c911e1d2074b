"""The OSSE end to end (obs/osse.py): generate ERA5-layout files and the HEALPix truth, read them
back through the ERA5 path, assimilate in process, and check the analysis against the truth."""

from __future__ import annotations

import numpy as np
import xarray as xr

from conftest import small_config
from ensemble_da.assimilation import Assimilator, assimilate
from ensemble_da.config import load_config
from ensemble_da.obs.era5 import open_source
from ensemble_da.obs.inputs import prepare_inputs
from ensemble_da.obs.osse import generate_osse
from ensemble_da.obs.synthetic import random_locations
from ensemble_da.truth import draw_truths


def test_osse_files_are_era5_layout_and_hold_the_truth(tmp_path):
    cfg = small_config(times=["2020-01-01T00:00", "2020-01-01T06:00"])
    a = Assimilator(cfg)
    files = generate_osse(cfg, draw_truths(a.prior, cfg), a.prior.grid, cfg.model.channels, tmp_path)
    ds = xr.open_dataset(files.era5[0])
    assert set(ds.dims) == {"valid_time", "pressure_level", "latitude", "longitude"}
    assert ds["latitude"][0] == 90 and ds["longitude"][0] == 0 and "number" in ds.coords and "expver" in ds.coords
    assert list(ds["pressure_level"].values) == [850, 500, 300] and ds["t"].attrs["units"] == "K"
    truth = xr.open_zarr(files.truth, consolidated=False)
    np.testing.assert_array_equal(truth["truth"].values, draw_truths(a.prior, cfg))
    assert truth["cell_ids"].attrs == {"grid_name": "healpix", "level": 3, "indexing_scheme": "nested"}
    # The lat/lon file is the HEALPix truth carried by the run's bilinear operator H; read back
    # and interpolated on the 1° lat/lon grid it matches H·truth at random points to ~0.02 K (RMS;
    # the two interpolants differ only within a grid step of H's kinks): small against σ = 0.5 K.
    lat, lon = random_locations(2000, np.random.default_rng(1))
    cells, w = a.prior.grid.interp_weights(lat, lon)
    h_truth = (truth["truth"].values[1, 0][cells] * w).sum(-1)
    with open_source([str(f) for f in files.era5]) as src:
        back = src.field("T850", np.datetime64("2020-01-01T06:00"), 0.0).sample(lat, lon)
    assert np.sqrt(np.mean((back - h_truth) ** 2)) < 0.05
    run = load_config(files.config)
    assert run.observations.source == "era5" and run.observations.add_noise is True


def test_osse_generate_run_verify(tmp_path):
    cfg = small_config(
        times=["2020-01-01T00:00"],
        sampler=dict(steps=12, batch_size=16),
        ensemble=dict(members=16),
        observations=dict(num_obs=600, sigma=dict(T850=0.5, T500=0.5, T300=0.5)),
    )
    a = Assimilator(cfg)
    files = generate_osse(cfg, draw_truths(a.prior, cfg), a.prior.grid, cfg.model.channels, tmp_path)
    run = load_config(files.config, ["cluster.address=inprocess"])
    inputs = prepare_inputs(run, a.prior)
    assert inputs.truth is not None and inputs.qc.kept == 600
    res = assimilate(run, inputs, a)
    m = res.metrics[0]
    prior_spread = a.prior.prior_spread().mean(-1)
    for c, ch in enumerate(cfg.model.channels):
        # O−A: for the exact posterior E(y − Hx̄)² = σ² − H P_a Hᵀ + H P_a Hᵀ/M < σ²; seeds 0-2 give
        # 0.28-0.35 K against σ = 0.5 K, a margin far above the ~5% sampling noise of 180 residuals.
        assert m[f"oa_rmse/{ch}"] < cfg.observations.sigma[ch], (ch, m[f"oa_rmse/{ch}"])
        # RMSE vs truth: 200 obs per channel (correlated channels share them) leave ~0.4 of the
        # prior spread (0.37-0.45 over seeds 0-2, 16 members); 0.7 leaves room for sampling noise.
        assert m[f"rmse/{ch}"] < 0.7 * prior_spread[c], (ch, m[f"rmse/{ch}"], prior_spread[c])
        assert 0.5 < m[f"ssr/{ch}"] < 1.5
