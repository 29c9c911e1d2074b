"""Distance-based localisation on the sphere: great-circle distances and the Gaspari–Cohn taper.

Gaspari & Cohn (1999), eq. 4.10: the compactly supported fifth-order piecewise rational function
of r = d / c, equal to 1 at d = 0 and 0 for d ≥ 2c (c: the half-width, `localization_km`).
"""

from __future__ import annotations

import numpy as np

from ensemble_da.grid import EARTH_RADIUS_KM

__all__ = ["gaspari_cohn", "great_circle_km", "unit_vectors"]


def gaspari_cohn(distance: np.ndarray, half_width: float) -> np.ndarray:
    """The Gaspari–Cohn taper of `distance` (any shape, same unit as `half_width` c > 0)."""
    r = np.abs(np.asarray(distance, np.float64)) / half_width
    out = np.zeros_like(r)
    near, far = r <= 1.0, (r > 1.0) & (r < 2.0)
    a = r[near]
    out[near] = -0.25 * a**5 + 0.5 * a**4 + 0.625 * a**3 - 5.0 / 3.0 * a**2 + 1.0
    b = r[far]
    out[far] = b**5 / 12.0 - 0.5 * b**4 + 0.625 * b**3 + 5.0 / 3.0 * b**2 - 5.0 * b + 4.0 - 2.0 / (3.0 * b)
    return out


def unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Unit vectors (..., 3) of latitudes/longitudes in degrees."""
    la, lo = np.deg2rad(lat), np.deg2rad(lon)
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)


def great_circle_km(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Great-circle distances (km) from unit vectors a (n, 3): to every b (k, 3), or to each
    row's own points b (n, k, 3) (LETKF's local observations); shape (n, k) either way.

    atan2(|a × b|, a · b) keeps its precision at small and near-antipodal separations, where
    arccos(a · b) does not.
    """
    if b.ndim == 2:
        cross, dot = np.cross(a[:, None, :], b[None, :, :]), a @ b.T
    else:
        cross, dot = np.cross(a[:, None, :], b), np.einsum("nd,nkd->nk", a, b)
    return EARTH_RADIUS_KM * np.arctan2(np.linalg.norm(cross, axis=-1), dot)
