"""A small HEALPix U-Net denoiser with EDM preconditioning (Karras et al. 2022, Table 1).

The network `F_θ` acts on fields with shape (batch, channel, cell) in HEALPix NEST order and is
wrapped as the EDM denoiser

    D(z, σ) = c_skip(σ) · z + c_out(σ) · F_θ(c_in(σ) · z, c_noise(σ))
    c_skip = σ_d² / (σ² + σ_d²),  c_out = σ σ_d / sqrt(σ² + σ_d²),
    c_in = 1 / sqrt(σ² + σ_d²),  c_noise = ln(σ) / 4,

with σ_d (`sigma_data`) the standard deviation of the normalised training data.

Operations on the sphere:
- convolution: each cell gathers itself and its 8 neighbours from `healpy.get_all_neighbours`
  (NEST); a missing neighbour (the 8 cells per base resolution where only 7 exist) is replaced
  by the cell itself. A 3×3-like kernel with weight (out, in, 9) is applied to that stencil;
- pooling: NEST children of cell p are 4p … 4p+3, so coarsening is a mean over groups of 4
  consecutive cells and refinement repeats each cell 4 times;
- every block receives a noise-level embedding (Fourier features of c_noise → MLP) as a
  scale/shift (FiLM), plus optional conditioning on day of year and second of day (sin/cos;
  all zeros with a "present" flag 0 when not given, so an unconditional call is well defined);
- the cell-centre unit vectors are appended as 3 static input channels, so the network knows
  where it is (the climate depends on latitude and land/sea).

The network works at every nside divisible by 2**(levels-1); neighbour tables are built per
nside on first use and cached.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import healpy as hp
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["UNetConfig", "HealpixUNet", "EDMPrecond", "condition_features", "previous_features", "healpix_stencil"]


@dataclass
class UNetConfig:
    """Architecture of `HealpixUNet` (stored in checkpoints as JSON).

    Attributes
    ----------
    channels : int
        Number of state channels (input = output).
    widths : list of int
        Feature width at each resolution level, finest first; len(widths) = number of levels.
    blocks : int
        Residual blocks per level on the way down (and up).
    emb_dim : int
        Width of the noise/conditioning embedding.
    conditional : bool
        Whether day-of-year / second-of-day conditioning is wired in.
    window : int
        Consecutive times L in one state (1: a single-time prior). A window net's state is
        (batch, L·C, cell), slot j's channel c at j·C + c, so `channels` = L·C.
    previous : bool
        Whether the net also reads the clean state just before the window (C channels) and a
        present flag as extra input channels (`extra` of `forward`; zeros when not given).
    """

    channels: int = 6
    widths: list[int] = field(default_factory=lambda: [32, 64, 96])
    blocks: int = 1
    emb_dim: int = 64
    conditional: bool = True
    window: int = 1
    previous: bool = False

    @property
    def extra_channels(self) -> int:
        """Input channels besides the noisy state: C + 1 (the previous state and its flag) or 0."""
        return self.channels // self.window + 1 if self.previous else 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_STENCILS: dict[tuple[int, str], torch.Tensor] = {}


def healpix_stencil(nside: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Indices of (self, 8 neighbours) for every NEST cell, with shape (cell, 9); cached.

    Missing neighbours (-1 from healpy) are replaced by the cell itself.
    """
    key = (nside, str(device))
    if key not in _STENCILS:
        cells = np.arange(hp.nside2npix(nside))
        nb = hp.get_all_neighbours(nside, cells, nest=True).T  # (cell, 8)
        nb = np.where(nb < 0, cells[:, None], nb)
        idx = np.concatenate([cells[:, None], nb], axis=1)
        _STENCILS[key] = torch.as_tensor(idx, dtype=torch.long, device=device)
    return _STENCILS[key]


def _nside_of(ncell: int) -> int:
    nside = int(round(math.sqrt(ncell / 12)))
    if 12 * nside * nside != ncell:
        raise ValueError(f"{ncell} cells is not a HEALPix grid (12 * nside**2)")
    return nside


