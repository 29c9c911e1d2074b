"""Mapping table: channel ↔ ERA5 short name ↔ ARCO-ERA5 long name ↔ level ↔ units (DESIGN.md §3).

One row per variable. A pressure-level channel is `<letter><hPa>` (T850 = ERA5 `t` at 850 hPa =
ARCO `temperature` at `level=850`); a surface channel maps to one single-level field
(tas = `t2m` = `2m_temperature`). Units are the ERA5 units, which are the units of our
channels (Z is geopotential in m² s⁻², not height). `aliases` lists other spellings users'
files and station tables carry (GRIB short names such as `2t`, earth2studio names such as
`u10m`, `t850`). `default_sigma` is the observation error used when neither the config
(`observations.sigma`) nor the file gives one: a typical in-situ/reanalysis error, in units.

| channel   | ERA5 | ARCO long name            | level | units     | default sigma |
|-----------|------|---------------------------|-------|-----------|---------------|
| T<hPa>    | t    | temperature               | hPa   | K         | 1.0           |
| U<hPa>    | u    | u_component_of_wind       | hPa   | m s-1     | 2.0           |
| V<hPa>    | v    | v_component_of_wind       | hPa   | m s-1     | 2.0           |
| Z<hPa>    | z    | geopotential              | hPa   | m2 s-2    | 100.0         |
| Q<hPa>    | q    | specific_humidity         | hPa   | kg kg-1   | 5e-4          |
| R<hPa>    | r    | relative_humidity         | hPa   | %         | 10.0          |
| W<hPa>    | w    | vertical_velocity         | hPa   | Pa s-1    | 0.1           |
| tas       | t2m  | 2m_temperature            | -     | K         | 1.0           |
| uas       | u10  | 10m_u_component_of_wind   | -     | m s-1     | 1.5           |
| vas       | v10  | 10m_v_component_of_wind   | -     | m s-1     | 1.5           |
| pres_msl  | msl  | mean_sea_level_pressure   | -     | Pa        | 100.0         |
| ps        | sp   | surface_pressure          | -     | Pa        | 100.0         |
| sst       | sst  | sea_surface_temperature   | -     | K         | 0.5           |
| tcwv      | tcwv | total_column_water_vapour | -     | kg m-2    | 2.0           |
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ensemble_da.channels import channel_info
from ensemble_da.errors import InputError

__all__ = [
    "Era5Variable",
    "VARIABLES",
    "era5_variable",
    "lookup_file_variable",
    "station_channel",
    "default_sigma",
    "mapping_table",
    "unit_conversion",
]


@dataclass(frozen=True)
class Era5Variable:
    """One row of the mapping table.

    `key` is the channel name for surface variables and the variable letter (`T`) for
    pressure-level variables; `pressure_level` says which.
    """

    key: str
    short_name: str
    arco_name: str
    units: str
    pressure_level: bool
    default_sigma: float
    aliases: tuple[str, ...] = ()


VARIABLES: tuple[Era5Variable, ...] = (
    Era5Variable("T", "t", "temperature", "K", True, 1.0, ("ta", "air_temperature")),
    Era5Variable("U", "u", "u_component_of_wind", "m s-1", True, 2.0, ("ua", "eastward_wind")),
    Era5Variable("V", "v", "v_component_of_wind", "m s-1", True, 2.0, ("va", "northward_wind")),
    Era5Variable("Z", "z", "geopotential", "m2 s-2", True, 100.0, ()),
    Era5Variable("Q", "q", "specific_humidity", "kg kg-1", True, 5e-4, ("hus",)),
    Era5Variable("R", "r", "relative_humidity", "%", True, 10.0, ("hur",)),
    Era5Variable("W", "w", "vertical_velocity", "Pa s-1", True, 0.1, ("wap",)),
    Era5Variable("tas", "t2m", "2m_temperature", "K", False, 1.0, ("2t", "VAR_2T", "t2m")),
    Era5Variable("uas", "u10", "10m_u_component_of_wind", "m s-1", False, 1.5, ("10u", "VAR_10U", "u10m")),
    Era5Variable("vas", "v10", "10m_v_component_of_wind", "m s-1", False, 1.5, ("10v", "VAR_10V", "v10m")),
    Era5Variable("pres_msl", "msl", "mean_sea_level_pressure", "Pa", False, 100.0, ("psl", "prmsl")),
    Era5Variable("ps", "sp", "surface_pressure", "Pa", False, 100.0, ()),
    Era5Variable("sst", "sst", "sea_surface_temperature", "K", False, 0.5, ("tos",)),
    Era5Variable("tcwv", "tcwv", "total_column_water_vapour", "kg m-2", False, 2.0, ("prw",)),
)

_BY_KEY = {v.key: v for v in VARIABLES}
# Every name a file may use for a variable → the row (short names, ARCO names, aliases).
_BY_FILE_NAME: dict[str, Era5Variable] = {}
for _v in VARIABLES:
    for _name in (_v.short_name, _v.arco_name, *_v.aliases):
        _BY_FILE_NAME.setdefault(_name, _v)
        _BY_FILE_NAME.setdefault(_name.lower(), _v)


def era5_variable(channel: str) -> tuple[Era5Variable, int | None]:
    """The mapping-table row and pressure level (hPa, or None at the surface) of a channel."""
    info = channel_info(channel)
    row = _BY_KEY.get(info.variable)
    if row is None:
        raise InputError(f"channel {channel!r} has no ERA5 equivalent in the mapping table")
    return row, info.level


def default_sigma(channel: str) -> float:
    """Documented default observation error of a channel, in its physical units."""
    return era5_variable(channel)[0].default_sigma


def lookup_file_variable(name: str) -> Era5Variable | None:
    """The row for a variable name found in a file (`t`, `temperature`, `2t`...), or None."""
    return _BY_FILE_NAME.get(name) or _BY_FILE_NAME.get(name.lower())


_E2S_LEVEL = re.compile(r"^([a-zA-Z])(\d{1,4})$")


def station_channel(name: str) -> str | None:
    """The channel a station-table `variable` value stands for, or None if unknown.

    Accepts channel names (`T850`, `tas`), earth2studio names (`t850`, `z500`, `t2m`,
    `u10m`) and ERA5 single-level short names (`t2m`, `u10`, `msl`, `sst`).
    """
    name = str(name).strip()
    try:
        channel_info(name)
        return name
    except InputError:
        pass
    m = _E2S_LEVEL.match(name)
    if m and m.group(1).upper() in _BY_KEY and _BY_KEY[m.group(1).upper()].pressure_level:
        return f"{m.group(1).upper()}{int(m.group(2))}"
    row = lookup_file_variable(name)
    if row is not None and not row.pressure_level:
        return row.key
    return None


# Unit spellings that mean the same thing, canonicalised by `_canon`.
_SAME_UNITS = {
    "K": {"k", "kelvin", "degk", "deg_k"},
    "m s-1": {"ms-1", "m/s", "ms**-1", "meterspersecond"},
    "m2 s-2": {"m2s-2", "m**2s**-2", "m^2s^-2", "m2/s2", "m^2/s^2"},
    "kg kg-1": {"kgkg-1", "kg/kg", "kgkg**-1", "1", "", "dimensionless"},
    "%": {"%", "percent", "pct"},
    "Pa s-1": {"pas-1", "pa/s", "pas**-1"},
    "Pa": {"pa", "pascal", "pascals"},
    "kg m-2": {"kgm-2", "kg/m2", "kgm**-2", "kg/m^2", "mm"},
}
# (units found, expected units) → (multiply, then add)
_CONVERT = {
    ("degc", "K"): (1.0, 273.15),
    ("c", "K"): (1.0, 273.15),
    ("celsius", "K"): (1.0, 273.15),
    ("degreesc", "K"): (1.0, 273.15),
    ("degrees_celsius", "K"): (1.0, 273.15),
    ("hpa", "Pa"): (100.0, 0.0),
    ("mb", "Pa"): (100.0, 0.0),
    ("mbar", "Pa"): (100.0, 0.0),
    ("g/kg", "kg kg-1"): (1e-3, 0.0),
    ("gkg-1", "kg kg-1"): (1e-3, 0.0),
}


def _canon(units: str) -> str:
    return units.strip().lower().replace(" ", "").replace("°", "deg")


def unit_conversion(units: str | None, expected: str, where: str) -> tuple[float, float]:
    """(scale, offset) taking values in `units` to `expected` (x·scale + offset).

    Missing units are taken to be the expected ones. Units we cannot interpret raise an
    InputError naming `where` (file and variable), so a wrong-unit file is never read silently.
    """
    if units is None:
        return 1.0, 0.0
    c = _canon(str(units))
    if c in _SAME_UNITS.get(expected, set()) or c == _canon(expected):
        return 1.0, 0.0
    if (c, expected) in _CONVERT:
        return _CONVERT[(c, expected)]
    raise InputError(f"{where}: units {units!r} cannot be converted to {expected!r}")


def mapping_table() -> str:
    """The mapping table as Markdown (for the README and `--help` texts)."""
    lines = [
        "| channel | ERA5 short name | ARCO long name | level | units | default sigma |",
        "|---|---|---|---|---|---|",
    ]
    for v in VARIABLES:
        ch = f"{v.key}<hPa>" if v.pressure_level else v.key
        level = "hPa (`level` / `pressure_level`)" if v.pressure_level else "single level"
        lines.append(f"| {ch} | `{v.short_name}` | `{v.arco_name}` | {level} | {v.units} | {v.default_sigma:g} |")
    return "\n".join(lines)
