"""Learned-denoiser checkpoints: safetensors weights + a JSON description (`model.kind: checkpoint`).

A checkpoint is a pair of files with a common stem, `<stem>.safetensors` (the EMA weights of
an `EDMPrecond(HealpixUNet)`) and `<stem>.json`:

    {"format": "ensemble_da.checkpoint/1",
     "network": {...UNetConfig...}, "sigma_data": float,
     "channels": [...], "center": [...], "scale": [...], "nside": int,
     "sigma_min": float, "sigma_max": float,
     "training_data_hash": str, "training": {...}}

`load_checkpoint` turns it into a `LearnedDenoiser`, which implements the `Denoiser` protocol
(DESIGN.md §3, priors/base.py). Without a path, the checkpoint shipped in
`ensemble_da/assets/` (trained on the SPEEDY climate) is loaded.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ensemble_da.channels import Normalization
from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid
from ensemble_da.priors.base import Condition
from ensemble_da.priors.network import EDMPrecond, HealpixUNet, UNetConfig

__all__ = [
    "FORMAT",
    "SHIPPED_STEM",
    "LearnedDenoiser",
    "save_checkpoint",
    "load_checkpoint",
    "shipped_checkpoint",
    "shipped_heldout_sample",
    "resolve_checkpoint",
    "load_for_config",
]

FORMAT = "ensemble_da.checkpoint/1"
SHIPPED_STEM = "speedy_unet"
SHIPPED_SAMPLE = "speedy_heldout.npz"


class LearnedDenoiser:
    """A trained EDM denoiser on a HEALPix NEST grid; implements `Denoiser`.

    Parameters
    ----------
    model : EDMPrecond
        The preconditioned network (weights frozen: gradients flow only to the input, which is
        what guidance needs for its vector-Jacobian products).
    grid : HealpixGrid
    normalization : Normalization
    sigma_min, sigma_max : float
        Noise range the network was trained for.
    condition : mapping, optional
        Default conditioning (day_of_year, second_of_day) used when a call passes none.
    meta : dict
        The checkpoint's JSON description.
    """

    def __init__(
        self,
        model: EDMPrecond,
        grid: HealpixGrid,
        normalization: Normalization,
        sigma_min: float,
        sigma_max: float,
        condition: Condition | None = None,
        meta: Mapping[str, Any] | None = None,
    ):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.grid = grid
        self.normalization = normalization
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.condition = condition
        self.meta = dict(meta or {})

    @property
    def sigma_data(self) -> float:
        return self.model.sigma_data

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def with_condition(self, condition: Condition | None) -> "LearnedDenoiser":
        """The same network with a different default condition (e.g. the analysis time's)."""
        return LearnedDenoiser(
            self.model, self.grid, self.normalization, self.sigma_min, self.sigma_max, condition, self.meta
        )

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, condition: Condition | None = None) -> torch.Tensor:
        """Denoised estimate (batch, channel, cell) of normalised `z`; σ with shape (batch,)."""
        if z.ndim != 3 or z.shape[1] != len(self.normalization.channels) or z.shape[2] != self.grid.npix:
            raise ValueError(
                f"expected z with shape (batch, {len(self.normalization.channels)}, {self.grid.npix}), got {tuple(z.shape)}"
            )
        param = next(self.model.parameters())
        out = self.model(z.to(param.dtype), sigma.to(param.dtype), condition if condition is not None else self.condition)
        return out.to(z.dtype)

    def __repr__(self) -> str:
        return (
            f"LearnedDenoiser(channels={list(self.normalization.channels)}, nside={self.grid.nside}, "
            f"sigma=[{self.sigma_min:g}, {self.sigma_max:g}], sigma_data={self.sigma_data:.3f})"
        )