class HealpixConv(nn.Module):
    """Neighbour convolution on a NEST grid: (batch, in, cell) -> (batch, out, cell)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin * 9))
        self.bias = nn.Parameter(torch.zeros(cout))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, n = x.shape
        idx = healpix_stencil(_nside_of(n), x.device)
        g = x[:, :, idx]  # (b, c, n, 9)
        g = g.permute(0, 2, 1, 3).reshape(b, n, c * 9)
        return (g @ self.weight.t() + self.bias).transpose(1, 2)


class PointwiseLinear(nn.Module):
    """A per-cell linear map of the channels: (batch, in, cell) -> (batch, out, cell)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight @ x + self.bias[:, None]


def _pool(x: torch.Tensor) -> torch.Tensor:
    b, c, n = x.shape
    return x.reshape(b, c, n // 4, 4).mean(-1)


def _unpool(x: torch.Tensor) -> torch.Tensor:
    return x.repeat_interleave(4, dim=-1)


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, c), c)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, FiLM by the embedding in between, residual connection."""

    def __init__(self, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = HealpixConv(cin, cout)
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = _norm(cout)
        self.conv2 = HealpixConv(cout, cout)
        self.skip = PointwiseLinear(cin, cout) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb).unsqueeze(-1).chunk(2, dim=1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        return self.skip(x) + self.conv2(h)


def condition_features(
    condition: Mapping[str, Any] | None, batch: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Conditioning features with shape (batch, 5): sin/cos of day of year and second of day, flag.

    `condition` maps "day_of_year" (1–366) and/or "second_of_day" (0–86400) to arrays of shape
    (batch,) or scalars; None (or missing keys) gives zeros and flag 0 for those entries.
    """
    out = torch.zeros(batch, 5, device=device, dtype=dtype)
    if not condition:
        return out
    present = False
    for key, period, col in (("day_of_year", 365.25, 0), ("second_of_day", 86400.0, 2)):
        if condition.get(key) is None:
            continue
        v = torch.as_tensor(np.asarray(condition[key], dtype=np.float64), device=device).to(dtype)
        v = v.expand(batch) if v.ndim == 0 else v
        ang = 2 * math.pi * v / period
        out[:, col] = torch.sin(ang)
        out[:, col + 1] = torch.cos(ang)
        present = True
    if present:
        out[:, 4] = 1.0
    return out


