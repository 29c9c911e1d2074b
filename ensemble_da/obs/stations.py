"""Station tables (DESIGN.md §5): CSV or Parquet point observations assigned to analysis times.

Columns (the names earth2studio's observation frames use; case-insensitive, `latitude`/`longitude`
accepted; other columns such as `elev`, `type`, `source` are ignored): `time`, `lat`, `lon`
(degrees; lon in 0..360 or −180..180), `variable` (a channel name `T850`/`tas`, an earth2studio
name `t850`/`u10m`, or an ERA5 single-level short name `t2m`/`msl`), `observation` (physical
units of the channel), optional `sigma` (physical units; empty cells fall back to the config /
default sigma) and `station_id` (or `station`). A Parquet file whose `time` is the pandas index
(any named index) reads the same as one with a `time` column.

Times (`parse_times`): timezone-aware values are converted to UTC, naive ones are taken as UTC.
Text is ISO 8601 unless `observations.time_format` gives a strftime format, or `dayfirst` says
dates are written day first (13/01/2020). Numbers are epoch times: with `time_format` one of
`epoch_s`, `epoch_ms`, `epoch_us`, `epoch_ns`, or else detected from the first report as the
unit that makes it a date in 1980–2200 (the ranges of the four units do not overlap there);
every other report must then be a date in that range too. A time that cannot be read is an
error naming the row (0-based data row), the value and what was expected.

Each report goes to the nearest analysis time when within `time_tolerance_hours` of it (ties go
to the earlier time); its own `time` is kept. Rows of variables that were not asked for (other
channels, or variables that are no channel, e.g. earth2studio's `ws10m`, `d2m`, `tp`) are
ignored and counted (`qc/other_variable`).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ensemble_da.errors import InputError
from ensemble_da.obs.era5 import expand_paths, format_time
from ensemble_da.obs.variables import station_channel

__all__ = ["REQUIRED_COLUMNS", "EPOCH_UNITS", "parse_times", "read_station_table", "StationTable", "open_stations"]

REQUIRED_COLUMNS = ("time", "lat", "lon", "variable", "observation")
EPOCH_UNITS = {"epoch_s": "s", "epoch_ms": "ms", "epoch_us": "us", "epoch_ns": "ns"}
_ALIASES = {"latitude": "lat", "longitude": "lon", "value": "observation", "obs": "observation", "station": "station_id"}
_SECONDS_PER = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}
# Epoch detection window: 1980-01-01 .. 2200-01-01 in seconds.
_EPOCH_LO, _EPOCH_HI = 315532800.0, 7258118400.0
_LOG = logging.getLogger("ensemble_da.obs")


def _read_frame(path: str) -> pd.DataFrame:
    suffix = "".join(Path(path).suffixes[-2:]).lower()
    try:
        if suffix.endswith((".parquet", ".pq")):
            df = pd.read_parquet(path)
            named = [n for n in df.index.names if n is not None]
            return df.reset_index(level=named) if named else df
        if suffix.endswith((".csv", ".csv.gz", ".txt", ".csv.bz2", ".csv.zip")):
            return pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad input file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: cannot read station table: {first}") from None
    raise InputError(f"{path}: unknown station table format (expected .csv or .parquet)")


def _epoch_unit(value: float) -> str | None:
    return next((u for u, k in _SECONDS_PER.items() if _EPOCH_LO * k <= abs(value) < _EPOCH_HI * k and value > 0), None)


def _row_error(path: str, row: int, value: object, expected: str) -> InputError:
    shown = repr(value) if isinstance(value, str) else str(value)
    return InputError(f"{path}: row {row}: time {shown} is not {expected}")


def _parse_epoch(numbers: pd.Series, path: str, time_format: str | None) -> pd.Series:
    present = numbers.notna().to_numpy()
    first = int(np.flatnonzero(present)[0])
    if time_format is not None:
        unit = EPOCH_UNITS[time_format]
        expected = f"a time in epoch {unit} (observations.time_format: {time_format})"
        bad = np.zeros(len(numbers), bool)
    else:
        unit = _epoch_unit(float(numbers.iloc[first]))
        hint = ("; for dates as numbers such as 20200101 set observations.time_format (e.g. '%Y%m%d'), "
                "for epoch times before 1980 set it to epoch_s/epoch_ms/epoch_us/epoch_ns")
        if unit is None:
            raise _row_error(path, first, numbers.iloc[first], "an ISO 8601 date, nor epoch s/ms/us/ns of a date in 1980-2200" + hint)
        expected = f"epoch {unit} of a date in 1980-2200 like row {first}" + hint
        seconds = numbers.to_numpy(np.float64) / _SECONDS_PER[unit]
        bad = present & ~((seconds >= _EPOCH_LO) & (seconds < _EPOCH_HI))
    parsed = pd.to_datetime(numbers, unit=unit, utc=True, errors="coerce")
    bad |= present & parsed.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise _row_error(path, row, numbers.iloc[row], expected)
    return parsed


def parse_times(values: pd.Series, path: str, time_format: str | None = None, dayfirst: bool = False) -> np.ndarray:
    """A station table's `time` column as naive UTC datetime64[ns] (module docstring for the rules).

    Raises InputError naming the first row whose time cannot be read, its value and the
    expected form; a missing time is an error too.
    """
    values = values.reset_index(drop=True)
    missing = values.isna().to_numpy()
    if missing.all():
        raise InputError(f"{path}: column 'time' is empty")
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = pd.to_datetime(values, utc=True)
    else:
        numbers = pd.to_numeric(values, errors="coerce")
        is_number = bool((numbers.notna() | values.isna()).all())
        if time_format in EPOCH_UNITS or (time_format is None and is_number and not dayfirst):
            if not is_number:
                row = int(np.flatnonzero(numbers.isna().to_numpy() & ~missing)[0])
                raise _row_error(path, row, values.iloc[row], f"a number (observations.time_format: {time_format})")
            parsed = _parse_epoch(numbers, path, time_format)
        else:
            fmt = time_format if time_format is not None else (None if dayfirst else "ISO8601")
            text = values.astype(str).str.strip().where(~missing)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # pandas' "could not infer format" note
                parsed = pd.to_datetime(text, format=fmt, dayfirst=dayfirst, utc=True, errors="coerce")
            bad = parsed.isna().to_numpy() & ~missing
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                if time_format is not None:
                    expected = f"a date in the format {time_format!r} (observations.time_format)"
                elif dayfirst:
                    expected = "a day-first date (observations.dayfirst: true) in the format of the first row"
                else:
                    expected = ("an ISO 8601 date (YYYY-MM-DD[THH:MM[:SS]][Z|+HH:MM]); for other forms set "
                                "observations.time_format (e.g. '%d/%m/%Y %H:%M') or observations.dayfirst: true")
                raise _row_error(path, row, values.iloc[row], expected)
    if missing.any():
        raise InputError(f"{path}: row {int(np.flatnonzero(missing)[0])}: missing time")
    return parsed.dt.tz_convert(None).to_numpy("datetime64[ns]")


def read_station_table(path: str, time_format: str | None = None, dayfirst: bool = False) -> pd.DataFrame:
    """Read and validate one station table.

    Returns a DataFrame with columns time (datetime64[ns], UTC), lat, lon (float64), channel
    (str; missing where the variable is no channel), variable (the file's name), value
    (float64), sigma (float64, NaN where not given), station_id (str), row (the 0-based data
    row in the file, for messages), path. Raises InputError for missing columns, unreadable
    times, non-numeric values, |lat| > 90, sigma <= 0, as one line naming the file and row.
    """
    df = _read_frame(path)
    df = df.rename(columns={c: _ALIASES.get(str(c).strip().lower(), str(c).strip().lower()) for c in df.columns})
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: station table lacks column(s) {missing}; found {list(df.columns)}")
    if len(df) == 0:
        raise InputError(f"{path}: station table has no rows")
    out = pd.DataFrame({"time": parse_times(df["time"], path, time_format, dayfirst)})
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
    out["channel"] = np.array([mapping[n] for n in names], dtype=object)
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
        return sorted({c for c in self.frame["channel"] if isinstance(c, str)})

    def require(self, channels: Sequence[str]) -> None:
        """InputError naming a requested channel the tables lack, listing what they contain."""
        have = set(self.channels)
        for ch in channels:
            if ch not in have:
                found = sorted(pd.unique(self.frame["variable"]).tolist())
                raise InputError(f"{self._where()}: no observations of channel {ch!r}; the table contains variables {found}")

    def for_times(
        self, times: Sequence[np.datetime64], channels: Sequence[str], tolerance_hours: float
    ) -> tuple[list[pd.DataFrame], list[int]]:
        """Rows of `channels` for each analysis time (nearest time, within the tolerance), and per
        time the number of rows of other variables in the same window (ignored).

        Raises InputError for an analysis time that gets no report of `channels` at all.
        """
        self.require(channels)
        t = np.asarray([np.datetime64(x, "ns") for x in times])
        obs_t = self.frame["time"].to_numpy("datetime64[ns]")
        dt = np.abs((obs_t[:, None] - t[None, :]).astype("timedelta64[s]").astype(np.float64)) / 3600.0
        nearest = np.argmin(dt, axis=1)  # first minimum: ties go to the earlier analysis time
        ok = dt[np.arange(len(obs_t)), nearest] <= tolerance_hours
        wanted = self.frame["channel"].isin(list(channels)).to_numpy()
        self._log_ignored(ok & ~wanted)
        frames, ignored = [], []
        for i, ti in enumerate(t):
            window = ok & (nearest == i)
            sel = self.frame[window & wanted]
            if sel.empty:
                have = obs_t[wanted]
                k = int(np.argmin(np.abs((have - ti).astype("timedelta64[s]").astype(np.float64))))
                raise InputError(
                    f"{self._where()}: no station observations of {list(channels)} within {tolerance_hours:g} h of "
                    f"analysis time {format_time(ti)} (nearest report: {format_time(have[k])})"
                )
            frames.append(sel.reset_index(drop=True))
            ignored.append(int((window & ~wanted).sum()))
        return frames, ignored

    def _log_ignored(self, rows: np.ndarray) -> None:
        if rows.any():
            counts = self.frame["variable"][rows].value_counts().sort_index()
            text = ", ".join(f"{name} ({n})" for name, n in counts.items())
            _LOG.info("%s: ignored %d reports of variables not asked for: %s", self._where(), int(rows.sum()), text)


def open_stations(spec: str | Sequence[str] | None, time_format: str | None = None, dayfirst: bool = False) -> StationTable:
    """Read every station table named by `observations.path` (file, list or glob)."""
    paths = expand_paths(spec)
    frames = [read_station_table(p, time_format, dayfirst) for p in paths]
    return StationTable(pd.concat(frames, ignore_index=True), paths)
