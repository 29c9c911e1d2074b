"""Observation selection strategies (DESIGN.md §5, the seed's `observation_strategy`).

- `random`: points uniform in area on the sphere (lat = asin(u), u ~ U(-1, 1); lon ~ U(0, 360)).
- `uniform`: evenly spread points, a Fibonacci lattice (the same fixed network at every time).
- `land_only` / `ocean_only`: random points kept only where the land-sea mask says land / sea.

Points are drawn inside a `Domain`, the lat/lon box a regional input covers (its longitudes an arc
that may cross Greenwich or the date line), so `num_obs` points are observable wherever the data
lie; the whole globe (`domain=None`) draws exactly as it always has, point for point.

The land-sea mask comes from the `global-land-mask` package (GLOBE 1 km data, lakes count as
land). Reading it costs ~1 GB and a few seconds, so it is evaluated once at the cell centres of
a reference HEALPix grid (NEST, nside `MASK_NSIDE` = 256, ~23 km cells), cached on disk
(`$ENSEMBLE_DA_CACHE` or `~/.cache/ensemble_da`) and in memory. A point is land when its
reference cell is; the run grid's land fraction per cell is the mean over its reference
sub-cells (NEST children), and its mask is fraction ≥ 0.5. About 0.29 of the globe is land.

For station tables the same strategies pick `num_obs` among the candidate rows instead of
drawing points (see `select_candidates`).
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import healpy as hp
import numpy as np

from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid, check_lonlat

__all__ = [
    "Strategy",
    "Domain",
    "MASK_NSIDE",
    "reference_land_mask",
    "is_land",
    "land_fraction",
    "land_mask",
    "select_locations",
    "select_candidates",
    "fibonacci_points",
]

Strategy = Literal["random", "uniform", "land_only", "ocean_only"]
MASK_NSIDE = 256


@dataclass(frozen=True)
class Domain:
    """The lat/lon box observation points are drawn in (degrees): latitudes [lat_min, lat_max],
    longitudes the arc from `lon_min` (in [0, 360)) east to `lon_max` (≤ lon_min + 360; above 360
    where the box crosses Greenwich, e.g. 340 … 400 for −20 … 40)."""

    lat_min: float
    lat_max: float
    lon_min: float = 0.0
    lon_max: float = 360.0

    def __str__(self) -> str:
        return f"lat {self.lat_min:g}…{self.lat_max:g}, lon {self.lon_min:g}…{self.lon_max:g}"


def _cache_dir() -> Path:
    return Path(os.environ.get("ENSEMBLE_DA_CACHE") or Path.home() / ".cache" / "ensemble_da")


def _compute_reference_mask(nside: int) -> np.ndarray:
    from global_land_mask import globe  # ~1 GB while loaded; only here, once per cache

    lon, lat = hp.pix2ang(nside, np.arange(hp.nside2npix(nside)), nest=True, lonlat=True)
    lon = np.where(lon >= 180.0, lon - 360.0, lon)
    return np.asarray(globe.is_land(lat, lon), dtype=bool)


@functools.lru_cache(maxsize=4)
def reference_land_mask(nside: int = MASK_NSIDE) -> np.ndarray:
    """Land (True) / sea at the centres of the HEALPix NEST grid `nside`, (cell,) bool, cached."""
    path = _cache_dir() / f"land_mask_nest_nside{nside}.npy"
    npix = hp.nside2npix(nside)
    try:
        bits = np.load(path)
        mask = np.unpackbits(bits)[:npix].astype(bool)
        if mask.size == npix:
            mask.setflags(write=False)
            return mask
    except (OSError, ValueError):
        pass
    mask = _compute_reference_mask(nside)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy", delete=False) as tmp:
            np.save(tmp, np.packbits(mask))
        os.chmod(tmp.name, 0o644)
        os.replace(tmp.name, path)
    except OSError:
        pass  # a read-only cache only costs the recomputation next time
    mask.setflags(write=False)
    return mask


def is_land(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Whether each point (degrees) is land, per the cached reference mask; (n,) bool."""
    lat, lon = check_lonlat(np.atleast_1d(lat), np.atleast_1d(lon))
    pix = hp.ang2pix(MASK_NSIDE, lon, lat, nest=True, lonlat=True)
    return reference_land_mask(MASK_NSIDE)[pix]


