"""Is the learned SPEEDY prior limited by its data? Denoising error on training vs held-out states.

For states x₀ (physical units) and noise levels σ (in units of the normalised data), each
denoiser gets z = norm(x₀) + σ ε with the same ε, and the table gives its relative denoising
error ‖D(z, σ) − z₀‖² / ‖z₀ − z̄₀‖² (mean over states, channels and cells; 1 = no better than the
climatological mean) on `--states` training states (spread over the training period) and on
the held-out states (the last `--holdout-days`, never trained on), and their ratio
held-out / train. A network that memorised its training set has a ratio ≫ 1 at small σ; one
limited by capacity or training compute has a ratio ≈ 1 on both sets. The Gaussian climatology
(the OI prior, fitted on the same training states) is the reference: its posterior mean is the
best a Gaussian can do.

    .venv/bin/python benchmarks/generalization.py --data .cache/speedy_nside16.zarr
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ensemble_da.config import GridConfig, ModelConfig  # noqa: E402
from ensemble_da.data.speedy import read_speedy  # noqa: E402
from ensemble_da.priors import time_condition  # noqa: E402
from ensemble_da.priors.checkpoint import load_checkpoint  # noqa: E402
from ensemble_da.priors.climatology import ClimatologyPrior  # noqa: E402


def relative_error(denoiser, x0: np.ndarray, times: np.ndarray, sigma: float, noise: np.ndarray) -> float:
    """Mean ‖D(z₀ + σε, σ) − z₀‖² / mean ‖z₀ − mean z₀‖² in the denoiser's normalised units."""
    norm = denoiser.normalization
    z0 = norm.normalize(x0.astype(np.float64))
    err = 0.0
    with torch.no_grad():
        for i in range(len(x0)):
            z = torch.as_tensor((z0[i] + sigma * noise[i])[None], dtype=torch.float32)
            d = denoiser(z, torch.full((1,), sigma), time_condition(times[i])).double().numpy()[0]
            err += float(np.mean((d - z0[i]) ** 2))
    return err / len(x0) / float(np.mean((z0 - z0.mean(0)) ** 2))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO / ".cache" / "speedy_nside16.zarr"))
    ap.add_argument("--checkpoint", default=None, help="checkpoint (default: shipped)")
    ap.add_argument("--holdout-days", type=int, default=60)
    ap.add_argument("--states", type=int, default=30, help="states of each set")
    ap.add_argument("--sigmas", default="0.05,0.2,0.5,1,3")
    ap.add_argument("--rank", type=int, default=256, help="rank of the Gaussian climatology")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    learned = load_checkpoint(args.checkpoint)
    channels = list(learned.normalization.channels)
    data = read_speedy(args.data)
    trained_on = learned.meta.get("training_data_hash")
    if trained_on and trained_on != data.data_hash:
        print(f"note: {args.data} (hash {data.data_hash}) is not the checkpoint's training data (hash {trained_on})")
    chan = [data.channels.index(c) for c in channels]
    n_train = data.state.shape[0] - args.holdout_days
    sets = {
        "train": np.linspace(0, n_train - 1, args.states).round().astype(int),
        "held-out": np.linspace(n_train, data.state.shape[0] - 1, min(args.states, args.holdout_days)).round().astype(int),
    }
    clim = ClimatologyPrior.from_config(
        ModelConfig(kind="gaussian_climatology", path=args.data, rank=args.rank, holdout_days=args.holdout_days, channels=channels),
        GridConfig(nside=learned.grid.nside),
    )
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((args.states, len(channels), data.state.shape[-1]))
    print(f"{n_train} training states, {args.holdout_days} held out; {args.states} states per set; "
          "relative denoising error (1 = climatological mean)\n")
    print("| σ | learned, train | learned, held-out | held-out/train | Gaussian r=%d, train | Gaussian, held-out |" % args.rank)
    print("|---:|---:|---:|---:|---:|---:|")
    for sigma in [float(s) for s in args.sigmas.split(",")]:
        vals = {}
        for name, idx in sets.items():
            x0, t = data.state[idx][:, chan], data.time[idx]
            vals[("learned", name)] = relative_error(learned, x0, t, sigma, noise[: len(idx)])
            vals[("gauss", name)] = relative_error(clim, x0, t, sigma, noise[: len(idx)])
        print(f"| {sigma:g} | {vals['learned', 'train']:.4f} | {vals['learned', 'held-out']:.4f} | "
              f"{vals['learned', 'held-out'] / vals['learned', 'train']:.2f} | {vals['gauss', 'train']:.4f} | "
              f"{vals['gauss', 'held-out']:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
