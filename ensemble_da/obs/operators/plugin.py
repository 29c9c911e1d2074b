"""User plug-in observation operators (DESIGN.md §5): `operator: {kind: python, object: "module:callable"}`.

The callable is any torch function of the member batch and the set's locations,

    h(x, locations, **options) -> Tensor (member, obs) ,   physical units,

- x : Tensor (member, channel, cell), the state in physical units, channels in the prior's order
  (`locations.channels`), NEST cells of `locations.grid`, float32 or float64, on any device;
- locations : `ObservationLocations`, the set's lat, lon (degrees), time and channel labels, and
  `interpolate(x, channel)` (the bilinear field of one channel at every location, differentiable);
- options : the config's `options:` mapping, passed as keyword arguments.

It must be built from torch operations on x, so autograd gives its Jacobians (VJP for regression
and DPS, VJP and JVP for MMPS's linearisation), and act on each member alone. Its observations are
normalised by the config's `scale` (y_n = y / scale; default 1, the physical unit), which only
regression's γσ² inflation depends on.

`PluginOperator.load` checks what it can before a run: the import, that the object is callable,
and one call on a probe batch of two members (member 0: the prior's channel centres; member 1:
centres + half a channel scale): the result is a tensor of shape (2, obs), finite, differentiable
with respect to x with a finite gradient, differentiable by torch.func (vjp and jvp), and member 1
alone gives the same value. Every failure is one `InputError` line naming the object.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ensemble_da.channels import Normalization
from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators.nonlinear import NonlinearOperator
from ensemble_da.obs.operators.points import point_cells
from ensemble_da.obs.operators.sparse import SparseRows

__all__ = ["ObservationLocations", "PluginOperator", "resolve_object"]


def resolve_object(spec: str, key: str = "observations.operator.object") -> Callable:
    """Import `"package.module:callable"`; InputError naming `key` when that fails."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InputError(f'{key} {spec!r}: expected "package.module:callable"')
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure of user code is bad input
        raise InputError(f"{key} {spec!r}: cannot import {module_name!r} ({type(exc).__name__}: {exc})") from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise InputError(f"{key} {spec!r}: {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise InputError(f"{key} {spec!r}: {attr!r} is not callable")
    return target


@dataclass(frozen=True)
class ObservationLocations:
    """What a plug-in knows about its observation set; arrays with shape (obs,).

    lat, lon : float64 degrees (lon in [0, 360)); time : datetime64[ns]; channel : str labels of
    the observations (as read from the source); channels : the state's channel order; grid : the grid.
    """

    lat: np.ndarray
    lon: np.ndarray
    time: np.ndarray
    channel: np.ndarray
    channels: tuple[str, ...]
    grid: HealpixGrid
    _rows: dict = field(default_factory=dict, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.lat)

    def interpolate(self, x: torch.Tensor, channel: str) -> torch.Tensor:
        """Bilinear value of `channel` at every location: x (member, channel, cell) → (member, obs),
        in x's units, differentiable (the deterministic sparse rows of the linear operators)."""
        if channel not in self._rows:
            if channel not in self.channels:
                raise InputError(f"plug-in operator asked for channel {channel!r}; the prior has {list(self.channels)}")
            cells, w = point_cells(self.grid, self.lat, self.lon, "bilinear")
            c = self.channels.index(channel)
            self._rows[channel] = SparseRows(c * self.grid.npix + cells, w, (len(self.channels), self.grid.npix))
        return self._rows[channel](x)


class PluginOperator(NonlinearOperator):
    """A user's torch function as an observation operator (module docstring)."""

    kind = "python"

    def __init__(self, fn: Callable, name: str, options: Mapping[str, Any], obs: ObservationSet, grid: HealpixGrid,
                 normalization: Normalization, scale: float = 1.0):
        n = len(obs.lat)
        super().__init__(obs.value, obs.sigma, np.zeros(n), np.full(n, float(scale)), normalization, grid.npix)
        self.fn, self.name, self.options = fn, name, dict(options)
        self.locations = ObservationLocations(obs.lat, obs.lon, obs.time, obs.channel, tuple(normalization.channels), grid)

    @classmethod
    def load(cls, obs: ObservationSet, grid: HealpixGrid, normalization: Normalization, target: str,
             options: Mapping[str, Any] | None = None, scale: float = 1.0) -> "PluginOperator":
        """Import `target` ("module:callable") and check it on a probe batch (module docstring); InputError otherwise."""
        op = cls(resolve_object(target), target, options or {}, obs, grid, normalization, scale)
        op.check()
        return op

    def physical(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-2]
        out = self.fn(x.reshape(-1, *x.shape[-2:]), self.locations, **self.options)
        return out.reshape(*lead, len(self))

    def check(self) -> None:
        """The probe-batch checks of the module docstring; one InputError line per failure."""
        name = f"observations.operator.object {self.name!r}"
        norm, n = self.normalization, len(self)
        centre = np.broadcast_to(norm.center[:, None], (self.n_channels, self.npix))
        probe = torch.as_tensor(np.stack([centre, centre + 0.5 * norm.scale[:, None]]), dtype=torch.float64)
        x = probe.clone().requires_grad_(True)
        try:
            out = self.fn(x, self.locations, **self.options)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - user code failing on a valid input is reported
            raise InputError(f"{name}: calling it failed ({type(exc).__name__}: {exc})") from None
        if not isinstance(out, torch.Tensor):
            raise InputError(f"{name}: returned {type(out).__name__}, expected a torch tensor of shape (member, obs) = (2, {n})")
        if tuple(out.shape) != (2, n):
            raise InputError(f"{name}: returned shape {tuple(out.shape)}, expected (member, obs) = (2, {n})")
        if not torch.isfinite(out).all():
            raise InputError(f"{name}: returned NaN or inf on the probe state (the prior's channel centres, and "
                             "centres + half a scale)")
        if not out.requires_grad:
            raise InputError(f"{name}: its result is not differentiable with respect to the state (no autograd graph "
                             "back to x: computed through numpy, .item(), .detach() or under torch.no_grad?)")
        try:
            (grad,) = torch.autograd.grad(out.sum(), x, allow_unused=True)
        except RuntimeError as exc:
            raise InputError(f"{name}: its result is not differentiable with respect to the state ({exc})") from None
        if grad is None:
            raise InputError(f"{name}: its result does not depend on the state x")
        if not torch.isfinite(grad).all():
            raise InputError(f"{name}: its gradient is NaN or inf on the probe state")
        with torch.no_grad():
            alone = self.fn(probe[1:], self.locations, **self.options)
        if not (isinstance(alone, torch.Tensor) and tuple(alone.shape) == (1, n)
                and torch.allclose(alone[0], out[1].detach(), rtol=1e-6, atol=1e-9 * float(out.detach().abs().max()))):
            raise InputError(f"{name}: its value for a member depends on the other members of the batch; "
                             "it must act on each member alone")
        try:
            z = torch.as_tensor(norm.normalize(probe.numpy()))
            lin = self.linearize(z)
            tangent = lin.jvp(torch.ones_like(z))
            cotangent = lin.vjp(torch.ones_like(lin.value))
        except Exception as exc:  # noqa: BLE001 - a torch.func failure inside user code is reported
            raise InputError(f"{name}: torch.func cannot differentiate it ({type(exc).__name__}: {exc}); "
                             "MMPS guidance needs its JVP and VJP") from None
        if not (torch.isfinite(tangent).all() and torch.isfinite(cotangent).all()):
            raise InputError(f"{name}: its torch.func JVP or VJP is NaN or inf on the probe state")
