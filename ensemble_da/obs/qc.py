"""Quality control of point observations (DESIGN.md §5, §7: counts go to summary.json/MLflow).

Applied to every source, in this order, to a table with columns time, lat, lon, channel, value,
sigma (physical units):
1. `nonfinite`: value, lat or lon NaN/±inf (e.g. SST over land, a missing station report).
2. `out_of_bounds`: value outside the channel's physical bounds (`channel_info(c).bounds`,
   e.g. T outside 150–350 K).
3. repeated reports (same time, lat and lon to 1e-5°, channel) by `duplicate_policy`:
   - `merge` (default): one observation with the mean value and the largest sigma of the
     group (a repeated report is not independent information, so the error is not reduced);
   - `first`: keep the first report in file order;
   - `reject`: drop every report of the group (conflicting reports are not trusted).
   The count `duplicate_dropped` is the number of rows removed.
Points outside a regional file's grid are counted as `outside_domain` by the reader, station
reports of variables that were not asked for as `other_variable`.
Hard errors (|lat| > 90, sigma ≤ 0) are raised by the readers, not counted here.

The first two checks are one implementation for the CLI and the Python API: `observation_problems`
finds the rows that fail them and `problem_message` says what is wrong with one row. The run's
QC removes those rows and says so in one `note:` line per reason (the `ensemble_da.obs` logger)
that quotes the first row's message; the API (`ObservationSet`, `ObservationOperator.at_cells`,
`sample_posterior`) raises `InputError` with that same message (`check_observations`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from typing import ClassVar, Literal

import numpy as np
import pandas as pd

from ensemble_da.channels import channel_info
from ensemble_da.errors import InputError

__all__ = ["QCCounts", "DuplicatePolicy", "quality_control", "observation_problems", "problem_message",
           "check_observations", "describe_observation"]

_LOG = logging.getLogger("ensemble_da.obs")


def describe_observation(channel: str, value: float, lat: float | None = None, lon: float | None = None,
                         cell: int | None = None) -> str:
    """`T850 = 470 K at lat 10, lon 20` (or `at cell 12`): one observation, for messages."""
    try:
        units = f" {channel_info(str(channel)).units}"
    except InputError:
        units = ""
    where = f" at lat {lat:g}, lon {lon:g}" if lat is not None else (f" at cell {cell}" if cell is not None else "")
    return f"{channel} = {value:g}{units}{where}"


def _bounds(channel: str, strict: bool) -> tuple[float, float] | None:
    if strict:
        return channel_info(channel).bounds
    try:
        return channel_info(channel).bounds
    except InputError:  # a channel we have no bounds for (e.g. a model's own `rlut`): nothing to check
        return None


def observation_problems(value, lat, lon, channel, strict: bool = True) -> dict[str, np.ndarray]:
    """The QC checks 1–2 of the module docstring: {"nonfinite": bad rows, "out_of_bounds": bad rows}
    as boolean masks over the observations (a non-finite row is not also out of bounds). `lat`,
    `lon` may be None (observations at cells). `strict`: unknown channels are InputErrors (else
    they have no bounds)."""
    value = np.asarray(value, dtype=np.float64)
    channel = np.broadcast_to(np.asarray(channel, dtype=str), value.shape)
    finite = np.isfinite(value)
    for coord in (lat, lon):
        if coord is not None:
            finite &= np.isfinite(np.asarray(coord, dtype=np.float64))
    outside = np.zeros(value.shape, bool)
    for ch in pd.unique(channel[finite]):
        bounds = _bounds(str(ch), strict)
        if bounds is not None:
            sel = finite & (channel == ch)
            outside[sel] = ~((value[sel] >= bounds[0]) & (value[sel] <= bounds[1]))
    return {"nonfinite": ~finite, "out_of_bounds": outside}


def problem_message(reason: str, channel: str, value: float, lat: float | None = None, lon: float | None = None,
                    cell: int | None = None) -> str:
    """What is wrong with one observation that fails QC check `reason` (the CLI's note quotes it,
    the API raises it)."""
    if reason == "nonfinite":
        if not np.isfinite(value):
            where = f" at lat {lat:g}, lon {lon:g}" if lat is not None else (f" at cell {cell}" if cell is not None else "")
            return f"observation value is not finite ({value}) for {channel}{where}"
        return f"observation location is not finite (lat {lat:g}, lon {lon:g}) for {describe_observation(channel, value)}"
    lo, hi = channel_info(str(channel)).bounds
    units = channel_info(str(channel)).units
    return (f"observation {describe_observation(channel, value, lat, lon, cell)} is outside the physical bounds "
            f"of {channel} ({lo:g} to {hi:g} {units})")


def check_observations(value, lat, lon, channel, cell=None, strict: bool = True) -> None:
    """InputError with `problem_message` for the first observation that fails QC checks 1–2."""
    problems = observation_problems(value, lat, lon, channel, strict)
    for reason, bad in problems.items():
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            at = lambda a: None if a is None else float(np.asarray(a, dtype=np.float64).reshape(-1)[i])  # noqa: E731
            c = None if cell is None else int(np.asarray(cell).reshape(-1)[i])
            ch = str(np.broadcast_to(np.asarray(channel, dtype=str), np.shape(value))[i])
            raise InputError(problem_message(reason, ch, at(value), at(lat), at(lon), c))

DuplicatePolicy = Literal["merge", "first", "reject"]


@dataclass
class QCCounts:
    """Observation counts through QC; add two with `+` to total over times or sources.

    `read` rows came in; `other_variable`, `outside_domain`, `nonfinite`, `out_of_bounds`,
    `duplicate_dropped` were removed; `not_selected` were valid but left out by the strategy / `num_obs`; `kept`
    were passed on (assimilated + held out).
    """

    # the reasons that remove observations the user gave (not rows of other variables, nor points
    # the strategy left out): a run that loses any says so
    REMOVED: ClassVar[tuple[str, ...]] = ("outside_domain", "nonfinite", "out_of_bounds", "duplicate_dropped")

    read: int = 0
    other_variable: int = 0
    outside_domain: int = 0
    nonfinite: int = 0
    out_of_bounds: int = 0
    duplicate_dropped: int = 0
    not_selected: int = 0
    kept: int = 0

    def __add__(self, other: "QCCounts") -> "QCCounts":
        return QCCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def metrics(self, prefix: str = "qc/") -> dict[str, float]:
        """Flat metric names for MLflow / summary.json, e.g. `qc/nonfinite`."""
        return {f"{prefix}{k}": float(v) for k, v in asdict(self).items()}


def quality_control(
    table: pd.DataFrame, policy: DuplicatePolicy = "merge", counts: QCCounts | None = None
) -> tuple[pd.DataFrame, QCCounts]:
    """Drop non-finite, out-of-bounds and repeated observations from `table`.

    Parameters
    ----------
    table : DataFrame
        Columns time, lat, lon, channel, value, sigma (others are carried along).
    policy : {"merge", "first", "reject"}
        What to do with repeated reports (module docstring).
    counts : QCCounts, optional
        Counts to continue (e.g. with `read` and `outside_domain` already set by a reader);
        `read` is set to len(table) when it is 0.

    Returns
    -------
    The cleaned table (index reset) and the updated counts (`kept` = len(cleaned)).
    """
    counts = QCCounts() if counts is None else QCCounts(**counts.as_dict())
    if counts.read == 0:
        counts.read = len(table)
    problems = observation_problems(table["value"].to_numpy(np.float64), table["lat"].to_numpy(np.float64),
                                    table["lon"].to_numpy(np.float64), table["channel"].to_numpy())
    keep = np.ones(len(table), bool)
    for reason, bad in problems.items():
        n = int(bad.sum())
        setattr(counts, reason, getattr(counts, reason) + n)
        if n:
            row = table.iloc[int(np.flatnonzero(bad)[0])]
            message = problem_message(reason, str(row["channel"]), float(row["value"]), float(row["lat"]), float(row["lon"]))
            _LOG.info("quality control removed %d observation%s (%s); the first: %s", n, "s" * (n != 1), reason, message)
        keep &= ~bad
    table = table[keep]

    before = len(table)
    table = _resolve_repeats(table, policy)
    counts.duplicate_dropped += before - len(table)
    counts.kept = len(table)
    return table.reset_index(drop=True), counts


def _resolve_repeats(table: pd.DataFrame, policy: DuplicatePolicy) -> pd.DataFrame:
    if table.empty:
        return table
    key = pd.DataFrame(
        {
            "time": table["time"].to_numpy(),
            "lat": np.round(table["lat"].to_numpy(np.float64), 5),
            "lon": np.round(np.mod(table["lon"].to_numpy(np.float64), 360.0), 5) % 360.0,
            "channel": table["channel"].to_numpy(),
        },
        index=table.index,
    )
    group = key.groupby(list(key.columns), sort=False).ngroup().to_numpy()
    sizes = np.bincount(group)
    if (sizes == 1).all():
        return table
    if policy == "first":
        return table[~key.duplicated(keep="first").to_numpy()]
    if policy == "reject":
        return table[sizes[group] == 1]
    if policy != "merge":
        raise ValueError(f"unknown duplicate_policy {policy!r} (merge | first | reject)")
    first = ~key.duplicated(keep="first").to_numpy()
    out = table[first].copy()
    g = pd.Series(group, index=table.index)
    mean_value = table["value"].groupby(g).mean()
    max_sigma = table["sigma"].groupby(g).max()
    out["value"] = mean_value.loc[group[first]].to_numpy()
    out["sigma"] = max_sigma.loc[group[first]].to_numpy()
    return out
