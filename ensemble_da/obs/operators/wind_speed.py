"""Wind-speed operator (DESIGN.md §5): the speed of the horizontal wind at one level.

    y = √(U² + V²) ,   U = bilinear(x_U)(lat, lon), V = bilinear(x_V)(lat, lon),

with U, V the channels `U<level>`, `V<level>` (`level: surface` reads `uas`, `vas`), physical
units (m s⁻¹): a scatterometer, a wind lidar, an anemometer that reports no direction. Nonlinear
(`nonlinear`); its Jacobian is (U, V) / y on the two interpolated components. At a calm point
(U = V = 0) the speed has no derivative; there it is taken as 0 (√ of max(U² + V², tiny)).

Normalised units: y_n = y / b with b = √((s_U² + s_V²) / 2) (s the prior's channel scales), and
the interpolation runs on the normalised U and V before mapping them to physical values, so a call
gathers 2 · 4 entries per observation and never rescales the whole state.
"""

from __future__ import annotations

import numpy as np
import torch

from ensemble_da.channels import Normalization
from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators.nonlinear import NonlinearOperator
from ensemble_da.obs.operators.points import point_cells
from ensemble_da.obs.operators.sparse import SparseRows

__all__ = ["WindSpeedOperator", "wind_channels", "speed"]


def wind_channels(level: int | str) -> tuple[str, str]:
    """(U, V) channel names of `level` (hPa, or "surface")."""
    return ("uas", "vas") if level == "surface" else (f"U{int(level)}", f"V{int(level)}")


def speed(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """√(u² + v²), with derivative 0 where u = v = 0."""
    return torch.sqrt(torch.clamp_min(u * u + v * v, torch.finfo(u.dtype).tiny))


class WindSpeedOperator(NonlinearOperator):
    """y = √(U² + V²) of the bilinear U, V at each observation (module docstring)."""

    kind = "wind_speed"

    def __init__(self, obs: ObservationSet, grid: HealpixGrid, normalization: Normalization, level: int | str):
        names = wind_channels(level)
        missing = [c for c in names if c not in normalization.channels]
        if missing:
            raise InputError(f"observations.operator: wind_speed at level {level} needs channels {list(names)}; "
                             f"the prior has {list(normalization.channels)}")
        ch = normalization.index(list(names))
        s = normalization.scale[ch]
        n = len(obs.lat)
        super().__init__(obs.value, obs.sigma, np.zeros(n), np.full(n, np.sqrt((s[0] ** 2 + s[1] ** 2) / 2)),
                         normalization, grid.npix)
        cells, w = point_cells(grid, obs.lat, obs.lon, "bilinear")
        self.channels = (int(ch[0]), int(ch[1]))
        self.rows = SparseRows(np.concatenate([ch[0] * grid.npix + cells, ch[1] * grid.npix + cells]),
                               np.concatenate([w, w]), (self.n_channels, grid.npix))

    def physical(self, x: torch.Tensor) -> torch.Tensor:
        uv = self.rows(x)
        n = len(self)
        return speed(uv[..., :n], uv[..., n:])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c, s, _, b = self.constants(z)
        uv = self.rows(z)
        n = len(self)
        iu, iv = self.channels
        return speed(c[iu, 0] + s[iu, 0] * uv[..., :n], c[iv, 0] + s[iv, 0] * uv[..., n:]) / b
