"""The local ensemble transform Kalman filter (LETKF; Hunt, Kostelich & Szunyogh 2007, Physica D 230).

Background members x_m (m = 1…M) with mean x̄ and anomalies X (state, M), Y = H X, d = y − H x̄.
For each cell the local analysis uses the observations within 2c great-circle distance, their
inverse error variances tapered by Gaspari–Cohn (R-localisation), and multiplicative inflation ρ:

    P̃ = [(M − 1) I / ρ + Yᵀ R⁻¹ Y]⁻¹ ,   w̄ = P̃ Yᵀ R⁻¹ d ,   W = [(M − 1) P̃]^½ (symmetric root)
    x_a,m = x̄ + X (w̄ + W[:, m])          (every channel at the cell: the local state)

Without localisation (`localization_km=None`) this is one global ETKF update, whose mean and
covariance equal the Kalman update with the ensemble covariance ρ X Xᵀ / (M − 1).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree
from threadpoolctl import threadpool_limits

from ensemble_da.baselines.localization import gaspari_cohn, great_circle_km, unit_vectors
from ensemble_da.grid import EARTH_RADIUS_KM, HealpixGrid
from ensemble_da.obs.operators import ObservationOperator

__all__ = ["letkf", "ensemble_transform"]


def ensemble_transform(
    y_anom: np.ndarray, innovation: np.ndarray, r_inv: np.ndarray, inflation: float = 1.0
) -> np.ndarray:
    """The ETKF weights w̄ + W, shape (..., M, M) (column m: member m), batched over leading axes.

    y_anom (..., obs, M): observed anomalies Y; innovation (..., obs): d; r_inv (..., obs): the
    (tapered) inverse error variances.
    """
    m = y_anom.shape[-1]
    c = np.swapaxes(y_anom, -1, -2) * r_inv[..., None, :]  # Yᵀ R⁻¹, (..., M, obs)
    values, vectors = np.linalg.eigh((m - 1) / inflation * np.eye(m) + c @ y_anom)
    vt = np.swapaxes(vectors, -1, -2)
    w_mean = (vectors / values[..., None, :]) @ (vt @ (c @ innovation[..., None]))  # P̃ Yᵀ R⁻¹ d
    return w_mean + (vectors * np.sqrt((m - 1) / values)[..., None, :]) @ vt


_CELL_CHUNK = 512


def letkf(
    background: np.ndarray,
    op: ObservationOperator,
    obs_lat: np.ndarray,
    obs_lon: np.ndarray,
    grid: HealpixGrid,
    localization_km: float | None = None,
    inflation: float = 1.0,
) -> np.ndarray:
    """LETKF analysis ensemble.

    Parameters
    ----------
    background : ndarray, shape (M, channel, cell)
        Background members in the units of `op` (normalised), NEST cells of `grid`.
    op : ObservationOperator
        H, y and sigma of the assimilated observations.
    obs_lat, obs_lon : ndarray, shape (obs,)
        Observation locations in degrees (the ObservationSet's `lat`, `lon`).
    localization_km : float or None
        Gaspari–Cohn half-width c (km): observations beyond 2c do not act on a cell. None: global.
    inflation : float
        Multiplicative inflation ρ ≥ 1 of the background covariance.

    Returns
    -------
    ndarray, shape (M, channel, cell), float64
    """
    m = background.shape[0]
    xb = np.asarray(background, np.float64)
    mean = xb.mean(0)  # (channel, cell)
    anom = xb - mean  # (M, channel, cell)
    hx = op.apply_numpy(xb)
    y_anom = (hx - hx.mean(0)).T  # (obs, M)
    innovation = op.y - hx.mean(0)
    r_inv = 1.0 / op.sigma**2
    if localization_km is None:
        return mean + np.einsum("mcp,mk->kcp", anom, ensemble_transform(y_anom, innovation, r_inv, inflation))
    obs_v = unit_vectors(np.asarray(obs_lat), np.asarray(obs_lon))
    cells = grid.unit_vectors
    support = min(2.0 * localization_km / EARTH_RADIUS_KM, np.pi)
    near = cKDTree(obs_v).query_ball_point(cells, r=2.0 * np.sin(support / 2.0))
    out = np.empty_like(xb)
    with threadpool_limits(1):  # thousands of small M×M eigh: BLAS threads only add synchronisation
        for lo in range(0, len(cells), _CELL_CHUNK):
            # local observation sets padded to a common length; the padding gets taper 0
            lists = near[lo : lo + _CELL_CHUNK]
            width = max(1, max(len(i) for i in lists))
            idx = np.zeros((len(lists), width), dtype=np.int64)
            valid = np.zeros((len(lists), width), dtype=bool)
            for k, i in enumerate(lists):
                idx[k, : len(i)], valid[k, : len(i)] = i, True
            distance = great_circle_km(cells[lo : lo + len(lists)], obs_v[idx])  # (cells, width)
            taper = np.where(valid, gaspari_cohn(distance, localization_km), 0.0)
            t = ensemble_transform(y_anom[idx], innovation[idx], r_inv[idx] * taper, inflation)  # (cells, M, M)
            sl = slice(lo, lo + len(lists))
            out[:, :, sl] = mean[None, :, sl] + np.einsum("mcp,pmk->kcp", anom[:, :, sl], t)
    return out
