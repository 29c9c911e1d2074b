"""Shared fixtures: a private cache for kernel eigenpairs and small run configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import yaml

from ensemble_da.config import RunConfig, default_config_path

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    import os

    os.environ.setdefault("ENSEMBLE_DA_CACHE", str(tmp_path_factory.mktemp("cache")))


def small_config(**sections) -> RunConfig:
    """The packaged demo (DESIGN.md §7a values) shrunk for tests: nside 8, one time, 100 obs,
    in-process; each keyword replaces keys of one section (or a top-level value)."""
    tree = yaml.safe_load(default_config_path().read_text())
    tree.update(times=["2020-01-01T00:00"], grid=dict(nside=8), cluster=dict(address="inprocess"))
    tree["sampler"].update(steps=32, batch_size=64)
    tree["observations"].update(num_obs=100)
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value} if isinstance(value, dict) else value
    return RunConfig.model_validate(tree)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
