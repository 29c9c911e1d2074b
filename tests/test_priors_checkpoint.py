"""Checkpoints (priors/checkpoint.py): round trip, errors, and the shipped SPEEDY checkpoint's skill."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ensemble_da.channels import Normalization
from ensemble_da.config import GridConfig, model_config
from ensemble_da.data.speedy import read_speedy
from ensemble_da.errors import InputError
from ensemble_da.priors import Denoiser, load_prior
from ensemble_da.priors.checkpoint import (
    LearnedDenoiser,
    load_checkpoint,
    save_checkpoint,
    shipped_checkpoint,
    shipped_heldout_sample,
)
from ensemble_da.priors.network import EDMPrecond, HealpixUNet, UNetConfig
from ensemble_da.sampling import KarrasSchedule, edm_sample, member_generator


def _tiny(tmp_path):
    torch.manual_seed(0)
    model = EDMPrecond(HealpixUNet(UNetConfig(channels=2, widths=[4, 8], emb_dim=8)), sigma_data=0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    norm = Normalization(("T850", "U850"), np.array([280.0, 1.0]), np.array([10.0, 5.0]))
    path = save_checkpoint(tmp_path / "m", model, norm, nside=4, sigma_min=0.002, sigma_max=80.0, training_data_hash="abc")
    return model, path


def test_round_trip_gives_the_same_denoiser(tmp_path):
    model, path = _tiny(tmp_path)
    den = load_checkpoint(path)
    assert isinstance(den, Denoiser) and isinstance(den, LearnedDenoiser)
    assert den.grid.nside == 4 and den.normalization.channels == ("T850", "U850")
    assert den.sigma_data == pytest.approx(0.9) and den.meta["training_data_hash"] == "abc"
    z, s = torch.randn(3, 2, 192), torch.tensor([0.1, 1.0, 10.0])
    # same weights; float32 kernels may reassociate sums differently run to run, hence 1e-6
    torch.testing.assert_close(den(z, s), model(z, s), atol=1e-6, rtol=1e-6)
    for variant in (tmp_path / "m", tmp_path / "m.safetensors", tmp_path):
        torch.testing.assert_close(load_checkpoint(variant)(z, s), den(z, s), atol=0, rtol=0)
    # weights are frozen, but the input gradient (what guidance needs) flows
    z.requires_grad_(True)
    den(z, s).sum().backward()
    assert z.grad is not None and all(p.grad is None for p in den.model.parameters())


def test_bad_checkpoints_are_input_errors(tmp_path):
    _, path = _tiny(tmp_path)
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "nothing.json")
    meta = json.loads(path.read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "m.safetensors").write_bytes((tmp_path / "m.safetensors").read_bytes())
    (bad / "m.json").write_text(json.dumps({**meta, "network": {**meta["network"], "widths": [4, 16]}}))
    with pytest.raises(InputError, match="weights do not match"):
        load_checkpoint(bad / "m.json")
    (bad / "m.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(InputError, match="not an ensemble_da checkpoint"):
        load_checkpoint(bad / "m.json")
    (bad / "m.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_checkpoint(bad / "m.json")
    with pytest.raises(InputError, match="nside"):
        load_prior(model_config(kind="checkpoint", path=str(path)), GridConfig(nside=8))
    with pytest.raises(InputError, match="differ"):
        load_prior(model_config(kind="checkpoint", path=str(path), channels=["T850"]), GridConfig(nside=4))
    assert isinstance(load_prior(model_config(kind="checkpoint", path=str(path)), GridConfig(nside=4)), LearnedDenoiser)


def test_demo_switched_to_a_checkpoint_and_its_resolved_config_load(tmp_path):
    """`--set model.kind=checkpoint` on the demo, and the run's config.yaml reloaded on --resume
    (every key written out), both load the checkpoint with its own channels."""
    from ensemble_da.config import load_config

    _, path = _tiny(tmp_path)
    cfg = load_config(None, ["model.kind=checkpoint", f"model.path={path}", "grid.nside=4"])
    den = load_prior(cfg.model, cfg.grid)
    (tmp_path / "config.yaml").write_text(cfg.to_yaml())
    again = load_prior(load_config(tmp_path / "config.yaml").model, cfg.grid)
    assert den.normalization.channels == again.normalization.channels == ("T850", "U850")


@pytest.fixture(scope="module")
def shipped():
    den = load_checkpoint()
    held = read_speedy(shipped_heldout_sample())
    return den, held


def test_shipped_checkpoint_is_small_and_describes_its_data(shipped):
    den, held = shipped
    size = shipped_checkpoint().with_suffix(".safetensors").stat().st_size
    assert size <= 10 * 2**20
    assert den.meta["training_data_hash"] == held.data_hash  # the sample comes from the training climate
    assert den.normalization.channels == held.channels
    np.testing.assert_allclose(den.normalization.center, held.center)
    last_trained = np.datetime64(den.meta["training"]["train_time_range"][1], "ns")
    assert held.time.min() > last_trained  # held out: after every training state


def test_shipped_checkpoint_denoises_held_out_states(shipped):
    """At σ = 0.5·σ_data the identity's error is σ² per element; the trained denoiser must do far better."""
    den, held = shipped
    z0 = torch.as_tensor(den.normalization.normalize(held.state.astype(np.float64)), dtype=torch.float32)
    sigma = 0.5 * den.sigma_data
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(z0.shape, generator=g)
    with torch.no_grad():
        out = den(z0 + sigma * noise, torch.full((z0.shape[0],), sigma))
    mse = float((out - z0).square().mean())
    identity = float((sigma * noise).square().mean())
    # measured 0.08 of the identity's error for the shipped net; 0.5 leaves room for platform noise
    assert mse < 0.5 * identity, (mse, identity)


def test_shipped_checkpoint_samples_the_climate(shipped):
    """16 unconditional samples: finite, per-channel mean within 0.1 and std within 10% of the
    training data's (which are 0 and 1 in normalised units by construction of center/scale).
    The tolerance covers the sampling error of 16 spatially correlated fields (~0.05) plus the
    model's own bias."""
    den, _ = shipped
    torch.manual_seed(0)
    schedule = KarrasSchedule(steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    gens = [member_generator(0, 0, m) for m in range(16)]
    with torch.no_grad():
        z = edm_sample(den, gens, schedule, solver="heun", churn=0.0)
    z = z.double().numpy()
    assert np.isfinite(z).all()
    mean, std = z.mean(axis=(0, 2)), z.std(axis=(0, 2))
    assert np.all(np.abs(mean) < 0.1), mean
    assert np.all(np.abs(std - 1.0) < 0.1), std
