"""Point operators (DESIGN.md §5): an observation is its own channel's field at its location.

- `nearest`: the value of the cell containing (lat, lon), `healpy.ang2pix(nside, lon, lat,
  nest=True, lonlat=True)`;
- `bilinear`: healpy's 4-cell interpolation, `healpy.get_interp_weights(nside, lon, lat,
  nest=True, lonlat=True)` (weights sum to 1).

Both read one channel with weights summing to 1, so they commute with the per-channel
normalisation (`rows`): y_n = (y − center_c) / scale_c is read by the same weights.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ensemble_da.channels import Normalization
from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators.rows import LinearRows

__all__ = ["point_cells", "point_rows"]


def point_cells(grid: HealpixGrid, lat: np.ndarray, lon: np.ndarray,
                kind: Literal["nearest", "bilinear"]) -> tuple[np.ndarray, np.ndarray]:
    """NEST cells and weights, each (n, k) (k = 1 nearest, 4 bilinear), of points at (lat, lon) degrees."""
    if kind == "nearest":
        cells = grid.ang2pix(lat, lon)[:, None]
        return cells, np.ones_like(cells, dtype=np.float64)
    if kind == "bilinear":
        return grid.interp_weights(lat, lon)
    raise ValueError(f"unknown point operator {kind!r} (nearest | bilinear)")


def point_rows(obs: ObservationSet, grid: HealpixGrid, normalization: Normalization,
               kind: Literal["nearest", "bilinear"]) -> LinearRows:
    """Rows reading each observation's channel (`obs.channel`) at its location."""
    ch = normalization.index(obs.channel)
    cells, weights = point_cells(grid, obs.lat, obs.lon, kind)
    return LinearRows(ch[:, None] * grid.npix + cells, weights, None, normalization.center[ch], normalization.scale[ch])
