"""Run figures (DESIGN.md §7): Mollweide maps, observation residuals, rank histograms, spread-skill.

Rendered with healpy's Mollweide projector (`nest=True`: fields are NEST-ordered) in geographic
orientation (east to the right, north up: `flipconv="geo"`; healpy's default is the astronomical
one, east to the left) on matplotlib's Agg backend, so no display is needed. Every function
writes one PNG and returns its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import healpy as hp  # noqa: E402
from matplotlib import rcParams  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_maps", "plot_mean_spread", "plot_obs_residuals", "plot_rank_histogram", "plot_spread_skill"]

# Colour maps by kind of field: full fields, spreads (≥ 0), and signed differences (centred on 0).
_FIELD, _SPREAD, _DIFF = "RdYlBu_r", "viridis", "RdBu_r"
_DIFFERENCES = ("increment", "error")


def _save(fig, path: Path, title: str = "", tight: bool = False) -> Path:
    """Write `fig` as a PNG at `path` (80 dpi) with an optional overall title, and free it."""
    if title:
        fig.suptitle(title)
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=80)
    return Path(path)

def _projector(xsize: int = 480) -> hp.projector.MollweideProj:
    return hp.projector.MollweideProj(xsize=xsize, flipconv="geo")


def _mollweide(values: np.ndarray, proj: hp.projector.MollweideProj) -> np.ndarray:
    """A NEST-ordered HEALPix field (cell,) projected on a Mollweide image (NaN off the sphere)."""
    nside = hp.npix2nside(values.shape[-1])
    image = proj.projmap(np.asarray(values, dtype=np.float64), lambda x, y, z: hp.vec2pix(nside, x, y, z, nest=True))
    return np.where(np.isinf(image), np.nan, image)


def _show(ax, field: np.ndarray, proj, **kw):
    img = ax.imshow(_mollweide(field, proj), origin="lower", extent=proj.get_extent(), interpolation="nearest", **kw)
    ax.set_axis_off()
    return img


def plot_maps(path: Path, fields: Mapping[str, np.ndarray], channels: Sequence[str], title: str = "") -> Path:
    """Maps of several fields side by side, one row per channel.

    Parameters
    ----------
    fields : label → float (channel, cell), NEST order, physical units; e.g. "mean", "spread",
        "increment", "truth", "error". "mean" and "truth" share a colour range per channel;
        "spread" starts at 0; "increment" and "error" are centred on 0.
    channels : names along the channel axis.
    """
    labels, nc = list(fields), len(channels)
    proj = _projector()
    fig = Figure(figsize=(4.2 * len(labels), 2.6 * nc), layout="constrained")
    axes = fig.subplots(nc, len(labels), squeeze=False)
    for c, name in enumerate(channels):
        full = [np.asarray(fields[k][c], dtype=np.float64) for k in labels if k in ("mean", "truth")]
        lo, hi = (min(f.min() for f in full), max(f.max() for f in full)) if full else (None, None)
        for k, label in enumerate(labels):
            field = np.asarray(fields[label][c], dtype=np.float64)
            if label == "spread":
                kw = dict(cmap=_SPREAD, vmin=0.0)
            elif label in _DIFFERENCES:
                r = float(np.nanmax(np.abs(field))) or 1.0
                kw = dict(cmap=_DIFF, vmin=-r, vmax=r)
            else:
                kw = dict(cmap=_FIELD, vmin=lo, vmax=hi)
            img = _show(axes[c, k], field, proj, **kw)
            axes[c, k].set_title(f"{name} {label}")
            fig.colorbar(img, ax=axes[c, k], orientation="horizontal", fraction=0.06, pad=0.04)
    return _save(fig, path, title)


def plot_mean_spread(
    path: Path, mean: np.ndarray, spread: np.ndarray, channels: Sequence[str], title: str = ""
) -> Path:
    """Maps of ensemble mean and spread (each float (channel, cell)), one row per channel."""
    return plot_maps(path, {"mean": mean, "spread": spread}, channels, title)


def plot_obs_residuals(
    path: Path,
    mean: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    obs_channel: np.ndarray,
    residual: np.ndarray,
    assimilated: np.ndarray,
    channels: Sequence[str],
    title: str = "",
) -> Path:
    """Observation locations coloured by O−A over the analysis mean (grey), one panel per channel.

    mean : float (channel, cell); lat, lon, residual (O − analysis mean), obs_channel, assimilated : (obs,).
    Circles are assimilated observations, triangles held-out ones; the colour scale is centred on 0
    and spans the 95th percentile of |O−A| of the channel (larger values saturate).
    """
    nc = len(channels)
    proj = _projector()
    fig = Figure(figsize=(5.0 * nc, 3.8), layout="constrained")
    axes = fig.subplots(1, nc, squeeze=False)
    for c, name in enumerate(channels):
        ax = axes[0, c]
        mine = np.abs(residual[obs_channel == name])
        r = float(np.percentile(mine, 95)) if mine.size and mine.max() > 0 else 1.0
        _show(ax, mean[c], proj, cmap="Greys", alpha=0.45)
        sc = None
        for sel, marker in ((assimilated, "o"), (~assimilated, "^")):
            sel = sel & (obs_channel == name)
            x, y = proj.ang2xy(lon[sel], lat[sel], lonlat=True)
            sc = ax.scatter(x, y, c=residual[sel], cmap=_DIFF, vmin=-r, vmax=r, s=22, marker=marker,
                            edgecolors="k", linewidths=0.3)
        ax.set_title(f"{name} O−A (○ assimilated, △ held out)")
        fig.colorbar(sc, ax=ax, orientation="horizontal", fraction=0.06, pad=0.04)
    return _save(fig, path, title)


def plot_rank_histogram(path: Path, counts: np.ndarray, channels: Sequence[str], title: str = "",
                        xlabel: str = "rank of truth") -> Path:
    """Rank histogram, one panel per channel.

    counts : int (channel, member + 1); a flat histogram means a calibrated ensemble.
    """
    nc = len(channels)
    fig = Figure(figsize=(3.5 * nc, 3))
    axes = fig.subplots(1, nc, squeeze=False)
    for c, name in enumerate(channels):
        ax = axes[0, c]
        freq = counts[c] / max(1, counts[c].sum())
        ax.bar(np.arange(len(freq)), freq, width=1.0, color="tab:blue", edgecolor="white")
        ax.axhline(1.0 / len(freq), color="k", lw=1, ls="--")
        ax.set_title(f"{name} (n={int(counts[c].sum())})")
        ax.set_xlabel(xlabel)
    axes[0, 0].set_ylabel("frequency")
    return _save(fig, path, title, tight=True)


def plot_spread_skill(
    path: Path, curves: Mapping[str, tuple[np.ndarray, np.ndarray]], ratios: Mapping[str, float], title: str = ""
) -> Path:
    """Spread reliability, one panel per channel: rms error of the ensemble mean against rms spread in
    bins of spread (a reliable ensemble follows the diagonal); the panel title gives the
    channel's spread-skill ratio.

    curves : channel → (rms spread per bin, rms error per bin); ratios : channel → spread-skill ratio.
    """
    names = list(curves)
    fig = Figure(figsize=(3.5 * len(names), 3.3))
    axes = fig.subplots(1, len(names), squeeze=False)
    for k, name in enumerate(names):
        ax = axes[0, k]
        s, e = curves[name]
        top = float(max(np.max(s), np.max(e))) * 1.05
        ax.plot([0, top], [0, top], color="k", lw=1, ls="--")
        ax.plot(s, e, "o-", color="tab:red")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_title(f"{name}: SSR {ratios.get(name, float('nan')):.2f}")
        ax.set_xlabel("rms spread")
    axes[0, 0].set_ylabel("rms error")
    return _save(fig, path, title, tight=True)


def plot_time_series(path: Path, times: np.ndarray, panels: Mapping[str, Mapping[str, np.ndarray]],
                     title: str = "") -> Path:
    """Metrics against analysis time, one panel per metric group (a cycled run or a reanalysis).

    panels : panel title → {line label → values (time,)}; a label ending in "(expected)",
    "(spread)" or "(background)" is drawn dashed in the colour of the line it belongs to (same channel name first).
    """
    names = list(panels)
    fig = Figure(figsize=(4.2 * len(names), 3.2))
    axes = fig.subplots(1, len(names), squeeze=False)
    colours: dict[str, str] = {}
    cycle = rcParams["axes.prop_cycle"].by_key()["color"]
    for k, name in enumerate(names):
        ax = axes[0, k]
        for label, values in panels[name].items():
            key = label.split(" ")[0]
            colour = colours.setdefault(key, cycle[len(colours) % len(cycle)])
            dashed = label.endswith(("(expected)", "(spread)", "(background)"))
            ax.plot(times, values, ls="--" if dashed else "-", marker="" if len(times) > 40 else ".",
                    color=colour, label=label)
        ax.set_title(name)
        ax.tick_params(axis="x", labelrotation=30)
        ax.legend(fontsize=7)
    return _save(fig, path, title, tight=True)