def _stem(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        return path.with_suffix("")
    if path.is_dir():
        found = sorted(path.glob("*.json"))
        if len(found) != 1:
            raise InputError(f"{path}: expected exactly one checkpoint .json in the folder, found {len(found)}")
        return found[0].with_suffix("")
    return path


def save_checkpoint(
    stem: str | Path,
    model: EDMPrecond,
    normalization: Normalization,
    nside: int,
    sigma_min: float,
    sigma_max: float,
    training_data_hash: str,
    training: Mapping[str, Any] | None = None,
) -> Path:
    """Write `<stem>.safetensors` and `<stem>.json`; returns the JSON path."""
    from safetensors.torch import save_file

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.net.state_dict().items()}
    save_file(tensors, str(stem.with_suffix(".safetensors")), metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "network": model.net.config.to_dict(),
        "sigma_data": float(model.sigma_data),
        "channels": list(normalization.channels),
        "center": [float(v) for v in normalization.center],
        "scale": [float(v) for v in normalization.scale],
        "nside": int(nside),
        "sigma_min": float(sigma_min),
        "sigma_max": float(sigma_max),
        "training_data_hash": str(training_data_hash),
        "training": dict(training or {}),
    }
    stem.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return stem.with_suffix(".json")


def shipped_checkpoint() -> Path:
    """Stem of the packaged checkpoint (`ensemble_da/assets/speedy_unet.{json,safetensors}`)."""
    return Path(str(resources.files("ensemble_da") / "assets" / SHIPPED_STEM))


def shipped_heldout_sample() -> Path:
    """The packaged held-out SPEEDY states (`.npz`, readable by `ensemble_da.data.read_speedy`)."""
    return Path(str(resources.files("ensemble_da") / "assets" / SHIPPED_SAMPLE))


def resolve_checkpoint(path: str | Path | None) -> Path:
    """Checkpoint stem for a config `model.path` (None: the shipped checkpoint)."""
    return shipped_checkpoint() if path in (None, "", "shipped") else _stem(path)


def load_checkpoint(path: str | Path | None = None, device: str | torch.device = "cpu") -> LearnedDenoiser:
    """Load a checkpoint (stem, .json, .safetensors or folder; None: shipped) as a `LearnedDenoiser`.

    Raises InputError when a file is missing, the JSON is not a checkpoint description, or the
    weights do not match the described network.
    """
    from safetensors.torch import load as load_tensors

    stem = resolve_checkpoint(path)
    js, st = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    for f in (js, st):
        if not f.is_file():
            raise InputError(f"checkpoint file not found: {f}")
    try:
        meta = json.loads(js.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{js}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{js}: not an ensemble_da checkpoint description (format {FORMAT!r} expected)")
    missing = [k for k in ("network", "sigma_data", "channels", "center", "scale", "nside", "sigma_min", "sigma_max") if k not in meta]
    if missing:
        raise InputError(f"{js}: missing key(s) {missing}")
    try:
        config = UNetConfig(**meta["network"])
    except TypeError as exc:
        raise InputError(f"{js}: bad network description ({exc})") from None
    net = HealpixUNet(config)
    weights = st.read_bytes()  # read once: loaded, and hashed for what --resume compares (the weights, not the path)
    meta["weights_sha256"] = hashlib.sha256(weights).hexdigest()[:16]
    try:
        net.load_state_dict(load_tensors(weights))
    except (RuntimeError, Exception) as exc:  # noqa: BLE001 - a mismatched or corrupt file is bad input
        raise InputError(f"{st}: weights do not match the network in {js.name} ({str(exc).splitlines()[0]})") from None
    model = EDMPrecond(net, sigma_data=float(meta["sigma_data"])).to(device)
    norm = Normalization(tuple(meta["channels"]), np.asarray(meta["center"]), np.asarray(meta["scale"]))
    return LearnedDenoiser(
        model, HealpixGrid(int(meta["nside"])), norm, float(meta["sigma_min"]), float(meta["sigma_max"]), meta=meta
    )


def load_for_config(model, grid, device: str | torch.device = "cpu") -> LearnedDenoiser:
    """`model.kind: checkpoint`: load `model.path` (None: shipped) and check it fits the run.

    InputError when `grid.nside` differs from the checkpoint's, or when `model.channels` is given
    (not None) and differs from the checkpoint's channels.
    """
    den = load_checkpoint(model.path, device)
    if grid.nside != den.grid.nside:
        raise InputError(f"checkpoint {resolve_checkpoint(model.path)} is for nside {den.grid.nside}, grid.nside is {grid.nside}")
    if model.channels is not None and list(model.channels) != list(den.normalization.channels):
        raise InputError(
            f"model.channels {list(model.channels)} differ from the checkpoint's {list(den.normalization.channels)}"
        )
    return den
