"""Distance-based localisation on the sphere: great-circle distances and the Gaspari–Cohn taper.

Gaspari & Cohn (1999), eq. 4.10: the compactly supported fifth-order piecewise rational function
of r = d / c, equal to 1 at d = 0 and 0 for d ≥ 2c (c: the half-width, `localization_km`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["gaspari_cohn", "great_circle_km", "unit_vectors", "EARTH_RADIUS_KM"]

EARTH_RADIUS_KM = 6371.0


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
    """Great-circle distances (km) between unit vectors a (n, 3) and b (k, 3): shape (n, k)."""
    cross = np.linalg.norm(np.cross(a[:, None, :], b[None, :, :]), axis=-1)
    return EARTH_RADIUS_KM * np.arctan2(cross, a @ b.T)
