"""HEALPix geometry (DESIGN.md §3, §5): NEST ordering at every public boundary.

Thin, documented wrappers over healpy with `nest=True, lonlat=True` spelled out at each call,
plus the validation of user coordinates that the rest of the package relies on.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import healpy as hp
import numpy as np

from ensemble_da.errors import InputError

__all__ = ["HealpixGrid", "check_lonlat", "EARTH_RADIUS_KM"]

EARTH_RADIUS_KM = 6371.0  # the mean radius: every km ↔ radian conversion of the package uses it


def check_lonlat(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate latitudes/longitudes in degrees; longitudes are wrapped to [0, 360).

    Raises InputError for non-finite values or |lat| > 90.
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    if lat.shape != lon.shape:
        raise InputError(f"lat and lon shapes differ: {lat.shape} vs {lon.shape}")
    if not (np.all(np.isfinite(lat)) and np.all(np.isfinite(lon))):
        raise InputError("non-finite latitude or longitude")
    bad = np.abs(lat) > 90.0
    if bad.any():
        raise InputError(f"latitude {lat[bad][0]:g} is outside [-90, 90]")
    return lat, np.mod(lon, 360.0)


@dataclass(frozen=True)
class HealpixGrid:
    """A HEALPix grid in NEST order.

    Parameters
    ----------
    nside : int
        HEALPix resolution parameter (a power of 2); `npix = 12 * nside**2` cells.
    """

    nside: int

    def __post_init__(self) -> None:
        if self.nside < 1 or self.nside & (self.nside - 1):
            raise InputError(f"nside must be a positive power of 2, got {self.nside}")

    @property
    def npix(self) -> int:
        return hp.nside2npix(self.nside)

    @property
    def level(self) -> int:
        """log2(nside), the `level` attribute of the cell_ids coordinate."""
        return int(np.log2(self.nside))

    @property
    def cell_ids(self) -> np.ndarray:
        return np.arange(self.npix, dtype=np.int64)

    @cached_property
    def lonlat(self) -> tuple[np.ndarray, np.ndarray]:
        """Cell-centre (lon, lat) in degrees, each with shape (cell,)."""
        lon, lat = hp.pix2ang(self.nside, self.cell_ids, nest=True, lonlat=True)
        return lon, lat

    @cached_property
    def unit_vectors(self) -> np.ndarray:
        """Cell-centre unit vectors r_p, with shape (cell, 3)."""
        return np.stack(hp.pix2vec(self.nside, self.cell_ids, nest=True), axis=-1)

    @property
    def resolution_km(self) -> float:
        """Mean cell spacing in km (on a sphere of radius EARTH_RADIUS_KM)."""
        return float(hp.nside2resol(self.nside) * EARTH_RADIUS_KM)

    def ang2pix(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """NEST index of the cell containing each (lat, lon) in degrees, with shape (n,)."""
        lat, lon = check_lonlat(lat, lon)
        return hp.ang2pix(self.nside, lon, lat, nest=True, lonlat=True)

    def interp_weights(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bilinear interpolation cells and weights, each with shape (n, 4) (healpy order)."""
        lat, lon = check_lonlat(lat, lon)
        pix, w = hp.get_interp_weights(self.nside, lon, lat, nest=True, lonlat=True)
        return pix.T.astype(np.int64), w.T

    def neighbours(self) -> np.ndarray:
        """The 8 neighbours of every cell (SW, W, NW, N, NE, E, SE, S), -1 where none; (cell, 8)."""
        return hp.get_all_neighbours(self.nside, self.cell_ids, nest=True).T
