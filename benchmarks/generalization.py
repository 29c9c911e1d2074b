"""Is the learned SPEEDY prior limited by its data? Denoising error on training vs held-out states.

For states x₀ (physical units) and noise levels σ (in units of the normalised data), each
denoiser gets z = norm(x₀) + σ ε with the same ε (σ in units of the data's std), and the table
gives its mean squared denoising error ‖D(z, σ) − x₀‖² per channel in units of the dataset's
climatological variance (mean over states, channels and cells; the climatological mean scores
about 1) on `--states` training states of `--data` (spread over its training period)
and on its held-out states (the last `--holdout-days`). A network that memorised its training
set does much better on it than on held-out states at small σ; one limited by capacity or
training compute does the same on both. A checkpoint trained on another dataset (its
`training_data_hash` differs) has seen neither set, and is compared on equal terms. The
Gaussian climatology fitted on the training states (the OI prior) is the reference.

    .venv/bin/python benchmarks/generalization.py --data .cache/speedy_nside16_4x.zarr \
        --checkpoints shipped runs/train-speedy-4x/speedy_unet_4x
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ensemble_da.config import GridConfig, model_config  # noqa: E402
from ensemble_da.data.speedy import read_speedy  # noqa: E402
from ensemble_da.priors import time_condition  # noqa: E402
from ensemble_da.priors.checkpoint import load_checkpoint  # noqa: E402
from ensemble_da.priors.climatology import ClimatologyPrior  # noqa: E402


def relative_error(denoiser, x0: np.ndarray, times: np.ndarray, sigma: float, noise: np.ndarray, scale: np.ndarray) -> float:
    """Mean squared denoising error of x₀ (state, channel, cell) in units of the dataset's
    per-channel variance `scale`² (the same yardstick for every denoiser and set)."""
    norm = denoiser.normalization
    z0 = norm.normalize(x0.astype(np.float64))
    err = 0.0
    with torch.no_grad():
        for i in range(len(x0)):
            z = torch.as_tensor((z0[i] + sigma * noise[i])[None], dtype=torch.float32)
            d = denoiser(z, torch.full((1,), sigma), time_condition(times[i])).double().numpy()[0]
            err += float(np.mean(((norm.denormalize(d) - x0[i]) / scale[:, None]) ** 2))
    return err / len(x0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO / ".cache" / "speedy_nside16.zarr"))
    ap.add_argument("--checkpoints", nargs="+", default=["shipped"], help="checkpoints ('shipped': the packaged one)")
    ap.add_argument("--holdout-days", type=int, default=60)
    ap.add_argument("--states", type=int, default=30, help="states of each set")
    ap.add_argument("--sigmas", default="0.05,0.2,0.5,1,3")
    ap.add_argument("--rank", type=int, default=256, help="rank of the Gaussian climatology")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = read_speedy(args.data)
    nets = {name: load_checkpoint(None if name == "shipped" else name) for name in args.checkpoints}
    channels = list(next(iter(nets.values())).normalization.channels)
    chan = [data.channels.index(c) for c in channels]
    n_train = data.state.shape[0] - args.holdout_days
    sets = {
        "train": np.linspace(0, n_train - 1, args.states).round().astype(int),
        "held-out": np.linspace(n_train, data.state.shape[0] - 1, min(args.states, args.holdout_days)).round().astype(int),
    }
    denoisers = dict(nets)
    denoisers[f"Gaussian r={args.rank}"] = ClimatologyPrior.from_config(
        model_config(kind="gaussian_climatology", path=args.data, rank=args.rank, holdout_days=args.holdout_days, channels=channels),
        GridConfig(nside=data.nside),
    )
    print(f"{args.data}: {n_train} training states, {args.holdout_days} held out; {args.states} states per set; "
          "mean squared denoising error in units of the climatological variance")
    for name, net in nets.items():
        seen = net.meta.get("training_data_hash") == data.data_hash
        print(f"  {name}: {net.meta.get('training', {}).get('train_states', '?')} training states, "
              + ("trained on this dataset's training states" if seen else "never saw this dataset (both sets unseen)"))
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((args.states, len(channels), data.state.shape[-1]))
    print("\n| σ | " + " | ".join(f"{n}: train | {n}: held-out" for n in denoisers) + " |")
    print("|---:|" + "---:|---:|" * len(denoisers))
    for sigma in [float(s) for s in args.sigmas.split(",")]:
        cells = []
        for den in denoisers.values():
            for idx in sets.values():
                cells.append(relative_error(den, data.state[idx][:, chan], data.time[idx], sigma, noise[: len(idx)], data.scale[chan]))
        print(f"| {sigma:g} | " + " | ".join(f"{v:.4f}" for v in cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
