"""The cBottle adapter (`model.kind: cbottle`): NVIDIA's cBottle as our `Denoiser` (DESIGN.md §3).

cBottle (NVlabs/cBottle) is an EDM-preconditioned HEALPix network, `EDMPrecond.forward(x, sigma,
class_labels, condition, second_of_day=, day_of_year=)`, with x of shape (batch, channel, time,
pixel) in earth2grid's `HEALPIX_PAD_XY` layout (`XY(origin=N, clockwise=True)`) and an output
object whose `.out` is the denoised state. A checkpoint is a zip with `net_state.pth`,
`model.json`, `batch_info.json` (channels, `center`, `scales`) and `metadata.json`; physical
values are `x · scales + center`, which is exactly our `Normalization`, so channel names (cBottle
spells them as we do: `T850`, `Z500`, `tas`, ...) and normalisation come from `batch_info`.

What the adapter does at our boundary, per call (all members of a batch share σ):
- NEST (batch, channel, cell) → PAD_XY (batch, channel, 1, cell) by a permutation precomputed
  from the pixel's face and in-face coordinates (`nest_to_pad_xy`), and back;
- the expert: a mixture lists checkpoints highest σ first with decreasing `sigma_thresholds`;
  expert i denoises σ ≥ thresholds[i], the last one the rest (cBottle's MixtureOfExperts);
- labels: one-hot over 1024 classes, 0 = ICON, 1 = ERA5. With `era5`, the channels ERA5 lacks
  (rlut, rsut, rsds) are zeroed in the input and their output comes from a second,
  ICON-labelled call, as cBottle does: two network calls per denoiser evaluation (twice the cost);
- condition: monthly SST, `(sst − 287.6897) / 15.5862`, land (NaN) filled with 290 K, from a
  NetCDF/zarr file regridded bilinearly to the cell centres, or a constant;
- time: `second_of_day` as ours, `day_of_year` counted from 0 at Jan 1 00 UTC (ours from 1),
  each of shape (batch, time) as cBottle's calendar embedding takes them.
Noise, sampling and guidance are ours: per-member latents from `member_generator`, first-order
VJPs through the network, the forward in bf16 under CUDA autocast, guidance math in float32.
The σ range is the network's (`sigma_min`, `sigma_max` attributes) where it sets one, else
cBottle's sampler defaults 0.02 and 200.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ensemble_da.channels import Normalization
from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid
from ensemble_da.priors.base import Condition

__all__ = [
    "CBottleDenoiser",
    "load_cbottle",
    "load_for_config",
    "nest_to_pad_xy",
    "pad_xy_to_nest",
    "sst_condition",
    "LABELS",
    "ERA5_MISSING",
]

INSTALL = "pip install 'cbottle @ git+https://github.com/NVlabs/cBottle' (Python >= 3.12; it needs earth2grid)"
N_CLASSES = 1024
LABELS = ("icon", "era5")
ERA5_MISSING = ("rlut", "rsut", "rsds")
SST_MEAN, SST_SCALE, SST_LAND_FILL = 287.6897, 15.5862, 290.0
DEFAULT_SIGMA_MIN, DEFAULT_SIGMA_MAX = 0.02, 200.0


def nest_to_pad_xy(nside: int) -> np.ndarray:
    """`perm` with x_pad_xy = x_nest[..., perm], shape (12·nside²,).

    In NEST, pixel p of face f = p // nside² has in-face coordinates (ix, iy) interleaved in its
    bits, (0, 0) the face's south corner, ix growing towards its east corner, iy towards its west.
    PAD_XY numbers a face row by row from its north corner: index f·n² + n·(n−1−ix) + (n−1−iy).
    """
    n = int(nside)
    p = np.arange(12 * n * n, dtype=np.int64)
    q = p % (n * n)
    ix = np.zeros_like(q)
    iy = np.zeros_like(q)
    for b in range(max(n.bit_length() - 1, 0)):
        ix |= ((q >> (2 * b)) & 1) << b
        iy |= ((q >> (2 * b + 1)) & 1) << b
    target = (p // (n * n)) * n * n + n * (n - 1 - ix) + (n - 1 - iy)
    perm = np.empty_like(p)
    perm[target] = p
    return perm


def pad_xy_to_nest(nside: int) -> np.ndarray:
    """The inverse permutation: x_nest = x_pad_xy[..., inv]."""
    return np.argsort(nest_to_pad_xy(nside))


def _import_cbottle():
    try:
        import cbottle.checkpointing as checkpointing
    except ImportError as exc:
        raise InputError(f"model.kind cbottle needs the cbottle package ({exc}); install it with {INSTALL}") from None
    return checkpointing


class CBottleDenoiser:
    """cBottle experts as a `Denoiser` on a NEST grid (normalised units of `batch_info`).

    Parameters
    ----------
    experts : sequence of torch.nn.Module
        cBottle `EDMPrecond` networks, highest σ first (weights frozen, eval mode).
    sigma_thresholds : sequence of float
        One fewer than experts, decreasing: expert i for σ ≥ thresholds[i], else the last.
    normalization : Normalization
        Channels, `center`, `scales` of the checkpoint's `batch_info`.
    grid : HealpixGrid
    label : "icon" or "era5"
    sst : ndarray of float, shape (cell,), NEST, K, NaN over land; or None (no condition)
    sigma_min, sigma_max : float
    """

    def __init__(
        self,
        experts: Sequence[torch.nn.Module],
        sigma_thresholds: Sequence[float],
        normalization: Normalization,
        grid: HealpixGrid,
        label: str = "icon",
        sst: np.ndarray | None = None,
        sigma_min: float = DEFAULT_SIGMA_MIN,
        sigma_max: float = DEFAULT_SIGMA_MAX,
    ):
        if len(experts) != len(sigma_thresholds) + 1:
            raise InputError(f"cbottle: {len(experts)} experts need {len(experts) - 1} sigma thresholds, got {len(sigma_thresholds)}")
        if any(a <= b for a, b in zip(sigma_thresholds, sigma_thresholds[1:])):
            raise InputError(f"cbottle.sigma_thresholds must decrease (experts highest σ first), got {list(sigma_thresholds)}")
        if label not in LABELS:
            raise InputError(f"cbottle.label must be one of {list(LABELS)}, got {label!r}")
        self.experts = [e.eval().requires_grad_(False) for e in experts]
        self.sigma_thresholds = tuple(float(t) for t in sigma_thresholds)
        self.normalization = normalization
        self.grid = grid
        self.label = label
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        device = self.device
        to_pad = nest_to_pad_xy(grid.nside)
        self._to_pad = torch.as_tensor(to_pad, device=device)
        self._to_nest = torch.as_tensor(np.argsort(to_pad), device=device)
        self._keep = torch.as_tensor(
            [not (label == "era5" and c in ERA5_MISSING) for c in normalization.channels], device=device
        )
        self.second_pass = not bool(self._keep.all())
        self._one_hot = {name: self._label_row(name, device) for name in {label, "icon"}}
        self._condition = None if sst is None else torch.as_tensor(
            sst_condition(sst)[None, None, None, to_pad], dtype=torch.float32, device=device
        )

    @property
    def device(self) -> torch.device:
        return next(self.experts[0].parameters()).device

    def expert_index(self, sigma: float) -> int:
        """Which expert denoises noise level `sigma`."""
        for i, t in enumerate(self.sigma_thresholds):
            if sigma >= t:
                return i
        return len(self.experts) - 1

    @staticmethod
    def _label_row(name: str, device: torch.device) -> torch.Tensor:
        """cBottle's one-hot class label of `name`, shape (1, N_CLASSES)."""
        row = torch.zeros(1, N_CLASSES, device=device)
        row[0, LABELS.index(name)] = 1.0
        return row

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, condition: Condition | None = None) -> torch.Tensor:
        """D(z, σ): z of shape (batch, channel, cell) NEST, normalised; σ (batch,), equal entries.

        One host read of σ per call picks the expert (cBottle does the same).
        """
        b, c, n = z.shape
        if c != len(self.normalization.channels) or n != self.grid.npix:
            raise ValueError(f"expected z with shape (batch, {len(self.normalization.channels)}, {self.grid.npix}), got {tuple(z.shape)}")
        net = self.experts[self.expert_index(float(sigma.reshape(-1)[0]))]
        x = z.to(torch.float32)[..., self._to_pad][:, :, None, :]
        s = sigma.to(torch.float32)
        kwargs = {}
        if condition is not None:
            # cBottle's calendar embedding takes (batch, time) tensors
            kwargs["second_of_day"] = torch.full((b, 1), float(condition["second_of_day"]), device=z.device)
            kwargs["day_of_year"] = torch.full((b, 1), float(condition["day_of_year"]) - 1.0, device=z.device)
        cond = None if self._condition is None else self._condition.expand(b, -1, -1, -1)
        out = net(x.where(self._keep[None, :, None, None], 0.0) if self.second_pass else x, s,
                  class_labels=self._one_hot[self.label].expand(b, -1), condition=cond, **kwargs)
        d = getattr(out, "out", out)
        if self.second_pass:
            icon = net(x, s, class_labels=self._one_hot["icon"].expand(b, -1), condition=cond, **kwargs)
            d = d.where(self._keep[None, :, None, None], getattr(icon, "out", icon))
        return d[:, :, 0, :][..., self._to_nest].to(z.dtype)

    def __repr__(self) -> str:
        return (
            f"CBottleDenoiser(experts={len(self.experts)}, thresholds={list(self.sigma_thresholds)}, nside={self.grid.nside}, "
            f"channels={len(self.normalization.channels)}, label={self.label!r}, sigma=[{self.sigma_min:g}, {self.sigma_max:g}])"
        )


