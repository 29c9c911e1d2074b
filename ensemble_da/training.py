"""Training a HEALPix EDM denoiser (`ensemble-da train CONFIG`; Karras et al. 2022, §5 and App. B).

Loss: for a normalised training state z₀ (per-channel center/scale of the dataset), noise level
ln σ ~ N(P_mean, P_std²) and ε ~ N(0, I),

    L = λ(σ) · mean‖D(z₀ + σ ε, σ) − z₀‖²,   λ(σ) = (σ² + σ_d²) / (σ σ_d)²,

with σ_d the standard deviation of the normalised training data. Adam with linear warm-up and
cosine decay; an exponential moving average (EMA) of the weights is what the checkpoint holds.
Conditioning (day of year, second of day of each state) is dropped for a fraction of samples so
the network also works unconditionally.

Windows (`window: L` > 1, DESIGN.md §10): a training sample is L consecutive states stacked as
(L·C, cell), slot j's channel c at j·C + c (the layout of `ensemble_da.window`); the time
features are those of its first slot. With `previous: true` the net also reads the clean state
just before the window (and a flag), dropped to zeros for a fraction `previous_dropout` of samples,
so one net serves both the conditioned and the unconditioned window. Every state of every window
(and its previous state) lies before the held-out tail: held-out states are never trained on.

Resumable: `<out>/train_state.pt` (weights, EMA, optimiser, step, RNG states, MLflow run id)
is written every `checkpoint_every` steps and at the end; a rerun with `--resume` continues
from it and gives the same weights as an uninterrupted run. Loss curves go to MLflow (SQLite in
`<out>/mlflow.db` unless `tracking.uri` or MLFLOW_TRACKING_URI says otherwise). The product is
`<out>/<name>.safetensors` + `<out>/<name>.json` (see `ensemble_da.priors.checkpoint`).
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ensemble_da.channels import Normalization
from ensemble_da.errors import InputError

__all__ = ["TrainConfig", "NetworkSection", "load_train_config", "train", "edm_loss", "TrainResult"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NetworkSection(_Strict):
    widths: list[int] = Field(default_factory=lambda: [32, 64, 96])
    blocks: int = 1
    emb_dim: int = 64
    conditional: bool = True

    @model_validator(mode="after")
    def _check(self) -> "NetworkSection":
        if not self.widths or any(w < 1 for w in self.widths):
            raise ValueError(f"widths must be positive, got {self.widths}")
        if self.blocks < 1 or self.emb_dim < 2 or self.emb_dim % 2:
            raise ValueError("blocks >= 1 and an even emb_dim >= 2 are required")
        return self


class TrackingSection(_Strict):
    uri: str | None = None
    experiment: str = "ensemble-da-train"


class TrainConfig(_Strict):
    """`ensemble-da train` configuration (YAML; unknown keys are errors)."""

    data: str  # zarr store from `ensemble-da data speedy` (or a .npz sample)
    out: str = "runs/train"
    name: str = "model"  # checkpoint stem inside `out`
    channels: list[str] | None = None  # None: every channel of the dataset
    holdout_days: int = 60  # the last states are held out (never trained on)
    network: NetworkSection = Field(default_factory=NetworkSection)
    steps: int = 2000
    batch_size: int = 8
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    cond_dropout: float = 0.2
    window: int = 1  # consecutive states per sample (1: a single-time prior)
    previous: bool = False  # also condition on the state just before the window
    previous_dropout: float = 0.2  # fraction of samples trained without it
    seed: int = 0
    threads: int | None = None  # torch CPU threads (None: torch's default)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = 20
    checkpoint_every: int = 200
    max_minutes: float | None = None  # stop early (and save) after this much wall time
    stop_after: int | None = None  # stop (and save) after this many steps in this invocation
    tracking: TrackingSection = Field(default_factory=TrackingSection)

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.cond_dropout <= 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1], got {self.cond_dropout}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1 consecutive states, got {self.window}")
        if not 0.0 <= self.previous_dropout <= 1.0:
            raise ValueError(f"previous_dropout must be in [0, 1], got {self.previous_dropout}")
        if self.holdout_days < 0:
            raise ValueError(f"holdout_days must be >= 0, got {self.holdout_days}")
        return self


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Load a training config from YAML and apply `a.b=value` overrides; InputError on bad input."""
    from ensemble_da.config import load_yaml_model

    return load_yaml_model(TrainConfig, path, overrides, what="training config")


