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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar, Literal

import numpy as np
import pandas as pd

from ensemble_da.channels import channel_info

__all__ = ["QCCounts", "DuplicatePolicy", "quality_control"]

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
    finite = np.isfinite(table["value"].to_numpy(np.float64))
    finite &= np.isfinite(table["lat"].to_numpy(np.float64)) & np.isfinite(table["lon"].to_numpy(np.float64))
    counts.nonfinite += int((~finite).sum())
    table = table[finite]

    inside = np.ones(len(table), bool)
    value = table["value"].to_numpy(np.float64)
    channel = table["channel"].to_numpy()
    for ch in pd.unique(channel):
        lo, hi = channel_info(str(ch)).bounds
        sel = channel == ch
        inside[sel] = (value[sel] >= lo) & (value[sel] <= hi)
    counts.out_of_bounds += int((~inside).sum())
    table = table[inside]

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
