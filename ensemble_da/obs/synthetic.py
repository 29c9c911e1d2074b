"""Synthetic observations of a known truth: the core of an OSSE (DESIGN.md §3, §5).

Locations are drawn by a selection strategy, each observation reads one channel of the truth
through the run's operator H, and N(0, σ²) noise is added with σ from `observations.sigma`.
The random streams of an OSSE are fixed here: the truth of analysis time t comes from
SeedSequence([seed, t, TRUTH_STREAM]), observation locations, noise and the held-out draw from
SeedSequence([seed, t, OBS_STREAM]); members use SeedSequence([seed, t, m]) with small m.
(`observations.source: synthetic` runs go through `osse.py` and the ERA5 reader; `observe_truth`
is the direct H·truth + noise shortcut kept for tests of the core.)
"""

from __future__ import annotations

import numpy as np

from ensemble_da.channels import Normalization
from ensemble_da.config import ObservationsConfig
from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators import ObservationOperator

__all__ = ["random_locations", "observe_truth", "channel_sigmas", "TRUTH_STREAM", "OBS_STREAM", "truth_rng", "obs_rng"]

TRUTH_STREAM = 2**31 - 1
OBS_STREAM = 2**31 - 2


def truth_rng(seed: int, t_index: int) -> np.random.Generator:
    """The generator of the truth at analysis time `t_index`."""
    return np.random.default_rng(np.random.SeedSequence([seed, t_index, TRUTH_STREAM]))


def obs_rng(seed: int, t_index: int) -> np.random.Generator:
    """The generator of observation locations, noise and held-out flags at `t_index`."""
    return np.random.default_rng(np.random.SeedSequence([seed, t_index, OBS_STREAM]))


def random_locations(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`n` points uniform on the sphere: (lat, lon) in degrees."""
    lat = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    return lat, rng.uniform(0.0, 360.0, n)


def channel_sigmas(cfg: ObservationsConfig, channels: list[str]) -> np.ndarray:
    """Observation error std per channel from `observations.sigma`; InputError if one is missing."""
    missing = [c for c in channels if c not in cfg.sigma]
    if missing:
        raise InputError(f"observations.sigma has no value for channel(s) {missing}")
    sig = np.array([cfg.sigma[c] for c in channels], dtype=np.float64)
    if not np.all(sig > 0):
        raise InputError(f"observations.sigma must be > 0, got {dict(zip(channels, sig.tolist()))}")
    return sig


def observe_truth(
    truth: np.ndarray,
    time: np.datetime64,
    lat: np.ndarray,
    lon: np.ndarray,
    grid: HealpixGrid,
    normalization: Normalization,
    cfg: ObservationsConfig,
    rng: np.random.Generator,
) -> ObservationSet:
    """Observe `truth` (channel, cell; physical) at (lat, lon), channels cycled over `cfg.channels`.

    Values are H·truth + N(0, σ_c²); a `cfg.heldout_fraction` of them is flagged held out.
    """
    n = len(lat)
    names = np.array(cfg.channels)[np.arange(n) % len(cfg.channels)]
    sigma = channel_sigmas(cfg, list(cfg.channels))[np.arange(n) % len(cfg.channels)]
    template = ObservationSet(time=time, lat=lat, lon=lon, channel=names, value=np.zeros(n), sigma=sigma)
    op = ObservationOperator.build(template, grid, normalization, cfg.operator)
    value = op.observe(np.asarray(truth, dtype=np.float64)[None])[0] + rng.standard_normal(n) * sigma
    obs = ObservationSet(time=time, lat=lat, lon=lon, channel=names, value=value, sigma=sigma)
    return obs.with_heldout(cfg.heldout_fraction, rng)
