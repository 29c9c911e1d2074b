"""Learned-denoiser checkpoints: safetensors weights + a JSON description (`model.kind: checkpoint`).

A checkpoint is a pair of files with a common stem, `<stem>.safetensors` (the EMA weights of
an `EDMPrecond(HealpixUNet)`) and `<stem>.json`:

    {"format": "ensemble_da.checkpoint/1",
     "network": {...UNetConfig...}, "sigma_data": float,
     "channels": [...], "center": [...], "scale": [...], "nside": int,
     "sigma_min": float, "sigma_max": float,
     "training_data_hash": str, "training": {...}}

`load_checkpoint` turns it into a `LearnedDenoiser`, which implements the `Denoiser` protocol
(DESIGN.md §3, priors/base.py). A window checkpoint (`network.window` L > 1, trained with
`window: L`) is a prior over L consecutive times: `LearnedDenoiser.window(L, conditioned)` is its
window denoiser (`LearnedWindow`, the interface of `GaussianMarkovPrior.window`) for the
time-aware modes; with `network.previous` it is also conditioned on the state before the window. Without a path, the checkpoint shipped in
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
    "SHIPPED_WINDOW_STEM",
    "LearnedDenoiser",
    "LearnedWindow",
    "save_checkpoint",
    "load_checkpoint",
    "shipped_checkpoint",
    "shipped_heldout_sample",
    "resolve_checkpoint",
    "load_for_config",
]

FORMAT = "ensemble_da.checkpoint/1"
SHIPPED_STEM = "speedy_unet"
SHIPPED_WINDOW_STEM = "speedy_window_unet"  # the learned window prior (L = 2 six-hourly states); `path: shipped-window`
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

    @property
    def window_slots(self) -> int:
        """Consecutive times L the network denoises at once (1: a single-time prior)."""
        return int(self.model.net.config.window)

    def window(self, slots: int, conditioned: bool = False) -> "LearnedWindow":
        """The denoiser of `slots` consecutive times (the trained window L), `conditioned`: given the
        state just before them (condition[PREVIOUS]); InputError for what the net was not trained on."""
        trained = self.window_slots
        if trained == 1:
            raise InputError("this checkpoint is a single-time prior; the time-aware modes need a window "
                             "checkpoint (ensemble-da train with window: L > 1)")
        if slots != trained:
            raise InputError(f"the checkpoint's window prior has {trained} slots, asked for {slots}: "
                             f"set cycle.window: {trained}")
        if conditioned and not self.model.net.config.previous:
            raise InputError("the checkpoint's window was not trained on the state before it (previous: false): "
                             "set cycle.carry: false")
        return LearnedWindow(self, conditioned)

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, condition: Condition | None = None) -> torch.Tensor:
        """Denoised estimate (batch, channel, cell) of normalised `z`; σ with shape (batch,)."""
        if self.window_slots != 1:
            raise InputError(f"this checkpoint is a window prior of {self.window_slots} times: it serves mode "
                             f"cycle and reanalysis (cycle.window: {self.window_slots}), not single times")
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


class LearnedWindow:
    """The window denoiser of a window checkpoint: state (batch, L·C, cell) normalised, slot j's
    channel c at j·C + c (`ensemble_da.window`); implements `Denoiser`.

    Attributes as `MarkovWindow`: `slots` (L), `prior` (the checkpoint, for its single-time
    normalisation), `normalization` (channels `C@j`), `grid`, `sigma_min`, `sigma_max`. When
    `conditioned`, each call needs condition[PREVIOUS], (batch, C, cell) normalised, the state just
    before the window; unconditioned calls give the net no previous state (its zero input).
    """

    allows_autocast = False

    def __init__(self, prior: LearnedDenoiser, conditioned: bool):
        from ensemble_da.priors.gaussian_markov import window_normalization

        self.prior = prior
        self.slots = prior.window_slots
        self.conditioned = bool(conditioned)
        self.grid = prior.grid
        self.normalization = window_normalization(prior.normalization, self.slots)
        self.sigma_min, self.sigma_max = prior.sigma_min, prior.sigma_max

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, condition: Condition | None = None) -> torch.Tensor:
        """D(z, σ) for z (batch, L·C, cell), σ (batch,): the denoised window, same shape."""
        from ensemble_da.priors.gaussian_markov import PREVIOUS

        width = len(self.normalization.channels)
        if z.ndim != 3 or z.shape[1] != width or z.shape[2] != self.grid.npix:
            raise ValueError(f"expected z with shape (batch, {width}, {self.grid.npix}), got {tuple(z.shape)}")
        previous = None
        if self.conditioned:
            if condition is None or PREVIOUS not in condition:
                raise ValueError(f"a conditioned window needs condition[{PREVIOUS!r}] (batch, channel, cell)")
            previous = torch.as_tensor(condition[PREVIOUS], device=z.device)
        model = self.prior.model
        param = next(model.parameters())
        sigma = torch.as_tensor(sigma, dtype=param.dtype, device=z.device)
        out = model(z.to(param.dtype), sigma, None, None if previous is None else previous.to(param.dtype))
        return out.to(z.dtype)


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
    """Checkpoint stem for a config `model.path` (None: the shipped checkpoint; "shipped-window":
    the shipped window checkpoint)."""
    if path == "shipped-window":
        return shipped_checkpoint().with_name(SHIPPED_WINDOW_STEM)
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