def sst_condition(sst_kelvin: np.ndarray) -> np.ndarray:
    """cBottle's SST encoding: land (NaN) filled with 290 K, then (sst − 287.6897) / 15.5862."""
    sst = np.asarray(sst_kelvin, dtype=np.float64)
    return (np.where(np.isfinite(sst), sst, SST_LAND_FILL) - SST_MEAN) / SST_SCALE


def read_sst(path: str, grid: HealpixGrid) -> np.ndarray:
    """SST (K) from a NetCDF/zarr lat/lon file (ERA5 `sst`/`sea_surface_temperature`, or `tos`),
    its first field, bilinear at the NEST cell centres: (cell,), NaN over land. Give the month
    of the analysis (cBottle is conditioned on monthly-mean SST)."""
    from ensemble_da.obs.era5 import GriddedSource

    with GriddedSource.open([path]) as src:
        src.require(["sst"])
        f = next(v for v in src.variables if v.channel == "sst").field(0)
        lon, lat = grid.lonlat
        if not f.contains(lat, lon).all():
            raise InputError(f"{path}: sst does not cover the globe")
        return f.to_healpix(grid)


def _npix(net: torch.nn.Module, model_config) -> int:
    """Pixels of the network's grid: its `domain` (cBottle's HPX64 U-Net ignores model.json's
    `level`), else 12·4^level."""
    domain = getattr(net, "domain", None)
    if domain is not None and hasattr(domain, "numel"):
        return int(domain.numel())
    return 12 * 4 ** int(model_config.level)


