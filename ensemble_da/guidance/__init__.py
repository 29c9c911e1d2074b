"""Likelihood guidance (DESIGN.md §6): guided denoisers that wrap a prior and are denoisers.

`none` (the prior), `regression` (SDA form), `dps` (per-member DPS), `mmps` (the default, with GMRES).
"""

from __future__ import annotations

from ensemble_da.config import GuidanceConfig
from ensemble_da.guidance.base import GuidedDenoiser
from ensemble_da.guidance.dps import DPSGuidance
from ensemble_da.guidance.mmps import MMPSGuidance
from ensemble_da.guidance.regression import RegressionGuidance
from ensemble_da.errors import InputError
from ensemble_da.obs.bias import ObservationBias
from ensemble_da.obs.operators import Operator
from ensemble_da.priors.base import Denoiser

__all__ = ["GuidedDenoiser", "RegressionGuidance", "DPSGuidance", "MMPSGuidance", "guided_denoiser"]


def guided_denoiser(
    prior: Denoiser, operator: Operator, cfg: GuidanceConfig, autocast: bool = True,
    bias: ObservationBias | None = None,
) -> Denoiser:
    """The prior guided by `operator`'s observations with the method of `cfg` (`none`: the prior).

    `bias`: the observations' bias model (`obs.bias`), marginalised in the likelihood; DPS,
    which ignores the error covariance, refuses it (InputError).
    """
    if cfg.method == "none":
        return prior
    if cfg.method == "regression":
        return RegressionGuidance(prior, operator, cfg.scale, cfg.gamma, autocast, bias)
    if cfg.method == "dps":
        if bias is not None:
            raise InputError("observations.bias needs guidance.method mmps or regression: dps ignores the "
                             "observation error covariance, so it cannot account for the bias")
        return DPSGuidance(prior, operator, cfg.zeta, autocast)
    return MMPSGuidance(prior, operator, cfg.cg_iters, autocast, solver=cfg.solver, bias=bias)