@functools.lru_cache(maxsize=8)
def _land_fraction(nside: int) -> np.ndarray:
    if nside >= MASK_NSIDE:
        frac = reference_land_mask(nside).astype(np.float64)
    else:
        k2 = (MASK_NSIDE // nside) ** 2  # NEST: children of p are p*k2 ... p*k2 + k2 - 1
        frac = reference_land_mask(MASK_NSIDE).reshape(-1, k2).mean(axis=1)
    frac.setflags(write=False)
    return frac


def land_fraction(grid: HealpixGrid) -> np.ndarray:
    """Fraction of land in each cell of `grid` (NEST), (cell,) float64 in [0, 1]."""
    return _land_fraction(grid.nside)


def land_mask(grid: HealpixGrid) -> np.ndarray:
    """Land cells of `grid` (land fraction ≥ 0.5), (cell,) bool."""
    return land_fraction(grid) >= 0.5


def fibonacci_points(n: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` evenly spread points (Fibonacci lattice): (lat, lon) in degrees, each (n,)."""
    i = np.arange(n, dtype=np.float64)
    lat = np.rad2deg(np.arcsin(1.0 - (2.0 * i + 1.0) / n))
    golden = np.pi * (3.0 - np.sqrt(5.0))
    lon = np.mod(np.rad2deg(golden * i), 360.0)
    return lat, lon


def _sin_lat(domain: Domain) -> tuple[float, float]:
    return float(np.sin(np.deg2rad(domain.lat_min))), float(np.sin(np.deg2rad(domain.lat_max)))


def _in_box(lat: np.ndarray, u: np.ndarray, domain: Domain) -> tuple[np.ndarray, np.ndarray]:
    """Latitudes (already drawn) and arc fractions u in [0, 1) → (lat, lon) in the box, lon in [0, 360)."""
    lon = np.mod(domain.lon_min + (domain.lon_max - domain.lon_min) * u, 360.0)
    return np.clip(lat, domain.lat_min, domain.lat_max), lon


def _random_points(n: int, rng: np.random.Generator, domain: Domain | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`n` points uniform in area, on the globe or in `domain`: (lat, lon) degrees, each (n,)."""
    if domain is None:
        lat = np.rad2deg(np.arcsin(rng.uniform(-1.0, 1.0, n)))
        lon = rng.uniform(0.0, 360.0, n)
        return lat, lon
    s0, s1 = _sin_lat(domain)
    lat = np.rad2deg(np.arcsin(rng.uniform(s0, s1, n)))
    return _in_box(lat, rng.uniform(0.0, 1.0, n), domain)


def _lattice_points(n: int, domain: Domain) -> tuple[np.ndarray, np.ndarray]:
    """`n` evenly spread points in `domain`: the Fibonacci lattice's equal-area rows (sin lat
    evenly spaced) with golden-ratio steps along the longitude arc; (lat, lon) degrees, each (n,)."""
    s0, s1 = _sin_lat(domain)
    i = np.arange(n, dtype=np.float64)
    lat = np.rad2deg(np.arcsin(s1 - (s1 - s0) * (2.0 * i + 1.0) / (2.0 * n)))
    return _in_box(lat, np.mod(i * (3.0 - np.sqrt(5.0)) / 2.0, 1.0), domain)


def select_locations(
    strategy: Strategy, n: int, rng: np.random.Generator, domain: Domain | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Draw `n` observation locations with `strategy` in `domain` (None: the globe): (lat, lon)
    in degrees, lon in [0, 360), each (n,).

    `random`, `land_only` and `ocean_only` consume `rng`; `uniform` is deterministic. InputError
    when `domain` holds too little land (sea) for `land_only` (`ocean_only`).
    """
    if strategy == "uniform":
        return fibonacci_points(n) if domain is None else _lattice_points(n, domain)
    if strategy == "random":
        return _random_points(n, rng, domain)
    if strategy not in ("land_only", "ocean_only"):
        raise ValueError(f"unknown observation strategy {strategy!r}")
    want_land = strategy == "land_only"
    lats, lons, have, drawn = [], [], 0, 0
    while have < n:
        if drawn > 1000 * max(n, 64):  # < 0.1 % of the box is land (sea): the box, not the luck
            where = "the globe" if domain is None else f"the input's domain ({domain})"
            raise InputError(f"observations.strategy {strategy}: {where} holds too little {'land' if want_land else 'sea'} "
                             f"to place {n} observations")
        lat, lon = _random_points(max(64, 4 * (n - have)), rng, domain)
        drawn += lat.size
        keep = is_land(lat, lon) == want_land
        lats.append(lat[keep])
        lons.append(lon[keep])
        have += int(keep.sum())
    return np.concatenate(lats)[:n], np.concatenate(lons)[:n]


def select_candidates(
    strategy: Strategy, lat: np.ndarray, lon: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices (sorted) of at most `n` candidate points (e.g. station reports) by `strategy`.

    `land_only`/`ocean_only` first keep the land/sea candidates. If more than `n` remain,
    `random` (and the masks) pick `n` at random; `uniform` thins: one candidate per HEALPix cell
    at the coarsest nside with at least `n` cells, visited in random order, topped up at random.
    """
    idx = np.arange(len(lat))
    if strategy in ("land_only", "ocean_only") and len(idx):
        idx = idx[is_land(lat, lon) == (strategy == "land_only")]
    if len(idx) <= n:
        return idx
    if strategy != "uniform":
        return np.sort(rng.choice(idx, size=n, replace=False))
    nside = 1
    while 12 * nside * nside < n:
        nside *= 2
    order = rng.permutation(idx)
    la, lo = check_lonlat(lat[order], lon[order])
    cells = hp.ang2pix(nside, lo, la, nest=True, lonlat=True)
    _, first = np.unique(cells, return_index=True)
    chosen = order[np.sort(first)][:n]
    if len(chosen) < n:
        rest = np.setdiff1d(idx, chosen)
        chosen = np.concatenate([chosen, rng.choice(rest, size=n - len(chosen), replace=False)])
    return np.sort(chosen)
