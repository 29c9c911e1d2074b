"""Run figures (DESIGN.md §7): Mollweide maps of ensemble mean and spread, and rank histograms.

Rendered with healpy (`nest=True`: fields are NEST-ordered) on matplotlib's Agg backend, so no
display is needed. Every function writes one PNG and returns its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import healpy as hp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_mean_spread", "plot_rank_histogram"]


def _mollweide(values: np.ndarray, xsize: int = 480) -> np.ndarray:
    """A NEST-ordered HEALPix field (cell,) projected on a Mollweide image (NaN off the sphere)."""
    nside = hp.npix2nside(values.shape[-1])
    proj = hp.projector.MollweideProj(xsize=xsize)
    image = proj.projmap(values, lambda x, y, z: hp.vec2pix(nside, x, y, z, nest=True))
    return np.where(np.isinf(image), np.nan, image)


def plot_mean_spread(
    path: Path, mean: np.ndarray, spread: np.ndarray, channels: Sequence[str], title: str = ""
) -> Path:
    """Maps of ensemble mean and spread, one row per channel.

    Parameters
    ----------
    mean, spread : float (channel, cell), NEST order, physical units.
    channels : names along the channel axis.
    """
    nc = len(channels)
    fig, axes = plt.subplots(nc, 2, figsize=(10, 2.9 * nc), squeeze=False, layout="constrained")
    for c, name in enumerate(channels):
        for k, (field, label, cmap) in enumerate(((mean[c], "mean", "RdBu_r"), (spread[c], "spread", "viridis"))):
            ax = axes[c, k]
            img = ax.imshow(_mollweide(np.asarray(field, dtype=np.float64)), origin="lower", cmap=cmap,
                            vmin=0.0 if label == "spread" else None, interpolation="nearest")
            ax.set_title(f"{name} {label}")
            ax.set_axis_off()
            fig.colorbar(img, ax=ax, orientation="horizontal", fraction=0.06, pad=0.04)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)


def plot_rank_histogram(path: Path, counts: np.ndarray, channels: Sequence[str], title: str = "") -> Path:
    """Rank histogram of the truth among the members, one panel per channel.

    counts : int (channel, member + 1); a flat histogram means a calibrated ensemble.
    """
    nc = len(channels)
    fig, axes = plt.subplots(1, nc, figsize=(3.5 * nc, 3), squeeze=False)
    for c, name in enumerate(channels):
        ax = axes[0, c]
        freq = counts[c] / max(1, counts[c].sum())
        ax.bar(np.arange(len(freq)), freq, width=1.0, color="tab:blue", edgecolor="white")
        ax.axhline(1.0 / len(freq), color="k", lw=1, ls="--")
        ax.set_title(name)
        ax.set_xlabel("rank of truth")
    axes[0, 0].set_ylabel("frequency")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)
