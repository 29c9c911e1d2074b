"""Station tables (DESIGN.md §5): CSV or Parquet point observations assigned to analysis times.

Columns (the names earth2studio's DA models use; case-insensitive, `latitude`/`longitude`
accepted): `time` (ISO or any pandas-parsable date; timezone-aware values are converted to UTC,
naive ones are taken as UTC), `lat`, `lon` (degrees; lon in 0..360 or −180..180), `variable`
(a channel name `T850`/`tas`, an earth2studio name `t850`/`u10m`, or an ERA5 single-level
short name `t2m`/`msl`), `observation` (physical units of the channel), optional `sigma`
(physical units; empty cells fall back to the config / default sigma) and `station_id`.

Each report goes to the nearest analysis time when within `time_tolerance_hours` of it (ties go
to the earlier time); its own `time` is kept. Rows for variables that were not asked for are
ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ensemble_da.errors import InputError
from ensemble_da.obs.era5 import expand_paths, format_time
from ensemble_da.obs.variables import station_channel

__all__ = ["REQUIRED_COLUMNS", "read_station_table", "StationTable", "open_stations"]

REQUIRED_COLUMNS = ("time", "lat", "lon", "variable", "observation")
_ALIASES = {"latitude": "lat", "longitude": "lon", "value": "observation", "obs": "observation"}


def _read_frame(path: str) -> pd.DataFrame:
    suffix = "".join(Path(path).suffixes[-2:]).lower()
    try:
        if suffix.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        if suffix.endswith((".csv", ".csv.gz", ".txt", ".csv.bz2", ".csv.zip")):
            return pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad input file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: cannot read station table: {first}") from None
    raise InputError(f"{path}: unknown station table format (expected .csv or .parquet)")


def read_station_table(path: str) -> pd.DataFrame:
    """Read and validate one station table.

    Returns a DataFrame with columns time (datetime64[ns], UTC), lat, lon (float64), channel
    (str), value (float64), sigma (float64, NaN where not given), station_id (str), row (the
    0-based data row in the file, for messages), path. Raises InputError for missing columns,
    unparsable times, unknown variables... as one line naming the file.
    """
    df = _read_frame(path)
    df = df.rename(columns={c: _ALIASES.get(str(c).strip().lower(), str(c).strip().lower()) for c in df.columns})
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: station table lacks column(s) {missing}; found {list(df.columns)}")
    if len(df) == 0:
        raise InputError(f"{path}: station table has no rows")
    try:
        time = pd.to_datetime(df["time"], utc=True).dt.tz_convert(None).to_numpy("datetime64[ns]")
    except (ValueError, TypeError) as exc:
        raise InputError(f"{path}: column 'time' has a value that is not a date: {str(exc).splitlines()[0]}") from None
    if np.isnat(time).any():
        row = int(np.flatnonzero(np.isnat(time))[0])
        raise InputError(f"{path}: row {row}: missing time")
    out = pd.DataFrame({"time": time})
    for col in ("lat", "lon", "observation"):
        vals = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
        bad = np.isnan(vals) & df[col].notna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(f"{path}: row {row}: column {col!r} is not a number: {df[col].iloc[row]!r}")
        out[col] = vals
    bad = np.abs(out["lat"].to_numpy()) > 90.0
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"{path}: row {row}: latitude {out['lat'].iloc[row]:g} is outside [-90, 90]")
    names = df["variable"].astype(str).str.strip()
    mapping = {n: station_channel(n) for n in pd.unique(names)}
    out["channel"] = names.map(mapping).to_numpy(dtype=object)
    out["variable"] = names.to_numpy()
    out["value"] = out.pop("observation")
    if "sigma" in df.columns:
        sigma = pd.to_numeric(df["sigma"], errors="coerce").to_numpy(np.float64)
        bad = sigma <= 0
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(f"{path}: row {row}: sigma must be > 0, got {sigma[row]:g}")
        out["sigma"] = sigma
    else:
        out["sigma"] = np.nan
    out["station_id"] = df["station_id"].astype(str).to_numpy() if "station_id" in df.columns else ""
    out["row"] = np.arange(len(df))
    out["path"] = path
    return out


@dataclass
class StationTable:
    """All rows of one or more station tables (see `read_station_table` for the columns)."""

    frame: pd.DataFrame
    paths: list[str]

    def _where(self) -> str:
        return self.paths[0] if len(self.paths) == 1 else f"{len(self.paths)} files ({self.paths[0]}, ...)"

    @property
    def channels(self) -> list[str]:
        return sorted({c for c in self.frame["channel"] if c is not None})

    def require(self, channels: Sequence[str]) -> None:
        """InputError naming a requested channel the tables lack, listing what they contain."""
        have = set(self.channels)
        for ch in channels:
            if ch not in have:
                found = sorted(pd.unique(self.frame["variable"]).tolist())
                raise InputError(f"{self._where()}: no observations of channel {ch!r}; the table contains variables {found}")

    def for_times(
        self, times: Sequence[np.datetime64], channels: Sequence[str], tolerance_hours: float
    ) -> list[pd.DataFrame]:
        """Rows of `channels` for each analysis time (nearest time, within the tolerance).

        Raises InputError for an analysis time that gets no report at all.
        """
        self.require(channels)
        df = self.frame[self.frame["channel"].isin(list(channels))]
        t = np.asarray([np.datetime64(x, "ns") for x in times])
        obs_t = df["time"].to_numpy("datetime64[ns]")
        dt = np.abs((obs_t[:, None] - t[None, :]).astype("timedelta64[s]").astype(np.float64)) / 3600.0
        nearest = np.argmin(dt, axis=1)  # first minimum: ties go to the earlier analysis time
        ok = dt[np.arange(len(df)), nearest] <= tolerance_hours
        out = []
        for i, ti in enumerate(t):
            sel = df[ok & (nearest == i)]
            if sel.empty:
                k = int(np.argmin(np.abs((obs_t - ti).astype("timedelta64[s]").astype(np.float64))))
                raise InputError(
                    f"{self._where()}: no station observations within {tolerance_hours:g} h of analysis time "
                    f"{format_time(ti)} (nearest report: {format_time(obs_t[k])})"
                )
            out.append(sel.reset_index(drop=True))
        return out


def open_stations(spec: str | Sequence[str] | None) -> StationTable:
    """Read every station table named by `observations.path` (file, list or glob)."""
    paths = expand_paths(spec)
    frames = [read_station_table(p) for p in paths]
    return StationTable(pd.concat(frames, ignore_index=True), paths)
