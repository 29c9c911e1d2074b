"""`cycle.forecast: {kind: speedy}`: SPEEDY (jcm, T30 spectral, 8 sigma levels) in the loop.

What a HEALPix analysis can and cannot restart. The analysed channels (T, U, V, Z at a few
pressure levels, e.g. 850/500/300 hPa, on HEALPix) are not a SPEEDY state: the model also needs
humidity, surface pressure, the five other sigma levels, the spectral detail the regridding
smooths away, and its physics carry (radiation cache, ...). Rebuilding all of that from the
channels would invent most of the state. So this model does what incremental DA systems do:

- it keeps each member's full SPEEDY state (`jcm.model.RunState`: spectral dynamics, physics
  carry, clock) between calls, keyed by member id, together with the HEALPix channels of the
  member's last forecast (float32 (channel, cell), physical units: exactly what it returned);
- at the next call the analysis increment δ = x_m − (member m's last forecast), (channel, cell)
  physical, is carried back to the model: HEALPix → SPEEDY's Gaussian grid (bilinear on the
  sphere, `HealpixGrid.interp_weights`), then pressure levels → sigma levels (p = σ p_s with the
  member's own p_s), linearly in log-pressure between the analysed levels, held below the lowest
  analysed level and tapered linearly in log-pressure to zero at 100 hPa above the highest;
- T, U, V increments change the member's spectral temperature, vorticity and divergence by
  P(g + δ) − P(g), g the member's gridpoint state (jcm's `to_physics_state`) and P jcm's
  gridpoint → spectral projection; surface pressure, humidity and the physics carry stay the
  member's own. A zero increment therefore leaves the kept state exactly as it was. Z increments
  are not applied: geopotential is diagnostic in the primitive equations (it follows from T and
  p_s), so the forecast's Z is the model's own;
- then one analysis interval (`hours`, a multiple of the 40-minute step) is integrated, and the
  forecast's channels are taken exactly as the SPEEDY training data are
  (`ensemble_da.data.speedy`: log-pressure interpolation, regridding to HEALPix NEST).

Before the first time (x is None) member m starts from the climate state (jcm's rest state
seeded by the run's seed, integrated `spinup_days`) plus white temperature noise of std
`perturbation_k` K at every grid point and sigma level from the member's forecast stream
`forecast_generator(seed, t_index, m)`, then integrates one interval.

What it costs in accuracy: `benchmarks/speedy_roundtrip.py` inserts a HEALPix-regridded truth
into a different member's state this way and compares its 6 h forecast with the truth's own
(README "Time: cycling and reanalysis"). What it needs: the member's state from the previous time
in the same process, so `cycle.forecast: speedy` runs in-process with one replica, and a member
forecast without its kept state (another process, a `--resume`) is one `InputError` line, not a
silently different forecast. Members are integrated one after another (the jcm run call holds
Python-side clock checks, so it is not vmapped); the integration is compiled once and reused.

jcm is the optional extra `ensemble-da[speedy]`; it is imported only when this model is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ensemble_da.dynamics.base import forecast_generator
from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid

__all__ = ["SpeedyForecast", "pressure_to_sigma_increment"]

_STEP_SECONDS = 2400  # the 40-minute step of `ensemble_da.data.speedy._build_model`
_TAPER_TOP_HPA = 100.0  # above the highest analysed level the increment goes to zero here


def pressure_to_sigma_increment(delta: np.ndarray, levels_hpa: Sequence[float], p_hpa: np.ndarray) -> np.ndarray:
    """Carry increments at pressure levels to model levels, linearly in log-pressure.

    delta: (level, *horizontal) at `levels_hpa` (any order); p_hpa: (sigma, *horizontal), the
    model levels' pressures in hPa. Between analysed levels: linear in ln p; below the lowest
    (largest p): held; above the highest: linear in ln p to zero at 100 hPa, zero above.
    Returns (sigma, *horizontal), the same units as `delta`.
    """
    order = np.argsort(levels_hpa)  # low pressure (top) first
    lev = np.log(np.asarray(levels_hpa, np.float64)[order])
    d = np.asarray(delta, np.float64)[order]
    lnp = np.log(np.asarray(p_hpa, np.float64))
    out = np.empty(lnp.shape)
    for k in range(lnp.shape[0]):
        x = lnp[k]
        # index j with lev[j] <= x < lev[j+1], clipped to the end segments
        j = np.clip(np.searchsorted(lev, x, side="right") - 1, 0, max(len(lev) - 2, 0))
        if len(lev) == 1:
            inside = d[0]
        else:
            w = np.clip((x - lev[j]) / (lev[j + 1] - lev[j]), 0.0, 1.0)
            inside = np.take_along_axis(d, j[None], 0)[0] * (1 - w) + np.take_along_axis(d, j[None] + 1, 0)[0] * w
        top = np.log(_TAPER_TOP_HPA)
        taper = np.clip((x - top) / (lev[0] - top), 0.0, 1.0)  # 0 at 100 hPa, 1 at the highest level
        out[k] = np.where(x < lev[0], d[0] * taper, inside)
    return out


@dataclass
class _Member:
    state: Any  # jcm RunState after the member's last forecast
    channels: np.ndarray  # float32 (channel, cell): what that forecast returned
    t_index: int


@dataclass
class SpeedyForecast:
    """SPEEDY forecasts of HEALPix members with each member's full model state kept (module doc).

    grid, channels: the run's HEALPix grid and channel names (T, U, V, Z at pressure levels);
    hours: the analysis interval integrated per call; climate: the spun-up jcm RunState members
    start from; perturbation_k: std (K) of each member's initial temperature noise.
    """

    grid: HealpixGrid
    channels: tuple[str, ...]
    hours: float
    perturbation_k: float
    model: Any
    forcing: Any
    climate: Any
    members: dict[int, _Member] = field(default_factory=dict)

    @classmethod
    def create(cls, grid: HealpixGrid, channels: Sequence[str], *, hours: float = 6.0, spinup_days: float = 30.0,
               perturbation_k: float = 0.5, seed: int = 0) -> "SpeedyForecast":
        """Build SPEEDY (jcm) and spin up its climate state: `spinup_days` from jcm's rest state
        seeded by `seed`, in steps of `hours`. InputError when jcm is missing, a channel is not a
        SPEEDY T/U/V/Z pressure-level channel, or `hours` is not a whole number of 40-min steps."""
        from ensemble_da.data.speedy import _parse_channels

        _parse_channels(channels)
        seconds = float(hours) * 3600.0
        if seconds <= 0 or seconds % _STEP_SECONDS:
            raise InputError(f"cycle.forecast speedy: the analysis interval {hours:g} h is not a positive multiple of "
                             f"SPEEDY's {_STEP_SECONDS // 60}-minute step")
        if spinup_days < 0 or (spinup_days * 86400.0) % seconds:
            raise InputError(f"cycle.forecast.spinup_days {spinup_days:g} is not a whole number of {hours:g} h intervals")
        try:
            import jcm  # noqa: F401
        except ImportError:
            raise InputError("cycle.forecast speedy needs jcm, which is not installed: "
                             "pip install 'ensemble-da[speedy]'") from None
        import jax.numpy as jnp

        from ensemble_da.data.speedy import _build_model

        model, forcing = _build_model()
        state = model.initial_state(random_seed=int(seed))
        run_state, _ = model.run_from_state_with_carry(
            state, forcing, save_interval=hours / 24.0, total_time=hours / 24.0,
            initial_time=model.start_time, initial_step=jnp.int32(0))
        self = cls(grid, tuple(channels), float(hours), float(perturbation_k), model, forcing, None)
        for _ in range(int(round(spinup_days * 24.0 / hours)) - 1):
            run_state = self._run(run_state)[0]
        self.climate = run_state
        return self

    # -- the pieces (also used by benchmarks/speedy_roundtrip.py) --------------------------------

    def _run(self, run_state):
        """One interval from `run_state`: (the next RunState, jcm predictions of its end)."""
        return self.model.run_from_state_with_carry(
            run_state.dynamics, self.forcing, save_interval=self.hours / 24.0, total_time=self.hours / 24.0,
            initial_physics_state=run_state.physics, initial_time=run_state.time, initial_step=run_state.step)

    def integrate(self, run_state) -> tuple[Any, np.ndarray]:
        """Integrate one interval: (the RunState after it, its channels float32 (channel, cell))."""
        from ensemble_da.data.speedy import _parse_channels, _to_channels

        new, predictions = self._run(run_state)
        ds = predictions.to_xarray()[["temperature", "u_wind", "v_wind", "geopotential", "normalized_surface_pressure"]]
        x = _to_channels(ds, _parse_channels(self.channels), self.grid)[-1]
        return new, x

    def _gaussian_grid(self) -> tuple[np.ndarray, np.ndarray]:
        h = self.model.coords.horizontal
        return np.rad2deg(np.asarray(h.longitudes, np.float64)), np.rad2deg(np.asarray(h.latitudes, np.float64))

    def to_gaussian(self, fields: np.ndarray) -> np.ndarray:
        """HEALPix (n, cell) → SPEEDY's Gaussian grid (n, lon, lat), bilinear on the sphere."""
        lon, lat = self._gaussian_grid()
        lo, la = np.meshgrid(lon, lat, indexing="ij")
        lo_w = np.where(lo > 180.0, lo - 360.0, lo)
        pix, w = self.grid.interp_weights(la.ravel(), lo_w.ravel())
        f = np.asarray(fields, np.float64)
        return (f[:, pix] * w[None]).sum(-1).reshape((f.shape[0],) + lo.shape)

    def add_increment(self, run_state, increment: np.ndarray | None = None, temperature_noise: np.ndarray | None = None):
        """`run_state` with the HEALPix increment (channel, cell; physical units; Z ignored) and/or
        a gridpoint temperature perturbation (sigma level TOA first, lon, lat; K) added (module doc)."""
        from ensemble_da.data.speedy import _parse_channels

        dycore = self.model.dycore
        g = dycore.to_physics_state(run_state.dynamics)
        dT = np.zeros(np.shape(g.temperature))
        du, dv = np.zeros_like(dT), np.zeros_like(dT)
        if increment is not None:
            parsed = _parse_channels(self.channels)
            sigma = np.asarray(self.model.coords.vertical.centers, np.float64)  # same order as g's levels
            p_hpa = sigma[:, None, None] * np.asarray(g.normalized_surface_pressure, np.float64)[None] * 1000.0
            on_grid = self.to_gaussian(np.asarray(increment, np.float64))  # (channel, lon, lat)
            for var, target in (("T", dT), ("U", du), ("V", dv)):
                rows = [i for i, (_, v, _) in enumerate(parsed) if v == var]
                if rows:
                    target += pressure_to_sigma_increment(on_grid[rows], [parsed[i][2] for i in rows], p_hpa)
        if temperature_noise is not None:
            dT = dT + temperature_noise
        dtype = np.asarray(g.temperature).dtype
        moved = dataclasses.replace(g, temperature=g.temperature + dT.astype(dtype), u_wind=g.u_wind + du.astype(dtype),
                                    v_wind=g.v_wind + dv.astype(dtype))
        before, after = self.model.initial_state(g), self.model.initial_state(moved)
        dyn = run_state.dynamics
        new = dataclasses.replace(dyn, **{f: getattr(dyn, f) + (getattr(after, f) - getattr(before, f))
                                          for f in ("vorticity", "divergence", "temperature_variation")})
        return type(run_state)(new, run_state.physics, run_state.time, run_state.step)

    def perturbed_climate(self, seed: int, t_index: int, member: int):
        """The climate state with member `member`'s white temperature noise (std perturbation_k K)."""
        import torch

        lon, lat = self._gaussian_grid()
        nodal = (len(self.model.coords.vertical.centers), lon.size, lat.size)  # (sigma level, lon, lat)
        noise = torch.randn(nodal, generator=forecast_generator(seed, t_index, member), dtype=torch.float64).numpy()
        return self.add_increment(self.climate, temperature_noise=self.perturbation_k * noise)

    # -- the ForecastModel protocol ------------------------------------------------------------

    def forecast(self, x: np.ndarray | None, t_index: int, members: Sequence[int], seed: int) -> np.ndarray:
        """Members at time `t_index` from their analyses `x` (member, channel, cell; physical units)
        at t_index − 1, each added as an increment to the member's kept SPEEDY state; x None: from
        the perturbed climate state. Returns float32 (member, channel, cell), physical units."""
        members = [int(m) for m in members]
        shape = (len(members), len(self.channels), self.grid.npix)
        if x is not None and np.shape(x) != shape:
            raise InputError(f"speedy forecast: states of shape {np.shape(x)}, expected {shape} (member, channel, cell)")
        out = np.empty(shape, np.float32)
        for i, m in enumerate(members):
            if x is None:
                start = self.perturbed_climate(seed, t_index, m)
            else:
                kept = self.members.get(m)
                if kept is None or kept.t_index != t_index - 1:
                    had = "none" if kept is None else f"time {kept.t_index}"
                    raise InputError(f"cycle.forecast speedy: member {m} has no SPEEDY state of time {t_index - 1} in "
                                     f"this process (kept: {had}); run it in-process with one replica and without "
                                     "--resume")
                start = self.add_increment(kept.state, np.asarray(x[i], np.float32) - kept.channels)
            state, channels = self.integrate(start)
            if not np.isfinite(channels).all():
                raise InputError(f"cycle.forecast speedy: member {m}'s forecast into time {t_index} is not finite "
                                 "(the increment may be too large for SPEEDY)")
            self.members[m] = _Member(state, channels, int(t_index))
            out[i] = channels
        return out
