"""Units (obs/variables.py): every spelling users' files carry converts to the channel's units with
the constants of the definitions (not of the code under test); geopotential height becomes
geopotential × g0, named in the log; anything else is refused."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import xarray as xr

from ensemble_da.errors import InputError
from ensemble_da.obs.era5 import open_source
from ensemble_da.obs.variables import unit_conversion

KNOT = 1852.0 / 3600.0  # m s-1: one nautical mile (1852 m, by definition) per hour
G0 = 9.80665  # m s-2, standard gravity (CGPM 1901)

CASES = [  # (file units, channel units, scale, offset)
    ("K", "K", 1.0, 0.0), ("kelvin", "K", 1.0, 0.0), ("degC", "K", 1.0, 273.15), ("°C", "K", 1.0, 273.15),
    ("deg_C", "K", 1.0, 273.15), ("Celsius", "K", 1.0, 273.15),
    ("Pa", "Pa", 1.0, 0.0), ("hPa", "Pa", 100.0, 0.0), ("mbar", "Pa", 100.0, 0.0), ("mb", "Pa", 100.0, 0.0),
    ("m s-1", "m s-1", 1.0, 0.0), ("m s**-1", "m s-1", 1.0, 0.0), ("m/s", "m s-1", 1.0, 0.0),
    ("knots", "m s-1", KNOT, 0.0), ("kt", "m s-1", KNOT, 0.0),
    ("kg kg-1", "kg kg-1", 1.0, 0.0), ("kg kg**-1", "kg kg-1", 1.0, 0.0), ("g/kg", "kg kg-1", 1e-3, 0.0),
    ("g kg-1", "kg kg-1", 1e-3, 0.0),
    ("%", "%", 1.0, 0.0), ("1", "%", 100.0, 0.0), ("(0 - 1)", "%", 100.0, 0.0), ("fraction", "%", 100.0, 0.0),
    ("m**2 s**-2", "m2 s-2", 1.0, 0.0), ("m2 s-2", "m2 s-2", 1.0, 0.0),
    ("m", "m2 s-2", G0, 0.0), ("gpm", "m2 s-2", G0, 0.0), ("dam", "m2 s-2", 10 * G0, 0.0),
    ("Pa s**-1", "Pa s-1", 1.0, 0.0), ("kg m**-2", "kg m-2", 1.0, 0.0), ("mm", "kg m-2", 1.0, 0.0),
]


@pytest.mark.parametrize("units,expected,scale,offset", CASES, ids=[f"{c[0]}->{c[1]}" for c in CASES])
def test_unit_spellings_convert_with_the_defining_constants(units, expected, scale, offset):
    got = unit_conversion(units, expected, "f.nc: variable 'x'")
    np.testing.assert_allclose(got, (scale, offset), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("units,expected", [("K", "Pa"), ("hPa", "K"), ("m s-1", "m2 s-2"), ("%", "K"), ("bananas", "K")])
def test_other_units_are_refused_naming_file_and_variable(units, expected):
    with pytest.raises(InputError, match=rf"^f\.nc: variable 'x': units '{units}'"):
        unit_conversion(units, expected, "f.nc: variable 'x'")


@pytest.mark.parametrize("name,units", [("z", "m"), ("z", "gpm"), ("gh", "gpm"), ("gh", None), ("zg", "m")])
def test_geopotential_height_is_converted_to_geopotential_and_logged(tmp_path, caplog, name, units):
    lat, lon = np.linspace(90, -90, 19), np.arange(36) * 10.0
    height = 5500.0 + 100.0 * np.cos(np.deg2rad(lat))[:, None] + np.zeros((19, 36))
    attrs = {} if units is None else {"units": units}
    ds = xr.Dataset({name: (("time", "isobaricInhPa", "latitude", "longitude"), height[None, None], attrs)},
                    coords={"time": np.array(["2020-01-01T00"], "datetime64[ns]"), "isobaricInhPa": [500.0],
                            "latitude": lat, "longitude": lon})
    path = tmp_path / "gh.nc"
    ds.to_netcdf(path, engine="netcdf4")
    with caplog.at_level(logging.INFO, logger="ensemble_da.obs"), open_source(str(path)) as src:
        field = src.field("Z500", np.datetime64("2020-01-01T00"), 0.0)
    np.testing.assert_allclose(field.values, height[::-1] * G0, rtol=1e-12)
    assert any("geopotential height" in r.getMessage() and "9.80665" in r.getMessage() and "gh.nc" in r.getMessage()
               for r in caplog.records)
