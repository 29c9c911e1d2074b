"""The rows of a linear observation operator and how its observations are normalised (DESIGN.md §3, §5).

A linear operator reads the physical state x (channel, cell) as y = W x (W sparse, physical units).
The sampler works in z = (x − c_ch) / s_ch per channel, so each observation gets an affine
normalisation of its own, y_n = (y − a) / b with

    a = W c   (the observation of the all-centres state),   b > 0 (its unit),

and then y_n = H z exactly, with H = W diag(s) / b row by row. The error std becomes sigma / b.
For a point row (one channel, weights summing to 1) a = c_ch, b = s_ch and H = W: the operator
commutes with the normalisation, so the same weights read physical and normalised fields.
A column mixes channels with different s_ch, so it keeps W (`physical_weights`) for physical fields.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LinearRows"]


@dataclass(frozen=True)
class LinearRows:
    """What a linear kind contributes: its rows and its observations' normalisation.

    flat : int64 (obs, k), flattened state index `channel * npix + cell` of each entry.
    weights : float64 (obs, k), H's weights in normalised units.
    physical_weights : float64 (obs, k) or None, W's weights (physical units); None when the
        rows commute with the normalisation (point rows: `weights` serve for both).
    center, scale : float64 (obs,), a and b above: y_n = (y − center) / scale, sigma_n = sigma / scale.
    """

    flat: np.ndarray
    weights: np.ndarray
    physical_weights: np.ndarray | None
    center: np.ndarray
    scale: np.ndarray

    @classmethod
    def from_physical(cls, flat: np.ndarray, physical_weights: np.ndarray, channel_center: np.ndarray,
                      channel_scale: np.ndarray, npix: int, scale: np.ndarray) -> "LinearRows":
        """Rows from physical weights W (obs, k) and the prior's per-channel centre/scale (channel,),
        with observation units `scale` (obs,): a = W c, H = W diag(s) / b."""
        ch = flat // npix
        return cls(flat, physical_weights * channel_scale[ch] / scale[:, None], physical_weights,
                   (physical_weights * channel_center[ch]).sum(-1), scale)