def edm_loss(model, z0: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None, noise: torch.Tensor,
             extra: torch.Tensor | None = None) -> torch.Tensor:
    """EDM loss λ(σ)·mean‖D(z₀+σε, σ) − z₀‖², averaged over the batch; σ with shape (batch,);
    `extra`: the net's extra input channels (batch, C + 1, cell) or None."""
    sd = model.sigma_data
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    denoised = model.precondition(z0 + sigma.reshape(-1, 1, 1) * noise, sigma, cond, extra)
    per_sample = (denoised - z0).square().mean(dim=(1, 2))
    return (weight * per_sample).mean()


class TrainResult(BaseModel):
    checkpoint: str
    steps: int
    final_loss: float
    wall_seconds: float
    run_id: str | None = None
    tracking_uri: str | None = None


def _day_features(times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(times).astype("datetime64[s]")
    year_start = t.astype("datetime64[Y]").astype("datetime64[s]")
    doy = (t - year_start).astype(np.float64) / 86400.0 + 1.0
    sod = (t - t.astype("datetime64[D]").astype("datetime64[s]")).astype(np.float64)
    return doy, sod


def states_per_day(times: np.ndarray) -> int:
    """States per day of an equally spaced time axis (1 for daily data, 4 for six-hourly)."""
    if len(times) < 2:
        return 1
    hours = float(np.median(np.diff(np.asarray(times).astype("datetime64[s]")).astype(np.float64))) / 3600.0
    if hours <= 0 or 24 % hours:
        raise InputError(f"the dataset's time spacing ({hours:g} h) does not divide a day")
    return int(round(24 / hours))


def training_states(n_states: int, times: np.ndarray, holdout_days: int) -> int:
    """How many states, from the start, are trained on: all but the last `holdout_days` days."""
    return n_states - holdout_days * states_per_day(times)


def window_starts(n_train: int, window: int, previous: bool) -> np.ndarray:
    """First states of every training window: s with s − 1 ≥ 0 (when `previous`) and s + L ≤ n_train."""
    return np.arange(1 if previous else 0, n_train - window + 1)


def stack_windows(z: torch.Tensor, starts: torch.Tensor, window: int) -> torch.Tensor:
    """Windows (batch, L·C, cell) of states z (time, C, cell) starting at `starts` (batch,)."""
    idx = starts[:, None] + torch.arange(window, device=z.device)[None]
    return z[idx].reshape(len(starts), -1, z.shape[-1])


def _rng_state(gen: torch.Generator, nrng: np.random.Generator) -> dict:
    return {"torch": gen.get_state(), "numpy": nrng.bit_generator.state}


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train a HEALPix EDM denoiser as configured; returns where the checkpoint is and the loss."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ensemble_da.data.speedy import read_speedy
    from ensemble_da.priors.checkpoint import save_checkpoint
    from ensemble_da.priors.network import EDMPrecond, HealpixUNet, UNetConfig, condition_features, previous_features
    from ensemble_da.tracking import Tracker, flatten, resolve_tracking_uri

    out = Path(config.out)
    state_file = out / "train_state.pt"
    if resume and not state_file.is_file():
        raise InputError(f"--resume: no training state in {out} (expected {state_file.name})")
    if not resume and state_file.exists():
        raise InputError(f"{out} already holds a training run (use --resume or another out)")
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device("cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()) else "cpu")

    data = read_speedy(config.data)
    names = list(config.channels or data.channels)
    chan = Normalization(data.channels, data.center, data.scale).index(names)
    norm = Normalization(tuple(names), data.center[chan], data.scale[chan])
    n_train = training_states(data.state.shape[0], data.time, config.holdout_days)
    if n_train < 1:
        raise InputError(f"{config.data}: {data.state.shape[0]} states, holdout_days={config.holdout_days} leaves none to train on")
    starts = window_starts(n_train, config.window, config.previous)
    if len(starts) < 1:
        raise InputError(f"{config.data}: {n_train} training states hold no window of {config.window} states"
                         + (" with a state before it" if config.previous else ""))
    z_all = norm.normalize(data.state[:n_train][:, chan].astype(np.float64)).astype(np.float32)
    sigma_data = float(z_all.std())
    doy, sod = _day_features(data.time[:n_train])
    z_all_t = torch.as_tensor(z_all, device=device)

    torch.manual_seed(config.seed)
    net = HealpixUNet(UNetConfig(channels=len(names) * config.window, window=config.window, previous=config.previous,
                                 **config.network.model_dump()))
    model = EDMPrecond(net, sigma_data=sigma_data).to(device)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return config.lr * (step + 1) / config.warmup_steps
        frac = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    gen = torch.Generator().manual_seed(config.seed)
    nrng = np.random.default_rng(config.seed)
    step, run_id, losses = 0, None, []
    if resume:
        saved = torch.load(state_file, map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        ema.load_state_dict(saved["ema"])
        opt.load_state_dict(saved["opt"])
        gen.set_state(saved["rng"]["torch"])
        nrng.bit_generator.state = saved["rng"]["numpy"]
        step, run_id, losses = saved["step"], saved.get("run_id"), saved.get("losses", [])

    uri = resolve_tracking_uri(config.tracking.uri, out)
    tracker = Tracker(uri, config.tracking.experiment, config.name, out, run_id=run_id)
    tracker.log_params(flatten({**config.model_dump(mode="json"), "sigma_data": sigma_data, "train_states": n_train}))

    def save_state() -> None:
        tmp = state_file.with_suffix(".tmp")
        torch.save(
            {
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "opt": opt.state_dict(),
                "rng": _rng_state(gen, nrng),
                "step": step,
                "run_id": tracker.run_id,
                "losses": losses,
            },
            tmp,
        )
        tmp.replace(state_file)

    log_sigma = torch.distributions.Normal(config.p_mean, config.p_std)
    start_step = step
    t0 = time.time()
    window: list[float] = []
    model.train()
    with Progress(
        TextColumn("[bold]train[/] {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not progress,
    ) as bar:
        task = bar.add_task("", total=config.steps, completed=step)
        while step < config.steps:
            idx = starts[nrng.integers(0, len(starts), size=config.batch_size)]
            z0 = stack_windows(z_all_t, torch.as_tensor(idx, device=device), config.window)
            u = torch.rand(config.batch_size, generator=gen)
            sigma = torch.exp(log_sigma.icdf(u.clamp(1e-6, 1 - 1e-6))).clamp(config.sigma_min, config.sigma_max)
            noise = torch.randn(z0.shape, generator=gen)
            cond = None
            if net.cond is not None:
                cond = condition_features({"day_of_year": doy[idx], "second_of_day": sod[idx]}, len(idx), device, z0.dtype)
                keep = (torch.rand(len(idx), generator=gen) >= config.cond_dropout).to(z0.dtype)
                cond = cond * keep.to(device)[:, None]
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            extra = None
            if config.previous:
                keep_prev = (torch.rand(len(idx), generator=gen) >= config.previous_dropout).to(z0.dtype).to(device)
                extra = previous_features(z_all_t[torch.as_tensor(idx - 1, device=device)], z0) * keep_prev[:, None, None]
            loss = edm_loss(model, z0, sigma.to(device), cond, noise.to(device), extra)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            decay = min(config.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - decay)
            step += 1
            window.append(float(loss.detach()))
            if step % config.log_every == 0 or step == config.steps:
                mean_loss = float(np.mean(window))
                losses.append((step, mean_loss))
                window.clear()
                tracker.log_metrics({"loss": mean_loss, "lr": lr_at(step - 1)}, step=step)
                bar.update(task, description=f"loss {mean_loss:.4f}")
                if not progress:
                    print(f"step {step}/{config.steps} loss {mean_loss:.4f} ({time.time() - t0:.0f} s)", flush=True)
            bar.update(task, completed=step)
            out_of_time = (config.max_minutes is not None and time.time() - t0 > 60 * config.max_minutes) or (
                config.stop_after is not None and step - start_step >= config.stop_after
            )
            if step % config.checkpoint_every == 0 or step == config.steps or out_of_time:
                save_state()
                _write_checkpoint(out, config, ema, norm, data, step, losses, time.time() - t0, save_checkpoint)
            if out_of_time:
                break
    wall = time.time() - t0
    path = _write_checkpoint(out, config, ema, norm, data, step, losses, wall, save_checkpoint)
    save_state()
    tracker.end("FINISHED" if step >= config.steps else "KILLED")
    final = losses[-1][1] if losses else float("nan")
    return TrainResult(
        checkpoint=str(path), steps=step, final_loss=final, wall_seconds=wall, run_id=tracker.run_id, tracking_uri=uri
    )


def _write_checkpoint(out, config, ema, norm, data, step, losses, wall, save_checkpoint) -> Path:
    n_train = training_states(data.state.shape[0], data.time, config.holdout_days)
    return save_checkpoint(
        out / config.name,
        ema,
        norm,
        nside=data.nside,
        sigma_min=config.sigma_min,
        sigma_max=config.sigma_max,
        training_data_hash=data.data_hash,
        training={
            "config": config.model_dump(mode="json"),
            "steps": step,
            "final_loss": losses[-1][1] if losses else None,
            "wall_seconds": round(wall, 1),
            "train_states": int(n_train),
            "train_time_range": [
                str(np.datetime_as_string(data.time[0], unit="s")),
                str(np.datetime_as_string(data.time[n_train - 1], unit="s")),
            ],
        },
    )
