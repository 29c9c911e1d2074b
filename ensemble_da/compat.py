"""The seed sketch's calls (seed/000_e32bf30e7bf9bccf.txt) as a thin layer over ours.

    model = load_custom_model_with_regression_guidance(checkpoint_path)   # or RegressionGuidedModel(denoiser)
    model.set_regression_guidance(observation_data, observation_locations,
                                  observation_variables, observation_uncertainty, guidance_scale)
    output, coords = model.sample(batch, seed=42)

What changed from the sketch (README "Migrating from the regression-guidance sketch"):
`observation_uncertainty` is in physical units and is used (scalar, per variable, or per
observation); locations are pixel indices in the model's own order (HEALPIX_PAD_XY for cBottle,
NEST otherwise); the guidance is ours, MMPS by default: the SDA-form `regression` (γ = 0.01)
diverges for observation errors below ~0.1 of a channel's scale (the sketch's 0.1 K on T850 is
≈ 0.02) and is over-confident above it (README, measured on an exact prior); `sample` draws
one member per batch row, member m from SeedSequence([seed, 0, m]), and returns physical values
(batch, channel, 1, cell) in NEST order with the `Coords` that say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.operators import ObservationOperator
from ensemble_da.posterior import sample_posterior
from ensemble_da.priors.base import Denoiser

__all__ = [
    "Coords",
    "RegressionGuidedModel",
    "load_custom_model_with_regression_guidance",
    "load_era5_for_regression_guidance",
    "synthetic_regression_guidance_setup",
]


@dataclass(frozen=True)
class Coords:
    """What `sample`'s output axes mean: (batch, channel, time, cell), cells in `pixel_order`."""

    channels: tuple[str, ...]
    nside: int
    pixel_order: str = "nest"


class RegressionGuidedModel:
    """A denoiser with the sketch's `set_regression_guidance` / `sample` calls.

    Parameters
    ----------
    denoiser : Denoiser
    sampler : mapping, optional
        `SamplerConfig` keys (default: 18 Heun steps on σ ∈ [denoiser.sigma_min, denoiser.sigma_max],
        cBottle's own schedule).
    """

    def __init__(self, denoiser: Denoiser, sampler: Mapping[str, Any] | None = None):
        self.denoiser = denoiser
        self.sampler = {"steps": 18, "sigma_min": denoiser.sigma_min, "sigma_max": denoiser.sigma_max, **(sampler or {})}
        self.pixel_order = "pad_xy" if type(denoiser).__name__ == "CBottleDenoiser" else "nest"
        self.operator: ObservationOperator | None = None
        self.guidance: dict[str, Any] = {"method": "mmps"}

    @property
    def grid(self) -> HealpixGrid:
        return self.denoiser.grid

    @property
    def channels(self) -> list[str]:
        return list(self.denoiser.normalization.channels)

    def to_nest(self, locations: np.ndarray) -> np.ndarray:
        """Pixel indices in the model's order → NEST indices."""
        locations = np.asarray(locations, dtype=np.int64)
        if self.pixel_order == "pad_xy":
            from ensemble_da.priors.cbottle import nest_to_pad_xy

            bad = (locations < 0) | (locations >= self.grid.npix)
            if bad.any():
                raise InputError(f"observation location {int(locations[bad][0])} is outside the grid (0..{self.grid.npix - 1})")
            return nest_to_pad_xy(self.grid.nside)[locations]
        return locations

    def from_nest(self, nest: np.ndarray) -> np.ndarray:
        """NEST indices → pixel indices in the model's order (the inverse of `to_nest`)."""
        nest = np.asarray(nest, dtype=np.int64)
        if self.pixel_order == "pad_xy":
            from ensemble_da.priors.cbottle import pad_xy_to_nest

            return pad_xy_to_nest(self.grid.nside)[nest]
        return nest

    def set_regression_guidance(
        self,
        observation_data,
        observation_locations,
        observation_variables: Sequence[str],
        observation_uncertainty: float | Sequence[float] | np.ndarray = 0.1,
        guidance_scale: float = 1.0,
        method: str = "mmps",
    ) -> None:
        """Observations [num_obs, num_variables] (physical units) at pixel indices [num_obs] of
        the model's order; NaN entries are skipped. `observation_uncertainty` (physical units):
        a scalar, one value per variable, or an array [num_obs, num_variables]. `method`: `mmps`
        (default) or `regression`, whose likelihood score `guidance_scale` multiplies."""
        if method not in ("mmps", "regression", "dps"):
            raise InputError(f"method must be mmps, regression or dps, got {method!r}")
        if method == "mmps" and guidance_scale != 1.0:
            raise InputError("guidance_scale applies to method='regression'; MMPS has no scale")
        data = np.asarray(torch.as_tensor(observation_data).detach().cpu().numpy() if torch.is_tensor(observation_data) else observation_data, dtype=np.float64)
        locs = np.asarray(torch.as_tensor(observation_locations).cpu().numpy(), dtype=np.int64).reshape(-1)
        variables = list(observation_variables)
        if data.ndim == 1:
            data = data[:, None]
        if data.shape != (len(locs), len(variables)):
            raise InputError(f"observation_data has shape {data.shape}, expected (num_obs={len(locs)}, num_variables={len(variables)})")
        sigma = np.broadcast_to(np.asarray(observation_uncertainty, dtype=np.float64), data.shape)
        keep = np.isfinite(data)
        cells = np.broadcast_to(self.to_nest(locs)[:, None], data.shape)
        names = np.broadcast_to(np.asarray(variables, dtype=str)[None, :], data.shape)
        self.operator = ObservationOperator.at_cells(
            cells[keep], names[keep], data[keep], sigma[keep], self.grid, self.denoiser.normalization
        )
        self.guidance = {"method": method, "scale": float(guidance_scale)}

    def sample(self, batch: Mapping[str, Any] | int, seed: int | None = None) -> tuple[torch.Tensor, Coords]:
        """One posterior member per batch row: (physical values (batch, channel, 1, cell) NEST, Coords).

        `batch` is read for its size ("target" or "second_of_day") and its time ("second_of_day",
        "day_of_year" counted from 0 as cBottle's batches do); its "target", "labels" and
        "condition" values are not used (the label and SST are set when the model is loaded).
        An int is a batch size with no time (an unconditional model). Without
        `set_regression_guidance` it samples the prior.
        """
        if isinstance(batch, int):
            batch = {"target": torch.empty(batch, 0)}
        if not isinstance(batch, Mapping) or not ("second_of_day" in batch or "target" in batch):
            raise InputError("sample(batch): batch must be a member count or a dict with 'target' or 'second_of_day'")
        n = int(len(batch["second_of_day"]) if "second_of_day" in batch else batch["target"].shape[0])
        condition = None
        if "second_of_day" in batch and "day_of_year" in batch:
            sod, doy = torch.as_tensor(batch["second_of_day"]).reshape(-1), torch.as_tensor(batch["day_of_year"]).reshape(-1)
            if not (torch.all(sod == sod[0]) and torch.all(doy == doy[0])):
                raise InputError("all rows of a batch must share one analysis time")
            condition = {"second_of_day": float(sod[0]), "day_of_year": float(doy[0]) + 1.0}
        x = sample_posterior(
            self.denoiser,
            self.operator,
            n,
            0 if seed is None else int(seed),
            sampler=self.sampler,
            guidance=self.guidance,
            condition=condition,
        )
        return torch.as_tensor(x)[:, :, None, :], Coords(tuple(self.channels), self.grid.nside, "nest")


