"""Column operators (DESIGN.md §5): a weighted sum over channels at one location.

    y = Σ_c w_c · bilinear(x_c)(lat, lon) ,   physical units,

a layer mean (weights 1/n over n levels), a thickness-like difference, or a satellite-like
weighting function over pressure levels. Linear and local in space, non-local across channels:
each row has 4 · (number of weighted channels) entries. The observation's own `channel` label is
not read (it only groups metrics); the weights say what is observed.

Normalised units (`rows`): with the prior's channel centres c_c and scales s_c, a = Σ_c w_c c_c
(up to the interpolation weights' round-off) and the observation unit is b = Σ_c |w_c| s_c, so a
single channel with weight 1 is the bilinear point operator (to round-off).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ensemble_da.channels import Normalization
from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators.rows import LinearRows

__all__ = ["column_rows"]


def column_rows(obs: ObservationSet, grid: HealpixGrid, normalization: Normalization,
                weights: Mapping[str, float]) -> LinearRows:
    """Rows of y = Σ_c weights[c] · bilinear(x_c) at each observation's (lat, lon).

    InputError for a weighted channel the prior does not have, or weights that are all zero.
    """
    names = list(weights)
    missing = [c for c in names if c not in normalization.channels]
    if missing:
        raise InputError(f"observations.operator.weights: channel(s) {missing} are not channels of the prior "
                         f"{list(normalization.channels)}")
    w = np.array([float(weights[c]) for c in names])
    if not np.any(w != 0) or not np.all(np.isfinite(w)):
        raise InputError(f"observations.operator.weights must be finite and not all zero, got {dict(weights)}")
    ch = normalization.index(names)
    cells, interp = grid.interp_weights(obs.lat, obs.lon)  # (obs, 4)
    n = len(obs.lat)
    flat = (ch[None, :, None] * grid.npix + cells[:, None, :]).reshape(n, -1)
    physical = (w[None, :, None] * interp[:, None, :]).reshape(n, -1)
    unit = float(np.sum(np.abs(w) * normalization.scale[ch]))
    return LinearRows.from_physical(flat, physical, normalization.center, normalization.scale, grid.npix,
                                    np.full(n, unit))
