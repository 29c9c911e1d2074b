"""`cycle.forecast: speedy` (ensemble_da/dynamics/speedy.py): SPEEDY (jcm) carrying each member's
full model state between analysis times, with the HEALPix analysis added as an increment.

jcm is in the test extra: the tests that integrate SPEEDY import it, and fail where it is missing.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from ensemble_da.data.speedy import DEFAULT_CHANNELS, _parse_channels, _to_channels
from ensemble_da.dynamics.speedy import SpeedyForecast, pressure_to_sigma_increment
from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid


def test_increment_to_sigma_levels_linear_in_log_p_held_below_tapered_above():
    levels = [850.0, 500.0, 300.0]
    delta = 2.0 * np.log(levels) - 3.0  # linear in ln p: reproduced exactly between the levels
    p = np.array([950.0, 700.0, 400.0, 300.0, 200.0, 100.0, 25.0])[:, None]
    out = pressure_to_sigma_increment(delta[:, None], levels, p)[:, 0]
    np.testing.assert_allclose(out[1:4], 2.0 * np.log([700.0, 400.0, 300.0]) - 3.0, atol=1e-12)
    assert out[0] == pytest.approx(delta[0])  # below 850 hPa: held
    frac = (np.log(200.0) - np.log(100.0)) / (np.log(300.0) - np.log(100.0))
    assert out[4] == pytest.approx(frac * delta[2])  # above 300 hPa: linear to zero at 100 hPa
    assert out[5] == 0.0 and out[6] == 0.0


def test_missing_jcm_is_one_error_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "jcm", None)  # `import jcm` raises ImportError
    with pytest.raises(InputError, match=r"needs jcm, which is not installed: pip install 'ensemble-da\[speedy\]'"):
        SpeedyForecast.create(HealpixGrid(4), DEFAULT_CHANNELS, spinup_days=0.25)


def test_bad_settings_are_errors():
    with pytest.raises(InputError, match="not a positive multiple of SPEEDY's 40-minute step"):
        SpeedyForecast.create(HealpixGrid(4), DEFAULT_CHANNELS, hours=1.0)
    with pytest.raises(InputError, match="not available from SPEEDY"):
        SpeedyForecast.create(HealpixGrid(4), ["T850", "Q850"])


@pytest.fixture(scope="module")
def speedy():
    return SpeedyForecast.create(HealpixGrid(8), DEFAULT_CHANNELS, hours=6.0, spinup_days=0.25, seed=0)


def test_two_member_six_hour_forecast(speedy):
    grid = speedy.grid
    x0 = speedy.forecast(None, 0, [0, 1], 7)
    assert x0.dtype == np.float32 and x0.shape == (2, len(DEFAULT_CHANNELS), grid.npix)
    assert np.isfinite(x0).all()
    assert (np.abs(x0[0] - x0[1]).max(axis=-1) > 0).all()  # each member's own perturbation
    # Plausible atmospheric values (K, m s-1, m2 s-2).
    assert 200 < x0[:, 0].mean() < 300 and 4.5e4 < x0[:, 5].mean() < 6e4
    # The same member from the same stream is the same state (the model is deterministic).
    again = SpeedyForecast(speedy.grid, speedy.channels, speedy.hours, speedy.perturbation_k, speedy.model,
                           speedy.forcing, speedy.climate)
    np.testing.assert_array_equal(again.forecast(None, 0, [1], 7)[0], x0[1])

    # Zero increment: forecasting the members' own last forecasts equals integrating their kept
    # states directly with jcm (and reading the channels as the training data are read).
    kept = {m: speedy.members[m].state for m in (0, 1)}
    x1 = speedy.forecast(x0, 1, [0, 1], 7)
    for i, m in enumerate((0, 1)):
        k = kept[m]
        _, pred = speedy.model.run_from_state_with_carry(
            k.dynamics, speedy.forcing, save_interval=0.25, total_time=0.25, initial_physics_state=k.physics,
            initial_time=k.time, initial_step=k.step)
        ds = pred.to_xarray()
        direct = _to_channels(ds, _parse_channels(DEFAULT_CHANNELS), grid)[-1]
        np.testing.assert_array_equal(x1[i], direct)

    # A +1 K analysis increment of T500 everywhere warms the forecast's T500 by about 1 K (the
    # dynamics move heat around within 6 h but conserve most of it), and T850/T300 less than it
    # (the increment tapers between the analysed levels only where the analysis has none).
    warm = x1.copy()
    warm[:, 1] += 1.0
    base = SpeedyForecast(speedy.grid, speedy.channels, speedy.hours, speedy.perturbation_k, speedy.model,
                          speedy.forcing, speedy.climate, dict(speedy.members))
    x2 = speedy.forecast(x1, 2, [0, 1], 7)
    x2_warm = base.forecast(warm, 2, [0, 1], 7)
    gain = (x2_warm - x2).mean(axis=-1)  # (member, channel)
    assert np.all((gain[:, 1] > 0.7) & (gain[:, 1] < 1.2)), gain
    assert np.all(np.abs(gain[:, 0]) < gain[:, 1]) and np.all(np.abs(gain[:, 2]) < gain[:, 1]), gain


def test_a_member_without_its_kept_state_is_an_error(speedy):
    x = np.zeros((1, len(DEFAULT_CHANNELS), speedy.grid.npix), np.float32)
    with pytest.raises(InputError, match="member 5 has no SPEEDY state of time 3 in this process"):
        speedy.forecast(x, 4, [5], 7)