def load_cbottle(
    checkpoints: Sequence[str],
    sigma_thresholds: Sequence[float] = (),
    label: str = "icon",
    sst: np.ndarray | float | str | None = None,
    device: str | torch.device = "cpu",
) -> CBottleDenoiser:
    """Load cBottle checkpoint(s) (highest σ first) as a `CBottleDenoiser`.

    `sst`: SST in K per NEST cell (NaN = land), a constant, a NetCDF/zarr file (`read_sst`), or
    None. InputError when cbottle is not installed, a file is missing or not a cBottle
    checkpoint, the experts disagree on channels or grid, or the model needs the SST condition
    and none is given.
    """
    checkpointing = _import_cbottle()
    nets, info, conds, npix = [], None, set(), set()
    for path in checkpoints:
        try:
            with checkpointing.Checkpoint(path) as ckpt:
                net = ckpt.read_model(map_location=str(device))
                batch_info = ckpt.read_batch_info()
                model_config = ckpt.read_model_config()
        except FileNotFoundError:
            raise InputError(f"cbottle checkpoint not found: {path}") from None
        except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file is bad input
            raise InputError(f"{path}: not a readable cBottle checkpoint ({type(exc).__name__}: {exc})") from None
        if batch_info.scales is None or batch_info.center is None:
            raise InputError(f"{path}: batch_info.json has no center/scales")
        this = (tuple(batch_info.channels), tuple(map(float, batch_info.center)), tuple(map(float, batch_info.scales)))
        if info is not None and this != info:
            raise InputError(f"{path}: channels or normalisation differ from {checkpoints[0]}")
        info = this
        conds.add(int(model_config.condition_channels or 0))
        npix.add(_npix(net, model_config))
        nets.append(net.to(device))
    if len(npix) != 1 or len(conds) != 1:
        raise InputError(f"cbottle experts disagree on grid or condition channels: {checkpoints}")
    grid = HealpixGrid(int(round(np.sqrt(npix.pop() / 12))))
    sst_field = None
    if conds.pop():
        if sst is None:
            raise InputError("this cBottle model is conditioned on SST: set model.cbottle.sst (file) or sst_constant (K)")
        if isinstance(sst, str):
            sst = read_sst(sst, grid)
        sst_field = np.broadcast_to(np.asarray(sst, dtype=np.float64), (grid.npix,)).copy()
    norm = Normalization(info[0], np.asarray(info[1]), np.asarray(info[2]))
    last = nets[-1]
    smin = float(getattr(last, "sigma_min", 0.0) or 0.0)
    smax = float(getattr(last, "sigma_max", float("inf")))
    return CBottleDenoiser(
        nets,
        sigma_thresholds,
        norm,
        grid,
        label,
        sst_field,
        smin if smin > 0 else DEFAULT_SIGMA_MIN,
        smax if np.isfinite(smax) else DEFAULT_SIGMA_MAX,
    )


def load_for_config(model, grid, device: str | torch.device = "cpu") -> CBottleDenoiser:
    """`model.kind: cbottle` from a `ModelConfig`; InputError when grid.nside is not the model's.
    Channels come from the checkpoint's batch_info (`model.channels` is not used)."""
    cfg = model.cbottle
    sst = cfg.sst if cfg.sst is not None else cfg.sst_constant
    den = load_cbottle(cfg.checkpoints, cfg.sigma_thresholds, cfg.label, sst, device)
    if grid is not None and grid.nside != den.grid.nside:
        raise InputError(f"cbottle checkpoint {cfg.checkpoints[0]} is for nside {den.grid.nside}, grid.nside is {grid.nside}")
    return den
