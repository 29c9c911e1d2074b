"""Footprint operators (DESIGN.md §5): the mean of a channel over a disc around the location.

    y = (1 / |D|) Σ_{p ∈ D} x_c[p] ,   D = healpy.query_disc(nside, r, radius_km / R, inclusive=False, nest=True),

the cells whose centres lie within `radius_km` (great circle, R = 6371 km) of the observation's
unit vector r: a satellite footprint, a radar volume, a gridded retrieval coarser than the grid.
A disc that holds no cell centre (radius below about half a cell) falls back to the cell
containing the point, i.e. `nearest`. Linear; each row reads one channel with weights 1/|D|
summing to 1, so it commutes with the normalisation like a point row (`rows`). Rows are padded
to the largest disc with weight-0 entries on the row's first cell.

Building costs one `query_disc` per observation (tens of µs each): done once per set.
"""

from __future__ import annotations

import healpy as hp
import numpy as np

from ensemble_da.channels import Normalization
from ensemble_da.errors import InputError
from ensemble_da.grid import EARTH_RADIUS_KM, HealpixGrid, check_lonlat
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators.rows import LinearRows

__all__ = ["footprint_cells", "footprint_rows"]


def footprint_cells(grid: HealpixGrid, lat: np.ndarray, lon: np.ndarray, radius_km: float) -> tuple[np.ndarray, np.ndarray]:
    """Cells and weights, each (n, K), of the disc means around (lat, lon) degrees (padding weight 0)."""
    if not radius_km > 0:
        raise InputError(f"observations.operator.radius_km must be > 0, got {radius_km}")
    lat, lon = check_lonlat(lat, lon)
    vec = np.atleast_2d(hp.ang2vec(lon, lat, lonlat=True))
    inside = [hp.query_disc(grid.nside, v, radius_km / EARTH_RADIUS_KM, inclusive=False, nest=True) for v in vec]
    fallback = grid.ang2pix(lat, lon)
    discs = [d if len(d) else fallback[i : i + 1] for i, d in enumerate(inside)]
    width = max((len(d) for d in discs), default=1)
    cells = np.empty((len(discs), width), dtype=np.int64)
    weights = np.zeros((len(discs), width))
    for i, d in enumerate(discs):
        cells[i, : len(d)] = d
        cells[i, len(d) :] = d[0]
        weights[i, : len(d)] = 1.0 / len(d)
    return cells, weights


def footprint_rows(obs: ObservationSet, grid: HealpixGrid, normalization: Normalization, radius_km: float) -> LinearRows:
    """Rows of each observation's channel averaged over the disc of `radius_km` around it."""
    ch = normalization.index(obs.channel)
    cells, weights = footprint_cells(grid, obs.lat, obs.lon, radius_km)
    return LinearRows(ch[:, None] * grid.npix + cells, weights, None, normalization.center[ch], normalization.scale[ch])
