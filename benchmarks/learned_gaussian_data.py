"""Training draws from the exact Gaussian prior, for the learned-Gaussian checkpoint.

Writes a `.npz` dataset in the layout `ensemble-da train` reads (`read_speedy`): `state(time,
channel, cell)` in physical units, with center/scale equal to the prior's mean/std, so the
network's normalised space is the prior's. Times are synthetic (one per hour) and unused
(the network is unconditional). Usage:

    python benchmarks/learned_gaussian_data.py --out .cache/gauss8.npz --n 16384
    ensemble-da train configs/train-learned-gaussian.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ensemble_da.config import load_config
from ensemble_da.data.speedy import SpeedyDataset, dataset_hash, save_sample
from ensemble_da.priors.gaussian import GaussianPrior

NSIDE = 8


def learned_gaussian_config(nside: int = NSIDE):
    """The demo's Gaussian prior (3 channels, ℓ = 1500 km, nugget 0.05) at `nside`."""
    return load_config(None, [f"grid.nside={nside}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=16384)
    parser.add_argument("--seed", type=int, default=12345)
    args = parser.parse_args()
    cfg = learned_gaussian_config()
    prior = GaussianPrior.from_config(cfg.model, cfg.grid)
    rng = np.random.default_rng(args.seed)
    state = np.concatenate([prior.sample_truth(rng, 1024) for _ in range(-(-args.n // 1024))])[: args.n]
    state = state.astype(np.float32)
    time = np.datetime64("2000-01-01T00:00", "ns") + np.arange(args.n) * np.timedelta64(3600, "s")
    data = SpeedyDataset(
        state=state,
        time=time,
        channels=tuple(prior.normalization.channels),
        center=prior.normalization.center,
        scale=prior.normalization.scale,
        nside=NSIDE,
        data_hash=dataset_hash(state),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_sample(data, np.arange(args.n), args.out)
    print(f"wrote {args.out}: {state.shape}")


if __name__ == "__main__":
    main()
