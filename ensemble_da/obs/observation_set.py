"""`ObservationSet`: point observations for one or more analysis times (DESIGN.md §5).

Each observation is (time, lat, lon, channel, value, sigma) in physical units, plus an
`assimilated` flag (False = held out for verification only). Validated on construction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields, replace
from typing import Sequence

import numpy as np
import xarray as xr

from ensemble_da.channels import channel_info
from ensemble_da.errors import InputError
from ensemble_da.grid import check_lonlat
from ensemble_da.obs.qc import check_observations, observation_problems, problem_message

__all__ = ["ObservationSet"]

_LOG = logging.getLogger("ensemble_da.obs")
# Field names stored under another name in the run's `observations` group.
_STORED = {"set_name": "set"}


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
    set_name : str
        The observation set each observation belongs to (`observations[].name`; default "obs").
    """

    time: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    channel: np.ndarray
    value: np.ndarray
    sigma: np.ndarray
    assimilated: np.ndarray = field(default=None)  # type: ignore[assignment]
    set_name: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        n = max(np.size(getattr(self, name)) for name in ("lat", "lon", "value", "channel"))
        if n == 0:
            raise InputError("observation set is empty")
        assimilated = True if self.assimilated is None else self.assimilated
        raw_lat, raw_lon = _column("lat", self.lat, n, np.float64), _column("lon", self.lon, n, np.float64)
        channel = _column("channel", self.channel, n, str)
        value = _column("value", self.value, n, np.float64)
        # the CLI's QC checks of non-finite values and locations, with its messages (obs/qc.py);
        # physical bounds are checked where values are known to be observations (`check_bounds`)
        problems = observation_problems(value, raw_lat, raw_lon, channel, strict=False)
        if problems["nonfinite"].any():
            i = int(np.flatnonzero(problems["nonfinite"])[0])
            raise InputError(problem_message("nonfinite", channel[i], value[i], raw_lat[i], raw_lon[i]))
        lat, lon = check_lonlat(raw_lat, raw_lon)
        wrapped = (raw_lon < -180.0) | (raw_lon >= 360.0)
        if wrapped.any():
            i = int(np.flatnonzero(wrapped)[0])
            _LOG.warning("%d observation longitude%s outside [-180, 360) wrapped to [0, 360), e.g. %g -> %g (%s at lat %g)",
                         int(wrapped.sum()), "s" * (int(wrapped.sum()) != 1), raw_lon[i], lon[i], channel[i], lat[i])
        cols = dict(
            time=_column("time", self.time, n, "datetime64[ns]"),
            lat=lat,
            lon=lon,
            channel=channel,
            value=value,
            sigma=_column("sigma", self.sigma, n, np.float64),
            assimilated=_column("assimilated", assimilated, n, bool),
            set_name=_column("set_name", "obs" if self.set_name is None else self.set_name, n, str),
        )
        time = cols["time"]
        if np.isnat(time).any():
            raise InputError("observation time is missing (NaT)")
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

    def check_bounds(self) -> "ObservationSet":
        """InputError (the CLI's QC message) for the first value outside its channel's physical
        bounds (`channel_info(c).bounds`, e.g. T outside 150–350 K); returns self."""
        check_observations(self.value, self.lat, self.lon, self.channel)
        return self

    @property
    def set_names(self) -> list[str]:
        """Distinct observation-set names, in first-seen order."""
        return list(dict.fromkeys(self.set_name.tolist()))

    def set_rows(self, names: Sequence[str]) -> list[tuple[int, np.ndarray]]:
        """(index into `names`, row indices) of each named set with observations here, in the
        order of `names`. Observations without a set name ("obs") belong to a single named set.
        InputError for a set `names` lacks, or sets not contiguous in the order of `names`."""
        names = list(names)
        unknown = sorted(set(self.set_names) - set(names))
        if unknown and len(names) == 1 and self.set_names == ["obs"]:
            return [(0, np.arange(len(self)))]  # built without a set name (the API, tests)
        if unknown:
            raise InputError(f"observations of set(s) {unknown}, which the config does not name (sets: {names})")
        out = [(i, np.flatnonzero(self.set_name == n)) for i, n in enumerate(names)]
        out = [(i, rows) for i, rows in out if len(rows)]
        if not np.array_equal(np.concatenate([r for _, r in out]), np.arange(len(self))):
            raise InputError("observation sets must be contiguous and in config order")
        return out

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
        """As an xarray Dataset with dim `obs` (the `observations` group of DESIGN.md §7); the
        set name is the variable `set`."""
        return xr.Dataset({_STORED.get(f.name, f.name): ("obs", np.asarray(getattr(self, f.name))) for f in fields(self)})

    @classmethod
    def from_dataset(cls, ds: xr.Dataset) -> "ObservationSet":
        """The inverse of `to_dataset` (a dataset without `set`, from an older run: set "obs")."""
        return cls(**{f.name: ds[_STORED.get(f.name, f.name)].values for f in fields(cls)
                      if _STORED.get(f.name, f.name) in ds})
