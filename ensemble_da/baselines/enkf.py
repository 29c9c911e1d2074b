"""The stochastic ensemble Kalman filter with perturbed observations (Burgers, van Leeuwen &
Evensen 1998, Mon. Wea. Rev. 126; Houtekamer & Mitchell 1998 for the Schur-product localisation).

Background members x_m with anomalies X (state, M) inflated by √ρ, Y = H X, perturbed
observations y_m = y + ε_m, ε_m ~ N(0, R):

    x_a,m = x_m + K (y_m − H x_m) ,   K = (ρ_xo ∘ X Yᵀ/(M−1)) (ρ_oo ∘ Y Yᵀ/(M−1) + R)⁻¹

with ρ the Gaspari–Cohn taper of great-circle distances (cell–observation, observation–observation;
every channel at a cell shares its cell's taper), or no taper when `localization_km` is None.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from ensemble_da.baselines.localization import gaspari_cohn, great_circle_km, unit_vectors
from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.operators import ObservationOperator

__all__ = ["stochastic_enkf"]


def stochastic_enkf(
    background: np.ndarray,
    op: ObservationOperator,
    rng: np.random.Generator,
    obs_lat: np.ndarray | None = None,
    obs_lon: np.ndarray | None = None,
    grid: HealpixGrid | None = None,
    localization_km: float | None = None,
    inflation: float = 1.0,
) -> np.ndarray:
    """Stochastic EnKF analysis ensemble.

    Parameters
    ----------
    background : ndarray, shape (M, channel, cell)
        Background members in the units of `op` (normalised), NEST cells.
    op : ObservationOperator
        H, y and sigma of the assimilated observations.
    rng : numpy Generator
        The stream of the observation perturbations.
    obs_lat, obs_lon, grid :
        Observation locations (degrees) and the grid; needed only with `localization_km`.
    localization_km : float or None
        Gaspari–Cohn half-width c (km); None: no localisation.
    inflation : float
        Multiplicative inflation ρ ≥ 1 of the background covariance.

    Returns
    -------
    ndarray, shape (M, channel, cell), float64
    """
    m = background.shape[0]
    xb = np.asarray(background, np.float64)
    mean = xb.mean(0)
    xb = mean + np.sqrt(inflation) * (xb - mean)
    anom = (xb - mean).reshape(m, -1)  # (M, state)
    hx = op.apply_numpy(xb)
    y_anom = hx - hx.mean(0)  # (M, obs)
    perturbed = op.y + rng.standard_normal(hx.shape) * op.sigma
    innovation = perturbed - hx  # (M, obs)
    hpht = y_anom.T @ y_anom / (m - 1)
    if localization_km is None:
        s = hpht + np.diag(op.sigma**2)
        v = scipy.linalg.solve(s, innovation.T, assume_a="pos")  # (obs, M)
        return xb + ((anom.T @ (y_anom @ v)) / (m - 1)).T.reshape(xb.shape)
    if obs_lat is None or obs_lon is None or grid is None:
        raise ValueError("localization_km needs obs_lat, obs_lon and grid")
    obs_v = unit_vectors(np.asarray(obs_lat), np.asarray(obs_lon))
    rho_oo = gaspari_cohn(great_circle_km(obs_v, obs_v), localization_km)
    rho_xo = gaspari_cohn(great_circle_km(grid.unit_vectors, obs_v), localization_km)  # (cell, obs)
    s = rho_oo * hpht + np.diag(op.sigma**2)
    v = scipy.linalg.solve(s, innovation.T, assume_a="pos")  # (obs, M)
    pht = (anom.T @ y_anom).reshape(*xb.shape[1:], -1) / (m - 1) * rho_xo  # (channel, cell, obs)
    return xb + np.einsum("cpo,om->mcp", pht, v)
