"""Priors: denoisers that implement `Denoiser` (exact Gaussian, learned networks, adapters)."""

from __future__ import annotations

import torch

from ensemble_da.config import GridConfig, ModelConfig
from ensemble_da.errors import InputError
from ensemble_da.priors.base import Condition, Denoiser, time_condition

__all__ = ["Denoiser", "Condition", "load_prior", "time_condition", "GaussianPrior", "GaussianMarkovPrior",
           "ClimatologyPrior", "check_denoiser"]

_LAZY = {
    "GaussianPrior": "ensemble_da.priors.gaussian",
    "GaussianMarkovPrior": "ensemble_da.priors.gaussian_markov",
    "ClimatologyPrior": "ensemble_da.priors.climatology",
    "check_denoiser": "ensemble_da.priors.plugin",
}


def __getattr__(name: str):
    # The priors themselves load on first use (`from ensemble_da.priors import GaussianPrior`).
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ensemble_da.priors' has no attribute {name!r}")


def load_prior(model: ModelConfig, grid: GridConfig, device: str | torch.device = "cpu") -> Denoiser:
    """Build the prior named by `model.kind` on `device`; InputError for what cannot be built."""
    if model.kind == "gaussian":
        from ensemble_da.priors.gaussian import GaussianPrior

        return GaussianPrior.from_config(model, grid)
    if model.kind == "gaussian_markov":
        from ensemble_da.priors.gaussian_markov import GaussianMarkovPrior

        return GaussianMarkovPrior.from_config(model, grid)
    if model.kind == "gaussian_climatology":
        from ensemble_da.priors.climatology import ClimatologyPrior

        return ClimatologyPrior.from_config(model, grid)
    if model.kind == "checkpoint":
        from ensemble_da.priors.checkpoint import load_for_config

        return load_for_config(model, grid, device)
    if model.kind == "python":
        from ensemble_da.priors.plugin import load_plugin

        return load_plugin(model.factory or "", model.options, grid.nside, device)
    if model.kind == "cbottle":
        from ensemble_da.priors.cbottle import load_for_config as load_cbottle

        return load_cbottle(model, grid, device)
    raise InputError(f"model.kind {model.kind!r} is not available in this build")
