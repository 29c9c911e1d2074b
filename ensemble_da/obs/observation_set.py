"""`ObservationSet`: point observations for one or more analysis times (DESIGN.md §5).

Each observation is (time, lat, lon, channel, value, sigma) in physical units, plus an
`assimilated` flag (False = held out for verification only). Validated on construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Sequence

import numpy as np
import xarray as xr

from ensemble_da.channels import channel_info
from ensemble_da.errors import InputError
from ensemble_da.grid import check_lonlat

__all__ = ["ObservationSet"]


def _column(name: str, values, n: int, dtype) -> np.ndarray:
    """`values` as a writable (n,) array of `dtype`, scalars broadcast; InputError otherwise."""
    arr = np.asarray(values, dtype=dtype)
    if arr.ndim == 0:
        return np.full(n, arr, dtype=arr.dtype)
    if arr.shape != (n,):
        raise InputError(f"observation {name} has shape {arr.shape}, expected ({n},)")
    return arr.copy()


@dataclass(frozen=True)
class ObservationSet:
    """Point observations, each array with shape (obs,).

    Parameters
    ----------
    time : datetime64[ns]
        Valid time of each observation (UTC).
    lat, lon : float64
        Degrees north / east; lon is stored wrapped to [0, 360).
    channel : str
        Channel name of each observation (`T850`, `tas`, ...).
    value, sigma : float64
        Observed value and error standard deviation, physical units (sigma > 0).
    assimilated : bool
        True: used by guidance; False: held out for verification.
    """

    time: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    channel: np.ndarray
    value: np.ndarray
    sigma: np.ndarray
    assimilated: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        n = max(np.size(getattr(self, name)) for name in ("lat", "lon", "value", "channel"))
        if n == 0:
            raise InputError("observation set is empty")
        assimilated = True if self.assimilated is None else self.assimilated
        lat, lon = check_lonlat(
            _column("lat", self.lat, n, np.float64), _column("lon", self.lon, n, np.float64)
        )
        cols = dict(
            time=_column("time", self.time, n, "datetime64[ns]"),
            lat=lat,
            lon=lon,
            channel=_column("channel", self.channel, n, str),
            value=_column("value", self.value, n, np.float64),
            sigma=_column("sigma", self.sigma, n, np.float64),
            assimilated=_column("assimilated", assimilated, n, bool),
        )
        time = cols["time"]
        if np.isnat(time).any():
            raise InputError("observation time is missing (NaT)")
        bad = ~np.isfinite(cols["value"])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"observation value is not finite ({cols['value'][i]}) for {cols['channel'][i]} "
                f"at lat {lat[i]:g}, lon {lon[i]:g}"
            )
        bad = ~(cols["sigma"] > 0)
        if bad.any():
            raise InputError(f"observation sigma must be > 0, got {cols['sigma'][bad][0]}")
        for name in np.unique(cols["channel"]):
            channel_info(str(name))
        for name, arr in cols.items():
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    def __len__(self) -> int:
        return len(self.value)

    @property
    def channels(self) -> list[str]:
        """Distinct channel names, in first-seen order."""
        return list(dict.fromkeys(self.channel.tolist()))

    def subset(self, mask: np.ndarray) -> "ObservationSet":
        """The observations where `mask` (bool or index array) selects; InputError if none."""
        return ObservationSet(**{f.name: getattr(self, f.name)[mask] for f in fields(self)})

    def assimilated_only(self) -> "ObservationSet":
        return self.subset(self.assimilated)

    def heldout(self) -> "ObservationSet | None":
        """Held-out observations, or None when every observation is assimilated."""
        return None if self.assimilated.all() else self.subset(~self.assimilated)

    def at_time(self, time: np.datetime64) -> "ObservationSet":
        """The observations valid at exactly `time`; InputError if there are none."""
        mask = self.time == np.datetime64(time, "ns")
        if not mask.any():
            raise InputError(f"no observations at analysis time {np.datetime_as_string(np.datetime64(time, 's'))}")
        return self.subset(mask)

    def with_heldout(self, fraction: float, rng: np.random.Generator) -> "ObservationSet":
        """Mark a random `fraction` of the observations as held out (at least one assimilated)."""
        n = len(self)
        n_held = min(int(round(fraction * n)), n - 1)
        held = np.zeros(n, bool)
        held[rng.choice(n, size=n_held, replace=False)] = True
        return replace(self, assimilated=~held)

    @classmethod
    def concat(cls, sets: Sequence["ObservationSet"]) -> "ObservationSet":
        if not sets:
            raise InputError("observation set is empty")
        return cls(**{f.name: np.concatenate([getattr(s, f.name) for s in sets]) for f in fields(cls)})

    def to_dataset(self) -> xr.Dataset:
        """As an xarray Dataset with dim `obs` (the `observations` group of DESIGN.md §7)."""
        return xr.Dataset({f.name: ("obs", np.asarray(getattr(self, f.name))) for f in fields(self)})

    @classmethod
    def from_dataset(cls, ds: xr.Dataset) -> "ObservationSet":
        return cls(**{f.name: ds[f.name].values for f in fields(cls)})
