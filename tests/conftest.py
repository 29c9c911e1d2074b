"""Shared fixtures: a private cache for kernel eigenpairs and small run configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ensemble_da.config import RunConfig

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    import os

    os.environ.setdefault("ENSEMBLE_DA_CACHE", str(tmp_path_factory.mktemp("cache")))


def small_config(**sections) -> RunConfig:
    """A 3-channel Gaussian-prior run at nside 8 (DESIGN.md §7a values), overridable per section."""
    tree = dict(
        grid=dict(nside=8),
        model=dict(
            kind="gaussian",
            channels=["T850", "T500", "T300"],
            mean=dict(T850=275.0, T500=255.0, T300=230.0),
            std=dict(T850=6.0, T500=5.0, T300=4.0),
            length_scale_km=1500,
            channel_correlation=[[1, 0.6, 0.3], [0.6, 1, 0.6], [0.3, 0.6, 1]],
            nugget=0.05,
        ),
        sampler=dict(steps=32, batch_size=64),
        guidance=dict(method="mmps", cg_iters=3),
        ensemble=dict(members=16),
        observations=dict(num_obs=100, sigma=dict(T850=0.5, T500=0.5, T300=0.5)),
        cluster=dict(address="inprocess"),
    )
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value} if isinstance(value, dict) else value
    return RunConfig.model_validate(tree)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
