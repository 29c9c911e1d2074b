"""User plug-in priors (`model.kind: python`): bring any EDM denoiser (DESIGN.md §2, §3).

The config names a factory, `factory: "package.module:function"`, and its keyword arguments,
`options: {...}`. Every model replica imports the module and calls `function(**options)`; the
result must implement the `Denoiser` protocol (priors/base.py; README "Denoiser protocol"):
attributes `grid`, `normalization`, `sigma_min`, `sigma_max` and
`__call__(z, sigma, condition) -> D` with z, D of shape (batch, channel, cell) in normalised
units on the NEST grid, σ of shape (batch,) in the same normalised units.

`load_plugin` checks what it can before a run starts: the import, the protocol's attributes,
the grid (the run's `grid.nside`), and one call at σ = sigma_max on a zero state for shape and
finiteness. Every failure is one `InputError` line that names the factory.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Mapping

import torch

from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid
from ensemble_da.priors.base import Denoiser, time_condition

__all__ = ["load_plugin", "check_denoiser", "resolve_object"]


def resolve_object(spec: str, key: str = "model.factory"):
    """Import `spec` ("package.module:attr.path") and return the callable it names; every failure
    (no colon, import error, missing attribute, not callable) is one InputError naming `key`.
    Shared by the plug-in priors and the plug-in forecast models (`ensemble_da.dynamics.plugin`)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InputError(f'{key} {spec!r}: expected "package.module:function"')
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure of user code is bad input
        raise InputError(f"{key} {spec!r}: cannot import {module_name!r} ({type(exc).__name__}: {exc})") from None
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise InputError(f"{key} {spec!r}: {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise InputError(f"{key} {spec!r}: {attr!r} is not callable")
    return target



def check_denoiser(den: Any, name: str, nside: int | None = None, device: str | torch.device = "cpu") -> Denoiser:
    """Check `den` implements `Denoiser` on `nside` and one call gives finite output of z's shape.

    Raises InputError naming `name` otherwise. Returns `den`.
    """
    missing = [a for a in ("grid", "normalization", "sigma_min", "sigma_max") if not hasattr(den, a)]
    if missing or not callable(den):
        what = f"lacks {missing}" if missing else "is not callable"
        raise InputError(f"{name}: the denoiser it returned {what} (see the Denoiser protocol in the README)")
    if not isinstance(den.grid, HealpixGrid):
        raise InputError(f"{name}: denoiser.grid must be an ensemble_da.grid.HealpixGrid, got {type(den.grid).__name__}")
    if nside is not None and den.grid.nside != nside:
        raise InputError(f"{name}: denoiser is for nside {den.grid.nside}, grid.nside is {nside}")
    if not 0 < float(den.sigma_min) < float(den.sigma_max):
        raise InputError(f"{name}: need 0 < sigma_min < sigma_max, got {den.sigma_min}, {den.sigma_max}")
    shape = (1, len(den.normalization.channels), den.grid.npix)
    z = torch.zeros(shape, device=device)
    sigma = torch.full((1,), float(den.sigma_max), device=device)
    try:
        with torch.no_grad():
            out = den(z, sigma, time_condition("2000-01-01T00:00"))
    except Exception as exc:  # noqa: BLE001 - user code failing on a valid input is reported
        raise InputError(f"{name}: calling the denoiser failed ({type(exc).__name__}: {exc})") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"{name}: denoiser returned {got}, expected a tensor of shape {shape} (batch, channel, cell)")
    if not torch.isfinite(out).all():
        raise InputError(f"{name}: denoiser returned non-finite values (NaN or inf) at sigma {float(den.sigma_max):g}")
    return den


def load_plugin(factory: str, options: Mapping[str, Any], nside: int, device: str | torch.device = "cpu") -> Denoiser:
    """Import `factory`, call it with `options` (plus `device` when it accepts one) and check the result."""
    fn = resolve_object(factory)
    kwargs = dict(options)
    try:
        if "device" in inspect.signature(fn).parameters and "device" not in kwargs:
            kwargs["device"] = str(device)
    except (TypeError, ValueError):
        pass
    try:
        den = fn(**kwargs)
    except InputError as exc:
        raise InputError(f"model.factory {factory!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - user code failing is reported, not a traceback
        raise InputError(f"model.factory {factory!r} failed: {type(exc).__name__}: {exc}") from None
    return check_denoiser(den, f"model.factory {factory!r}", nside, device)
