"""Selection strategies (obs/strategies.py) with the real land-sea mask of global-land-mask."""

from __future__ import annotations

import numpy as np
import pytest

from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.strategies import (
    fibonacci_points,
    is_land,
    land_fraction,
    land_mask,
    reference_land_mask,
    select_locations,
)

SAHARA = (23.0, 10.0)
MID_PACIFIC = (0.0, -160.0)


def test_known_points():
    assert is_land(*SAHARA)[0]
    assert not is_land(*MID_PACIFIC)[0]
    assert not is_land(0.0, 200.0)[0]  # the same point with lon in 0..360
    assert is_land(-80.0, 0.0)[0]  # Antarctica is land
    grid = HealpixGrid(8)
    assert land_mask(grid)[grid.ang2pix(np.array([SAHARA[0]]), np.array([SAHARA[1]]))][0]
    assert not land_mask(grid)[grid.ang2pix(np.array([MID_PACIFIC[0]]), np.array([MID_PACIFIC[1]]))][0]


def test_land_fraction_is_about_029():
    # Earth is 29.2% land (148.9 of 510.1 million km²; lakes count as land in GLOBE). HEALPix cells
    # have equal area, so the mean cell fraction is the area fraction; the 0.5-threshold mask of a
    # coarse grid moves by a few cells only.
    assert abs(reference_land_mask().mean() - 0.29) < 0.01
    for nside in (8, 16):
        grid = HealpixGrid(nside)
        assert abs(land_fraction(grid).mean() - 0.29) < 0.01
        assert abs(land_mask(grid).mean() - 0.29) < 0.02


def test_mask_is_cached_on_disk():
    import os
    from pathlib import Path

    reference_land_mask()
    assert (Path(os.environ["ENSEMBLE_DA_CACHE"]) / "land_mask_nest_nside256.npy").is_file()


@pytest.mark.parametrize("strategy, land", [("land_only", True), ("ocean_only", False)])
def test_land_and_ocean_only_pick_only_land_or_sea(strategy, land):
    lat, lon = select_locations(strategy, 500, np.random.default_rng(3))
    assert len(lat) == 500
    assert (is_land(lat, lon) == land).all()


def test_random_is_uniform_in_area():
    lat, lon = select_locations("random", 20000, np.random.default_rng(0))
    # P(|lat| < 30°) = sin 30° = 0.5; binomial sd 0.0035 → 5 sd.
    assert abs(np.mean(np.abs(lat) < 30.0) - 0.5) < 0.018
    assert 0 <= lon.min() and lon.max() < 360


def test_uniform_is_evenly_spread():
    lat, lon = fibonacci_points(400)
    lat2, lon2 = select_locations("uniform", 400, np.random.default_rng(0))
    np.testing.assert_array_equal(lat, lat2)
    xyz = np.stack([np.cos(np.deg2rad(lat)) * np.cos(np.deg2rad(lon)), np.cos(np.deg2rad(lat)) * np.sin(np.deg2rad(lon)),
                    np.sin(np.deg2rad(lat))], -1)
    d = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1) + 2 * np.eye(400)
    nearest = d.min(1)
    # Each point owns 4π/400 sr; its nearest neighbour sits ~1 spacing away: no clumps, no holes.
    spacing = np.sqrt(4 * np.pi / 400)
    assert nearest.min() > 0.8 * spacing and nearest.max() < 1.3 * spacing


def test_land_only_draws_in_a_domain_and_says_when_it_holds_no_land():
    from ensemble_da.errors import InputError
    from ensemble_da.obs.strategies import Domain

    sahara = Domain(15.0, 30.0, 350.0, 380.0)  # −10 … 20 E, across Greenwich
    lat, lon = select_locations("land_only", 300, np.random.default_rng(1), sahara)
    assert len(lat) == 300 and is_land(lat, lon).all()
    assert ((lat >= 15) & (lat <= 30) & (np.mod(lon - 350.0, 360.0) <= 30.0)).all()
    with pytest.raises(InputError, match="too little land"):
        select_locations("land_only", 10, np.random.default_rng(1), Domain(-5.0, 5.0, 190.0, 200.0))  # mid-Pacific
