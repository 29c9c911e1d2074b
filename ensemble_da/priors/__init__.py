"""Priors: denoisers that implement `Denoiser` (exact Gaussian, learned networks, adapters)."""

from ensemble_da.priors.base import Condition, Denoiser

__all__ = ["Denoiser", "Condition"]
