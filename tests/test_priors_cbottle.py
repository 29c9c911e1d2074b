"""Contract tests of the cBottle adapter against the stand-in package in tests/standin/
(real zip checkpoints, a tiny random network with cBottle's calling convention)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import healpy as hp
import numpy as np
import pytest
import torch
import xarray as xr

from ensemble_da.config import GridConfig, model_config
from ensemble_da.errors import InputError
from ensemble_da.guidance import RegressionGuidance
from ensemble_da.obs.operators import ObservationOperator
from ensemble_da.priors import load_prior, time_condition
from ensemble_da.priors.cbottle import (
    CBottleDenoiser,
    load_cbottle,
    nest_to_pad_xy,
    pad_xy_to_nest,
)

from cbottle_helpers import CENTER, CHANNELS, SCALES, raw_net, standin, write_checkpoint  # noqa: F401

pytestmark = pytest.mark.usefixtures("standin")


def test_permutation_matches_earth2grid_and_round_trips():
    ref = json.loads((Path(__file__).parent / "data" / "earth2grid_pad_xy.json").read_text())["nest_index_at_pad_xy"]
    for nside, values in ref.items():
        np.testing.assert_array_equal(nest_to_pad_xy(int(nside)), values)
    for nside in (1, 2, 4, 16):
        x = np.random.default_rng(0).normal(size=(2, 12 * nside * nside))
        np.testing.assert_array_equal(x[..., nest_to_pad_xy(nside)][..., pad_xy_to_nest(nside)], x)
    # geometry (healpy): in PAD_XY a face starts at its northernmost pixel (origin N) and ends
    # at its southernmost
    n = 8
    perm = nest_to_pad_xy(n)
    for face in range(12):
        pix = perm[face * n * n : (face + 1) * n * n]
        _, lat = hp.pix2ang(n, pix, nest=True, lonlat=True)
        z = hp.pix2vec(n, pix, nest=True)[2]
        assert z[0] == z.max()  # the northernmost pixel of the face
        assert lat[n * n - 1] == lat.min()


def test_normalisation_labels_condition_and_time_reach_the_network(tmp_path):
    path = write_checkpoint(tmp_path / "a.checkpoint", seed=1)
    sst = np.linspace(271.0, 303.0, 48)
    sst[:10] = np.nan
    den = load_cbottle([str(path)], label="icon", sst=sst)
    assert den.grid.nside == 2 and list(den.normalization.channels) == CHANNELS
    np.testing.assert_array_equal(den.normalization.center, CENTER)
    np.testing.assert_array_equal(den.normalization.scale, SCALES)
    assert (den.sigma_min, den.sigma_max) == (0.02, 200.0)  # the network sets no range: cBottle's defaults
    net = raw_net(path)
    z = torch.randn(3, 5, 48)
    sigma = torch.full((3,), 2.5)
    cond = time_condition(np.datetime64("2021-03-02T06:00"))
    got = den(z, sigma, cond)
    # the same call written out from cBottle's documented conventions
    perm = torch.as_tensor(nest_to_pad_xy(2))
    labels = torch.nn.functional.one_hot(torch.tensor([0, 0, 0]), 1024).float()
    sst_enc = (np.where(np.isnan(sst), 290.0, sst) - 287.6897) / 15.5862
    c = torch.as_tensor(sst_enc, dtype=torch.float32)[perm].expand(3, 1, 1, 48)
    out = net(z[..., perm][:, :, None], sigma, class_labels=labels, condition=c,
              second_of_day=torch.full((3, 1), 21600.0), day_of_year=torch.full((3, 1), 60.25)).out  # 59 days + 1 + 6 h since Jan 1
    want = out[:, :, 0][..., torch.as_tensor(pad_xy_to_nest(2))]
    torch.testing.assert_close(got, want)
    # condition and time matter: a different SST or time changes D
    assert not torch.allclose(load_cbottle([str(path)], sst=280.0)(z, sigma, cond), got)
    assert not torch.allclose(den(z, sigma, time_condition(np.datetime64("2021-07-02T18:00"))), got)


def test_era5_label_masks_radiation_and_fills_it_with_an_icon_pass(tmp_path):
    path = write_checkpoint(tmp_path / "a.checkpoint", seed=2)
    icon = load_cbottle([str(path)], label="icon", sst=290.0)
    era5 = load_cbottle([str(path)], label="era5", sst=290.0)
    assert era5.second_pass and not icon.second_pass
    net = raw_net(path)
    calls = []
    for e in (era5.experts[0],):
        e.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["class_labels"].argmax(-1).tolist()), with_kwargs=True)
    z = torch.randn(2, 5, 48)
    sigma = torch.full((2,), 0.7)
    d = era5(z, sigma, None)
    assert calls == [[1, 1], [0, 0]]  # two network calls: ERA5-labelled, then ICON-labelled
    perm, inv = torch.as_tensor(nest_to_pad_xy(2)), torch.as_tensor(pad_xy_to_nest(2))
    c = torch.full((2, 1, 1, 48), (290.0 - 287.6897) / 15.5862)
    x = z[..., perm][:, :, None]
    masked = x.clone()
    masked[:, [2, 4]] = 0.0  # rlut, rsds
    one_hot = lambda i: torch.nn.functional.one_hot(torch.tensor([i, i]), 1024).float()  # noqa: E731
    d_era5 = net(masked, sigma, class_labels=one_hot(1), condition=c).out[:, :, 0][..., inv]
    d_icon = net(x, sigma, class_labels=one_hot(0), condition=c).out[:, :, 0][..., inv]
    torch.testing.assert_close(d[:, [0, 1, 3]], d_era5[:, [0, 1, 3]])
    torch.testing.assert_close(d[:, [2, 4]], d_icon[:, [2, 4]])
    torch.testing.assert_close(icon(z, sigma, None), d_icon)


def test_expert_is_chosen_by_sigma(tmp_path):
    paths = [str(write_checkpoint(tmp_path / f"e{i}.checkpoint", seed=10 + i)) for i in range(3)]
    den = load_cbottle(paths, sigma_thresholds=[100.0, 10.0], sst=290.0)
    nets = [raw_net(Path(p)) for p in paths]
    z = torch.randn(2, 5, 48)
    perm, inv = torch.as_tensor(nest_to_pad_xy(2)), torch.as_tensor(pad_xy_to_nest(2))
    c = torch.full((2, 1, 1, 48), (290.0 - 287.6897) / 15.5862)
    labels = torch.nn.functional.one_hot(torch.tensor([0, 0]), 1024).float()
    for s, expert in ((150.0, 0), (100.0, 0), (50.0, 1), (10.0, 1), (1.0, 2), (0.02, 2)):
        sigma = torch.full((2,), s)
        want = nets[expert](z[..., perm][:, :, None], sigma, class_labels=labels, condition=c).out[:, :, 0][..., inv]
        torch.testing.assert_close(den(z, sigma, None), want, msg=f"sigma {s}")
        assert den.expert_index(s) == expert


def test_guidance_vjp_through_the_network_matches_finite_differences(tmp_path):
    """d/dε log-likelihood(D(z + ε u)) by central differences vs the VJP the guidance takes.
    cBottle's network runs in float32: with ε = 1e-2 the rounding error of the difference is
    ~1e-7·|f|/ε ≈ 1e-4 relative and the truncation error O(ε²) on a smooth (tanh) network, so 1%."""
    path = write_checkpoint(tmp_path / "a.checkpoint", seed=3)
    den = load_cbottle([str(path)], sst=290.0)
    rng = np.random.default_rng(5)
    cells = rng.choice(48, 12, replace=False)
    op = ObservationOperator.at_cells(cells, np.array(CHANNELS)[rng.integers(0, 5, 12)], 280.0, 5.0, den.grid, den.normalization)
    guided = RegressionGuidance(den, op, scale=1.0, gamma=0.01, autocast=False)
    torch.manual_seed(0)
    z = torch.randn(1, 5, 48)
    sigma = torch.full((1,), 1.3)
    zg = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(guided.log_likelihood(den(zg, sigma), sigma).sum(), zg)
    u = torch.randn_like(z)
    eps = 1e-2
    with torch.no_grad():
        f = lambda t: float(guided.log_likelihood(den(z + t * u, sigma), sigma).double().sum())  # noqa: E731
        fd = (f(eps) - f(-eps)) / (2 * eps)
    assert abs(fd) > 1.0  # the check is not trivially satisfied
    assert abs(float((grad * u).sum()) - fd) < 1e-2 * abs(fd)
    # and the guided denoiser applies it: D_y - D = scale σ² ∇
    torch.testing.assert_close(guided(z, sigma, None) - den(z, sigma, None), 1.3**2 * grad)


def test_sst_file_is_regridded_and_land_filled(tmp_path):
    write_checkpoint(tmp_path / "a.checkpoint", seed=4, level=2)
    lat = np.linspace(-90, 90, 91)
    lon = np.arange(0, 360, 2.0)
    field = 280.0 + 0.1 * lat[:, None] + 0 * lon[None, :]
    field[:, (lon >= 0) & (lon < 60)] = np.nan  # "land"
    xr.Dataset({"sst": (("time", "latitude", "longitude"), field[None])},
               coords={"time": [np.datetime64("2021-03-01", "ns")], "latitude": lat, "longitude": lon}).to_netcdf(tmp_path / "sst.nc")
    cfg = model_config(kind="cbottle", cbottle=dict(checkpoints=[str(tmp_path / "a.checkpoint")], sst=str(tmp_path / "sst.nc")))
    den = load_prior(cfg, GridConfig(nside=4))
    enc = den._condition[0, 0, 0][torch.as_tensor(pad_xy_to_nest(4))].double().numpy()
    lon_c, lat_c = hp.pix2ang(4, np.arange(192), nest=True, lonlat=True)
    ocean = (lon_c > 70) & (lon_c < 355)
    land = (lon_c > 5) & (lon_c < 55)
    np.testing.assert_allclose(enc[ocean], (280.0 + 0.1 * lat_c[ocean] - 287.6897) / 15.5862, atol=1e-6)
    np.testing.assert_allclose(enc[land], (290.0 - 287.6897) / 15.5862, atol=1e-6)


def test_errors_are_one_line_input_errors(tmp_path, monkeypatch):
    path = write_checkpoint(tmp_path / "a.checkpoint", seed=5)
    with pytest.raises(InputError, match="conditioned on SST"):
        load_cbottle([str(path)])
    with pytest.raises(InputError, match="not found"):
        load_cbottle([str(tmp_path / "missing.checkpoint")], sst=290.0)
    (tmp_path / "bad.checkpoint").write_text("not a zip")
    with pytest.raises(InputError, match="not a readable cBottle checkpoint"):
        load_cbottle([str(tmp_path / "bad.checkpoint")], sst=290.0)
    with pytest.raises(InputError, match="nside 2, grid.nside is 8"):
        load_prior(model_config(kind="cbottle", cbottle=dict(checkpoints=[str(path)], sst_constant=290.0)), GridConfig(nside=8))
    with pytest.raises(InputError, match="one checkpoint more than sigma_thresholds"):
        from ensemble_da.config import validate_tree, RunConfig

        validate_tree(RunConfig, {"model": {"kind": "cbottle", "cbottle": {"checkpoints": ["a", "b"]}}})
    monkeypatch.setitem(sys.modules, "cbottle", None)
    monkeypatch.setitem(sys.modules, "cbottle.checkpointing", None)
    with pytest.raises(InputError, match="pip install 'cbottle @ git\\+https://github.com/NVlabs/cBottle'"):
        load_cbottle([str(path)], sst=290.0)


def test_guided_sampling_through_cbottle_is_per_member(tmp_path):
    """A short guided run: member m does not depend on its batch companions (DESIGN.md §3)."""
    from ensemble_da import sample_posterior

    path = write_checkpoint(tmp_path / "a.checkpoint", seed=6)
    den = load_cbottle([str(path)], label="era5", sst=290.0)
    assert isinstance(den, CBottleDenoiser)
    op = ObservationOperator.at_cells([3, 7, 20], ["T850", "tas", "Z500"], [272.0, 288.0, 56000.0], [0.5, 0.5, 50.0], den.grid, den.normalization)
    # MMPS: regression guidance on these random weights leaves the sane range (DivergenceError)
    kw = dict(sampler=dict(steps=4, batch_size=3), guidance="mmps", time="2021-03-02T06:00", seed=9)
    both = sample_posterior(den, op, [0, 1, 2], **kw)
    alone = sample_posterior(den, op, [2], **kw)
    assert both.shape == (3, 5, 48) and np.isfinite(both).all()
    np.testing.assert_allclose(alone[0], both[2], rtol=1e-5, atol=1e-3)


@pytest.mark.slow
def test_shipped_cbottle_config_runs_through_the_cli(tmp_path):
    """configs/cbottle-era5.yaml with its paths pointed at a stand-in checkpoint and a small ERA5
    file: `ensemble-da run` writes analyses with the checkpoint's channels."""
    from typer.testing import CliRunner

    from ensemble_da.cli import app
    from ensemble_da.io import open_run

    ckpt = write_checkpoint(tmp_path / "a.checkpoint", seed=7)
    lat, lon = np.linspace(90, -90, 37), np.arange(0, 360, 5.0)
    t = (255.0 + 0.3 * lat[:, None] + 0 * lon)[None, None].astype(np.float32)
    xr.Dataset({"t": (("time", "level", "latitude", "longitude"), t)},
               coords={"time": [np.datetime64("2021-03-02T00:00", "ns")], "level": [850], "latitude": lat, "longitude": lon}
               ).to_netcdf(tmp_path / "era5.nc")
    sets = [
        f"model.cbottle.checkpoints=[{ckpt}]", "model.cbottle.sigma_thresholds=[]", "model.cbottle.sst=null",
        "model.cbottle.sst_constant=290", "model.cbottle.label=era5", "grid.nside=2", 'times=["2021-03-02T00:00"]',
        f"observations.path={tmp_path / 'era5.nc'}", "observations.channels=[T850]", "observations.sigma={T850: 1.0}",
        "observations.num_obs=10", "cluster={address: inprocess, replicas: 1, members_per_unit: 2}",
        "ensemble.members=2", "sampler.steps=6", "sampler.batch_size=2",  # 3 steps: |z| ≈ 31 prior std, diverged
    ]
    config = Path(__file__).parents[1] / "configs" / "cbottle-era5.yaml"
    args = ["run", str(config), "--out", str(tmp_path / "run")] + [a for s in sets for a in ("--set", s)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    ds = open_run(tmp_path / "run")
    assert list(ds["channel"].values) == CHANNELS and ds["analysis"].shape == (1, 2, 5, 48)
    assert np.isfinite(ds["analysis"].values).all()


def test_thresholds_that_do_not_decrease_are_refused_by_the_mixture_itself(tmp_path):
    """The check lives where the mixture is built, so Python callers (not only configs) get it."""
    paths = [str(write_checkpoint(tmp_path / f"{k}.checkpoint", seed=k)) for k in range(3)]
    for bad in ([10.0, 100.0], [10.0, 10.0]):
        with pytest.raises(InputError, match=r"sigma_thresholds must decrease .*got \[10.0, 10"):
            load_cbottle(paths, sigma_thresholds=bad, sst=290.0)
    experts = load_cbottle(paths, sigma_thresholds=[100.0, 10.0], sst=290.0)
    with pytest.raises(InputError, match="must decrease"):
        CBottleDenoiser(experts.experts, [1.0, 5.0], experts.normalization, experts.grid)
    model = model_config(kind="cbottle", cbottle=dict(checkpoints=paths, sigma_thresholds=[10.0, 100.0], sst_constant=290.0))
    with pytest.raises(InputError, match="must decrease"):  # the config path reaches the same check
        load_prior(model, GridConfig(nside=2))
    assert experts.expert_index(150.0) == 0 and experts.expert_index(50.0) == 1 and experts.expert_index(5.0) == 2
