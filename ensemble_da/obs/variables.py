"""Mapping table: channel ↔ ERA5 short name ↔ ARCO-ERA5 long name ↔ level ↔ units (DESIGN.md §3).

One row per variable. A pressure-level channel is `<letter><hPa>` (T850 = ERA5 `t` at 850 hPa =
ARCO `temperature` at `level=850`); a surface channel maps to one single-level field
(tas = `t2m` = `2m_temperature`). Units are the ERA5 units, which are the units of our
channels (Z is geopotential in m² s⁻², not height). `aliases` lists other spellings users'
files and station tables carry (GRIB short names such as `2t`, earth2studio names such as
`u10m`, `t850`). `default_sigma` is the observation error used when neither the config
(`observations.sigma`) nor the file gives one: a typical in-situ/reanalysis error, in units.

Units: a file's `units` attribute is converted to the channel's units by the pint registry of
cf_xarray (UDUNITS/CF spellings: `K`, `degC`, `°C`, `hPa`, `mbar`, `m s**-1`, `m/s`, `knots`,
`kg kg-1`, `g/kg`, `%`, `1`, ...), plus the meteorological spellings pint reads otherwise (`mb`
is millibar, not millibarn; `(0 - 1)` and `fraction` are 1). Two conversions change the quantity
and are logged (logger `ensemble_da.obs`): geopotential height (`m`, `gpm`; variables `gh`, `zg`)
to geopotential × g₀ = 9.80665 m s⁻² (WMO standard gravity), and water depth (`mm`) to kg m⁻²
× 1000 kg m⁻³. Anything else raises InputError.

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

import functools
import logging
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
    "implied_units",
    "STANDARD_GRAVITY",
]

STANDARD_GRAVITY = 9.80665  # m s-2, WMO/ECMWF g0: geopotential = g0 · geopotential height
WATER_DENSITY = 1000.0  # kg m-3: a water depth of 1 mm is 1 kg m-2
_LOG = logging.getLogger("ensemble_da.obs")


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
    Era5Variable("Z", "z", "geopotential", "m2 s-2", True, 100.0, ("gh", "zg", "geopotential_height")),
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


# Names of geopotential height: their values are heights (m) even when a file omits `units`.
_HEIGHT_NAMES = {"gh", "zg", "geopotential_height"}
# Meteorological spellings the pint registry reads as something else or not at all.
_SPELLINGS = {"mb": "mbar", "mbs": "mbar", "millibars": "mbar", "(0 - 1)": "1", "0-1": "1", "fraction": "1",
              "gpm": "m", "kts": "knot", "degrees c": "degC", "deg c": "degC"}


def implied_units(name: str) -> str | None:
    """Units a variable's name implies when the file gives none (`gh` → `m`), else None."""
    return "m" if name.strip().lower() in _HEIGHT_NAMES else None


@functools.cache
def _registry():
    pint_log = logging.getLogger("pint.util")
    level = pint_log.level
    pint_log.setLevel(logging.ERROR)  # cf_xarray redefines some pint units on import, noisily
    try:
        from cf_xarray.units import units  # a pint UnitRegistry that reads UDUNITS / CF spellings
    finally:
        pint_log.setLevel(level)
    return units


def _parse(units: str, where: str):
    import pint

    text = _SPELLINGS.get(units.strip().lower(), units.strip())
    try:
        return _registry().Quantity(1.0, text).units
    except (pint.errors.PintError, ValueError, TypeError, AttributeError, AssertionError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{where}: units {units!r} are not units pint/UDUNITS can read ({reason})") from None


def _affine(src, dst) -> tuple[float, float]:
    q = _registry().Quantity
    zero = float(q(0.0, src).to(dst).magnitude)
    return float(q(1.0, src).to(dst).magnitude) - zero, zero


def unit_conversion(units: str | None, expected: str, where: str) -> tuple[float, float]:
    """(scale, offset) taking values in `units` to `expected` (x·scale + offset).

    Missing units are taken to be the expected ones. Units that are not a unit of the expected
    quantity (nor geopotential height → geopotential, water depth → kg m-2) raise an InputError
    naming `where` (file and variable), so a wrong-unit file is never read silently.
    """
    if units is None or not str(units).strip():
        return 1.0, 0.0
    src, dst = _parse(str(units), where), _parse(expected, f"channel units {expected!r}")
    reg = _registry()
    if src.dimensionality == dst.dimensionality:
        scale, offset = _affine(src, dst)
        if (scale, offset) != (1.0, 0.0):
            _LOG.info("%s: converted from %r to %r (x * %g + %g)", where, units, expected, scale, offset)
        return scale, offset
    length = reg.Unit("m").dimensionality
    if src.dimensionality == length and dst.dimensionality == reg.Unit("m2 s-2").dimensionality:
        scale = _affine(src, reg.Unit("m"))[0] * STANDARD_GRAVITY
        _LOG.info("%s: geopotential height in %r converted to geopotential in %r (x * %g, g0 = %g m s-2)",
                  where, units, expected, scale, STANDARD_GRAVITY)
        return scale, 0.0
    if src.dimensionality == length and dst.dimensionality == reg.Unit("kg m-2").dimensionality:
        scale = _affine(src, reg.Unit("m"))[0] * WATER_DENSITY
        _LOG.info("%s: water depth in %r converted to %r (x * %g)", where, units, expected, scale)
        return scale, 0.0
    raise InputError(f"{where}: units {units!r} cannot be converted to {expected!r} ({src.dimensionality} is not {dst.dimensionality})")


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
