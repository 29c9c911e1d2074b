"""A tiny network with cBottle's calling convention and EDM preconditioning (σ_data 0.5)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class Output:
    out: torch.Tensor
    logits: torch.Tensor | None = None


class HealPixDomain:
    def __init__(self, npix: int):
        self._npix = npix

    def numel(self) -> int:
        return self._npix


class TinyNet(torch.nn.Module):
    """Pixel-mixing MLP: its output depends on the pixel layout, labels, condition and time."""

    def __init__(self, channels: int, cond: int, label_dim: int, hidden: int, npix: int):
        super().__init__()
        self.inp = torch.nn.Linear(channels + cond, hidden)
        self.pix = torch.nn.Linear(npix, npix)
        self.label = torch.nn.Linear(label_dim, hidden, bias=False)
        self.noise = torch.nn.Linear(1, hidden)
        self.time = torch.nn.Linear(2, hidden)
        self.out = torch.nn.Linear(hidden, channels)

    def forward(self, x, c_noise, class_labels=None, second_of_day=None, day_of_year=None):
        b = x.shape[0]
        h = self.inp(x.permute(0, 2, 3, 1))  # (b, t, n, hidden)
        h = self.pix(h.transpose(-1, -2)).transpose(-1, -2)
        emb = self.noise(c_noise.reshape(b, 1))
        if class_labels is not None:
            emb = emb + self.label(class_labels)
        if second_of_day is not None:
            if second_of_day.shape != day_of_year.shape or second_of_day.ndim != 2:
                raise ValueError("second_of_day and day_of_year must both have shape (batch, time)")
            t = torch.stack([second_of_day[:, 0] / 86400.0, day_of_year[:, 0] / 365.0], dim=-1).to(x.dtype)
            emb = emb + self.time(t)
        h = torch.tanh(h + emb[:, None, None, :])
        return Output(self.out(h).permute(0, 3, 1, 2))


class EDMPrecond(torch.nn.Module):
    def __init__(self, model, img_channels: int, label_dim: int, npix: int, sigma_data: float = 0.5,
                 sigma_min: float = 0.0, sigma_max: float = float("inf")):
        super().__init__()
        self.model = model
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.domain = HealPixDomain(npix)
        self.sigma_data = sigma_data
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.time_length = 1

    def forward(self, x, sigma, class_labels=None, condition=None, **model_kwargs) -> Output:
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        c_skip = self.sigma_data**2 / (sigma**2 + self.sigma_data**2)
        c_out = sigma * self.sigma_data / (sigma**2 + self.sigma_data**2).sqrt()
        c_in = 1 / (self.sigma_data**2 + sigma**2).sqrt()
        arg = c_in * x if condition is None else torch.cat([c_in * x, condition.to(torch.float32)], dim=1)
        out = self.model(arg, (sigma.log() / 4).flatten(), class_labels=class_labels, **model_kwargs)
        return dataclasses.replace(out, out=c_skip * x + c_out * out.out.to(torch.float32))
