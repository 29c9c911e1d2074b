"""The HEALPix U-Net and its EDM preconditioning (priors/network.py)."""

from __future__ import annotations

import healpy as hp
import numpy as np
import pytest
import torch

from ensemble_da.priors.network import (
    EDMPrecond,
    HealpixUNet,
    UNetConfig,
    _pool,
    _unpool,
    condition_features,
    healpix_stencil,
)


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-zero weights everywhere (the output conv starts at zero, which would hide the net)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("conditional", [True, False])
@pytest.mark.parametrize("nside", [2, 4, 8, 16])
def test_shape_preserved_at_every_supported_nside(nside, conditional):
    torch.manual_seed(0)
    net = HealpixUNet(UNetConfig(channels=3, widths=[4, 8], emb_dim=8, conditional=conditional))
    model = EDMPrecond(net, sigma_data=1.0)
    _randomise(model)
    z = torch.randn(2, 3, 12 * nside**2)
    cond = {"day_of_year": np.array([10.0, 200.0]), "second_of_day": np.array([0.0, 43200.0])}
    out = model(z, torch.tensor([0.5, 3.0]), cond)
    assert out.shape == z.shape
    assert torch.isfinite(out).all()


def test_three_levels_need_nside_divisible_by_four():
    net = HealpixUNet(UNetConfig(channels=1, widths=[2, 2, 2], emb_dim=4))
    with pytest.raises(ValueError, match="divisible"):
        EDMPrecond(net)(torch.randn(1, 1, 12 * 2**2), torch.tensor([1.0]))
    assert EDMPrecond(net)(torch.randn(1, 1, 12 * 4**2), torch.tensor([1.0])).shape == (1, 1, 192)


def test_stencil_is_healpy_neighbours_with_self_for_missing():
    nside = 4
    idx = healpix_stencil(nside).numpy()
    cells = np.arange(12 * nside**2)
    nb = hp.get_all_neighbours(nside, cells, nest=True).T
    assert (idx[:, 0] == cells).all()
    assert (idx[:, 1:][nb >= 0] == nb[nb >= 0]).all()
    missing = nb < 0
    assert missing.sum() == 24  # 8 vertices where only 3 base faces meet; 3 cells at each lack one neighbour
    assert (idx[:, 1:][missing] == np.repeat(cells[:, None], 8, 1)[missing]).all()


def test_pooling_is_the_mean_over_nest_children():
    nside = 8
    x = np.random.default_rng(0).normal(size=12 * nside**2)
    pooled = _pool(torch.as_tensor(x)[None, None])[0, 0].numpy()
    expected = hp.ud_grade(x, nside // 2, order_in="NESTED", order_out="NESTED")
    np.testing.assert_allclose(pooled, expected, rtol=0, atol=1e-12)
    up = _unpool(torch.as_tensor(pooled)[None, None])[0, 0].numpy()
    np.testing.assert_array_equal(up, hp.ud_grade(pooled, nside, order_in="NESTED", order_out="NESTED"))


def test_edm_preconditioning_limits():
    """σ → 0: D(z) = z (c_skip → 1, c_out → 0); σ → ∞: D(z) → c_out·F, independent of z's scale."""
    torch.manual_seed(0)
    model = EDMPrecond(HealpixUNet(UNetConfig(channels=2, widths=[4, 4], emb_dim=4)), sigma_data=0.8)
    _randomise(model)
    z = torch.randn(3, 2, 48, dtype=torch.float32)
    small = model(z, torch.full((3,), 1e-5))
    torch.testing.assert_close(small, z, atol=1e-4, rtol=0)
    # c_skip, c_out, c_in (Karras et al. 2022, Table 1) at sigma = sigma_data: 1/2, sd/sqrt2, 1/(sd sqrt2)
    s = torch.full((3,), 0.8)
    f = model.net(z / (0.8 * 2**0.5), torch.log(s) / 4, None)
    torch.testing.assert_close(model(z, s), 0.5 * z + 0.8 / 2**0.5 * f)


def test_condition_features_and_unconditional_call():
    feats = condition_features({"day_of_year": 91.3125, "second_of_day": [0.0, 21600.0]}, 2, "cpu", torch.float64)
    np.testing.assert_allclose(feats[:, 0].numpy(), np.sin(2 * np.pi * 91.3125 / 365.25))
    np.testing.assert_allclose(feats[:, 3].numpy(), [1.0, 0.0], atol=1e-12)
    np.testing.assert_array_equal(feats[:, 4].numpy(), [1.0, 1.0])
    assert torch.count_nonzero(condition_features(None, 4, "cpu", torch.float32)) == 0

    torch.manual_seed(0)
    model = EDMPrecond(HealpixUNet(UNetConfig(channels=1, widths=[4, 4], emb_dim=8)))
    _randomise(model)
    z, s = torch.randn(2, 1, 48), torch.tensor([1.0, 1.0])
    a = model(z, s, {"day_of_year": [1.0, 1.0]})
    b = model(z, s, {"day_of_year": [180.0, 180.0]})
    assert not torch.allclose(a, b)  # the season reaches the output
    torch.testing.assert_close(model(z, s, None), model(z, s, {}))


def test_batch_members_are_independent():
    """GroupNorm normalises per sample: a member's output does not depend on its companions."""
    torch.manual_seed(0)
    model = EDMPrecond(HealpixUNet(UNetConfig(channels=2, widths=[4, 8], emb_dim=8)))
    _randomise(model)
    z, s = torch.randn(4, 2, 192), torch.tensor([0.1, 1.0, 5.0, 20.0])
    full = model(z, s)
    single = torch.cat([model(z[i : i + 1], s[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(full, single, atol=1e-5, rtol=1e-5)
