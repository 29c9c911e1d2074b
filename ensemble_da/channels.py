"""Channel names, units and normalisation (DESIGN.md §3).

Names follow cBottle: `<VAR><level hPa>` on pressure levels (T850, U500, Z500, Q700) and surface
names (tas, uas, vas, pres_msl, sst). Z is geopotential in m² s⁻². The sampler works in
normalised units z = (x - center_c) / scale_c; observation errors use the same scale_c.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ensemble_da.errors import InputError

__all__ = ["ChannelInfo", "channel_info", "Normalization", "PRESSURE_VARIABLES", "SURFACE_CHANNELS"]

# variable letter -> (long name, units, physical bounds used by QC)
PRESSURE_VARIABLES: dict[str, tuple[str, str, tuple[float, float]]] = {
    "T": ("air temperature", "K", (150.0, 350.0)),
    "U": ("eastward wind", "m s-1", (-150.0, 150.0)),
    "V": ("northward wind", "m s-1", (-150.0, 150.0)),
    "Z": ("geopotential", "m2 s-2", (-10000.0, 400000.0)),
    "Q": ("specific humidity", "kg kg-1", (0.0, 0.05)),
    "R": ("relative humidity", "%", (0.0, 150.0)),
    "W": ("vertical velocity", "Pa s-1", (-20.0, 20.0)),
}

SURFACE_CHANNELS: dict[str, tuple[str, str, tuple[float, float]]] = {
    "tas": ("2 m air temperature", "K", (170.0, 350.0)),
    "uas": ("10 m eastward wind", "m s-1", (-100.0, 100.0)),
    "vas": ("10 m northward wind", "m s-1", (-100.0, 100.0)),
    "pres_msl": ("mean sea-level pressure", "Pa", (85000.0, 110000.0)),
    "ps": ("surface pressure", "Pa", (40000.0, 110000.0)),
    "sst": ("sea-surface temperature", "K", (260.0, 320.0)),
    "tcwv": ("total column water vapour", "kg m-2", (0.0, 100.0)),
}

_LEVEL_NAME = re.compile(r"^([A-Z])(\d{1,4})$")


@dataclass(frozen=True)
class ChannelInfo:
    """What a channel name means: variable letter or surface name, level (hPa or None), units."""

    name: str
    variable: str
    level: int | None
    long_name: str
    units: str
    bounds: tuple[float, float]


def channel_info(name: str) -> ChannelInfo:
    """Parse a channel name (`T850`, `tas`); InputError for names we do not know."""
    if name in SURFACE_CHANNELS:
        long_name, units, bounds = SURFACE_CHANNELS[name]
        return ChannelInfo(name, name, None, long_name, units, bounds)
    m = _LEVEL_NAME.match(name)
    if m and m.group(1) in PRESSURE_VARIABLES:
        long_name, units, bounds = PRESSURE_VARIABLES[m.group(1)]
        level = int(m.group(2))
        return ChannelInfo(name, m.group(1), level, f"{long_name} at {level} hPa", units, bounds)
    known = ", ".join(list(SURFACE_CHANNELS) + [f"{v}<hPa>" for v in PRESSURE_VARIABLES])
    raise InputError(f"unknown channel {name!r} (known: {known})")


@dataclass(frozen=True)
class Normalization:
    """Per-channel affine normalisation z = (x - center) / scale.

    Parameters
    ----------
    channels : tuple of str
        Channel names, in the order of the channel axis.
    center, scale : ndarray
        Per-channel constants in physical units, each with shape (channel,).
    """

    channels: tuple[str, ...]
    center: np.ndarray
    scale: np.ndarray

    def __post_init__(self) -> None:
        center = np.asarray(self.center, dtype=np.float64)
        scale = np.asarray(self.scale, dtype=np.float64)
        if center.shape != (len(self.channels),) or scale.shape != center.shape:
            raise InputError("center and scale need one value per channel")
        if not np.all(scale > 0):
            raise InputError(f"scale must be > 0 for every channel, got {scale.tolist()}")
        object.__setattr__(self, "center", center)
        object.__setattr__(self, "scale", scale)

    @classmethod
    def from_maps(
        cls, channels: Sequence[str], center: Mapping[str, float], scale: Mapping[str, float]
    ) -> "Normalization":
        """Build from channel→value maps; InputError naming any channel that is missing."""
        for which, m in (("mean", center), ("std", scale)):
            missing = [c for c in channels if c not in m]
            if missing:
                raise InputError(f"model.{which} has no value for channel(s) {missing}")
        return cls(tuple(channels), [center[c] for c in channels], [scale[c] for c in channels])

    def index(self, names: Sequence[str]) -> np.ndarray:
        """Channel-axis positions of `names`; InputError listing the known channels otherwise."""
        lookup = {c: i for i, c in enumerate(self.channels)}
        out = []
        for n in names:
            if n not in lookup:
                raise InputError(f"channel {str(n)!r} is not a channel of the prior (model channels: {list(self.channels)})")
            out.append(lookup[n])
        return np.asarray(out, dtype=np.int64)

    def normalize(self, x: np.ndarray, axis: int = -2) -> np.ndarray:
        """Physical → normalised along the channel `axis` (default: (…, channel, cell))."""
        shape = [1] * np.ndim(x)
        shape[axis] = -1
        return (x - self.center.reshape(shape)) / self.scale.reshape(shape)

    def denormalize(self, z: np.ndarray, axis: int = -2) -> np.ndarray:
        """Normalised → physical along the channel `axis`."""
        shape = [1] * np.ndim(z)
        shape[axis] = -1
        return z * self.scale.reshape(shape) + self.center.reshape(shape)