class HealpixUNet(nn.Module):
    """The raw network F_θ(x, c_noise, cond): (batch, channels, cell) -> same shape.

    Parameters
    ----------
    config : UNetConfig
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        w, e = config.widths, config.emb_dim
        self.register_buffer("freqs", torch.randn(e // 2) * 4.0)  # Fourier features of c_noise
        self.emb = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.cond = nn.Linear(5, e, bias=False) if config.conditional else None
        self.inp = HealpixConv(config.channels + config.extra_channels + 3, w[0])
        self.down = nn.ModuleList()
        for i, width in enumerate(w):
            cin = w[i - 1] if i > 0 else w[0]
            blocks = [ResBlock(cin if j == 0 else width, width, e) for j in range(config.blocks)]
            self.down.append(nn.ModuleList(blocks))
        self.up = nn.ModuleList()
        for i in reversed(range(len(w) - 1)):
            blocks = [ResBlock((w[i + 1] + w[i]) if j == 0 else w[i], w[i], e) for j in range(config.blocks)]
            self.up.append(nn.ModuleList(blocks))
        self.out_norm = _norm(w[0])
        self.out = HealpixConv(w[0], config.channels)
        nn.init.zeros_(self.out.weight)
        self._pos: dict[tuple[int, str, torch.dtype], torch.Tensor] = {}

    @property
    def levels(self) -> int:
        return len(self.config.widths)

    def _position(self, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (n, str(device), dtype)
        if key not in self._pos:
            nside = _nside_of(n)
            vec = np.stack(hp.pix2vec(nside, np.arange(n), nest=True), axis=0)
            self._pos[key] = torch.as_tensor(vec, device=device, dtype=dtype)
        return self._pos[key]

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None,
                extra: torch.Tensor | None = None) -> torch.Tensor:
        """F_θ for x (batch, channels, cell); `extra` (batch, extra_channels, cell) or None (zeros)."""
        b, c, n = x.shape
        nside = _nside_of(n)
        if nside % (2 ** (self.levels - 1)):
            raise ValueError(f"nside {nside} is not divisible by 2**{self.levels - 1} (levels of this network)")
        ang = c_noise.reshape(-1, 1).to(x.dtype) * self.freqs.to(x.dtype)
        emb = torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)
        if self.cond is not None and cond is not None:
            emb = emb + self.cond(cond.to(x.dtype))
        emb = self.emb(emb)
        pos = self._position(n, x.device, x.dtype).expand(b, -1, -1)
        parts = [x, pos]
        if self.config.extra_channels:
            parts.insert(1, torch.zeros(b, self.config.extra_channels, n, dtype=x.dtype, device=x.device)
                         if extra is None else extra.to(x.dtype))
        h = self.inp(torch.cat(parts, dim=1))
        skips = []
        for i, blocks in enumerate(self.down):
            if i > 0:
                h = _pool(h)
            for blk in blocks:
                h = blk(h, emb)
            skips.append(h)
        skips.pop()
        for blocks in self.up:
            h = torch.cat([_unpool(h), skips.pop()], dim=1)
            for blk in blocks:
                h = blk(h, emb)
        return self.out(F.silu(self.out_norm(h)))


class EDMPrecond(nn.Module):
    """EDM-preconditioned denoiser D(z, σ) around a `HealpixUNet` (Karras et al. 2022, Table 1).

    Parameters
    ----------
    net : HealpixUNet
    sigma_data : float
        Standard deviation of the normalised training data.
    """

    def __init__(self, net: HealpixUNet, sigma_data: float = 1.0):
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)

    def forward(
        self, z: torch.Tensor, sigma: torch.Tensor, condition: Mapping[str, Any] | None = None,
        previous: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoised z with the shape of `z` (batch, channel, cell); σ with shape (batch,) or scalar;
        `previous` (batch, C, cell) normalised: the state before the window (nets with `previous`)."""
        sigma = torch.as_tensor(sigma, dtype=z.dtype, device=z.device)
        sigma = sigma.expand(z.shape[0]) if sigma.ndim == 0 else sigma.reshape(-1)
        cond = None
        if self.net.cond is not None:
            cond = condition_features(condition, z.shape[0], z.device, z.dtype)
        return self.precondition(z, sigma, cond, previous_features(previous, z) if self.net.config.previous else None)

    def precondition(self, z: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None,
                     extra: torch.Tensor | None = None) -> torch.Tensor:
        """D(z, σ) from precomputed conditioning features `cond` (batch, 5) or None and extra input
        channels `extra` (batch, C + 1, cell) or None (training path)."""
        s = sigma.reshape(-1, 1, 1)
        sd2 = self.sigma_data**2
        c_skip = sd2 / (s**2 + sd2)
        c_out = s * self.sigma_data / torch.sqrt(s**2 + sd2)
        c_in = 1.0 / torch.sqrt(s**2 + sd2)
        c_noise = torch.log(sigma) / 4.0
        f = self.net(c_in * z, c_noise, cond, extra)
        return c_skip * z + c_out * f.to(z.dtype)


def previous_features(previous: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """The extra input of a net with `previous`: (batch, C + 1, cell), the normalised state before
    the window and a flag channel of ones; None (no state given) is read by the net as zeros."""
    if previous is None:
        return None
    p = torch.as_tensor(previous, device=like.device).to(like.dtype)
    return torch.cat([p, torch.ones(p.shape[0], 1, p.shape[2], dtype=like.dtype, device=like.device)], dim=1)