def load_custom_model_with_regression_guidance(
    checkpoint_path: str | Sequence[str],
    model_name: str | None = None,
    sigma_thresholds: Sequence[float] = (),
    label: str = "icon",
    sst: float | np.ndarray | str | None = None,
    device: str = "cpu",
) -> RegressionGuidedModel:
    """A cBottle checkpoint (or experts, highest σ first) as a `RegressionGuidedModel`.
    `model_name` is accepted for the sketch's signature and not used; `sst` conditions SST
    models: K per NEST cell (NaN = land), a constant, or a NetCDF/zarr file (InputError if the
    model needs it and it is missing)."""
    from ensemble_da.priors.cbottle import load_cbottle

    paths = [checkpoint_path] if isinstance(checkpoint_path, str) else list(checkpoint_path)
    return RegressionGuidedModel(load_cbottle(paths, sigma_thresholds, label, sst, device))


def load_era5_for_regression_guidance(
    era5_file_path: str | Sequence[str],
    observation_variables: Sequence[str],
    batch_info: Any = None,
    num_pixels: int = 1000,
    *,
    model: RegressionGuidedModel,
    time: str | np.datetime64 | None = None,
    seed: int = 0,
    time_tolerance_hours: float = 3.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ERA5 values of `observation_variables` at `num_pixels` random cells, from any ERA5
    layout our readers take, regridded bilinearly to the cell centres: (observation_data
    [num_pixels, num_variables] physical units, observation_locations [num_pixels] in the model's
    pixel order). `batch_info` (optional) is checked to hold the variables."""
    from ensemble_da.obs.era5 import GriddedSource, expand_paths

    if batch_info is not None:
        missing = [v for v in observation_variables if v not in list(batch_info.channels)]
        if missing:
            raise InputError(f"variables {missing} are not channels of the model ({list(batch_info.channels)})")
    grid = model.grid
    if not 0 < num_pixels <= grid.npix:
        raise InputError(f"num_pixels must be in 1..{grid.npix}, got {num_pixels}")
    with GriddedSource.open(expand_paths(era5_file_path, "era5_file_path")) as src:
        src.require(observation_variables)
        t = np.datetime64(time, "ns") if time is not None else src.variables[0].times[0]
        fields = src.to_healpix(list(observation_variables), [t], grid, time_tolerance_hours)[0]
    nest = np.sort(np.random.default_rng(seed).choice(grid.npix, num_pixels, replace=False))
    locations = model.from_nest(nest)
    return torch.as_tensor(fields[:, nest].T.copy()), torch.as_tensor(locations)


def synthetic_regression_guidance_setup(
    model: RegressionGuidedModel,
    observation_variables: Sequence[str],
    num_obs: int = 100,
    observation_uncertainty: float = 0.5,
    guidance_scale: float = 1.0,
    seed: int = 0,
    batch_size: int = 1,
    method: str = "mmps",
) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """The sketch's "synthetic" set-up done as an OSSE: a truth drawn from the model's own prior,
    observed at `num_obs` random pixels with N(0, uncertainty²) noise, guidance set on the model.
    Returns (truth (channel, cell) NEST physical, a batch for `model.sample`)."""
    truth = sample_posterior(model.denoiser, None, [0], seed + 1_000_003, sampler=model.sampler, guidance="none")[0]
    rng = np.random.default_rng(seed)
    nest = rng.choice(model.grid.npix, num_obs, replace=False)
    ch = model.denoiser.normalization.index(list(observation_variables))
    data = truth[ch][:, nest].T + rng.normal(0.0, observation_uncertainty, (num_obs, len(ch)))
    locations = model.from_nest(nest)
    model.set_regression_guidance(data, locations, observation_variables, observation_uncertainty, guidance_scale, method)
    batch = {
        "target": torch.zeros(batch_size, len(model.channels), 1, model.grid.npix),
        "second_of_day": torch.zeros(batch_size),
        "day_of_year": torch.zeros(batch_size),
    }
    return truth, batch
