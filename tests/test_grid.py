import healpy as hp
import numpy as np
import pytest

from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid


def test_cell_centres_round_trip_in_nest_order():
    grid = HealpixGrid(8)
    lon, lat = grid.lonlat
    assert grid.npix == 768 and grid.level == 3
    np.testing.assert_array_equal(grid.ang2pix(lat, lon), grid.cell_ids)
    # NEST, not RING: the first four NEST cells are the children of coarse cell 0.
    coarse = hp.ang2pix(4, lon[:4], lat[:4], nest=True, lonlat=True)
    assert np.all(coarse == 0)


def test_bilinear_weights_sum_to_one_and_hit_centres():
    grid = HealpixGrid(16)
    lon, lat = grid.lonlat
    cells, w = grid.interp_weights(lat[:50], lon[:50])
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-12)
    # at a cell centre the interpolation is that cell's value
    field = np.arange(grid.npix, dtype=float)
    np.testing.assert_allclose((field[cells] * w).sum(1), field[:50], atol=1e-9)


def test_longitude_conventions_agree():
    grid = HealpixGrid(8)
    assert np.array_equal(grid.ang2pix(np.array([10.0]), np.array([-30.0])), grid.ang2pix(np.array([10.0]), np.array([330.0])))


@pytest.mark.parametrize("lat", [90.5, -91.0, np.nan])
def test_bad_latitude_raises(lat):
    with pytest.raises(InputError, match="lat"):
        HealpixGrid(8).ang2pix(np.array([lat]), np.array([0.0]))


def test_nside_must_be_power_of_two():
    with pytest.raises(InputError, match="nside"):
        HealpixGrid(12)
