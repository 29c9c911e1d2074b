"""Cost of one guided denoiser call relative to one unguided call, per method (DESIGN.md §6).

Two priors: the exact Gaussian prior (nside 16, 3 channels) and the HEALPix U-Net denoiser with
random weights (nside 16, 6 channels), batch 16, 200 bilinear observations, 1 torch thread.
Each figure is the median over repeats of the call time divided by the unguided median, all
measured in the same process and run; the expected order is regression ≈ dps ≈ 1 forward +
1 VJP, mmps ≈ 1 forward + (cg_iters + 1) VJPs.

    python benchmarks/guidance_cost.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from ensemble_da.channels import Normalization
from ensemble_da.config import GridConfig, GuidanceConfig, model_config
from ensemble_da.grid import HealpixGrid
from ensemble_da.guidance import guided_denoiser
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators import ObservationOperator
from ensemble_da.obs.synthetic import random_locations
from ensemble_da.priors.gaussian import GaussianPrior

METHODS = [
    GuidanceConfig(method="regression"),
    GuidanceConfig(method="dps"),
    GuidanceConfig(method="mmps", cg_iters=1),
    GuidanceConfig(method="mmps", cg_iters=3),
    GuidanceConfig(method="mmps", cg_iters=10),
]


def gaussian_prior() -> GaussianPrior:
    model = model_config(kind="gaussian", channels=["T850", "T500", "T300"], mean=dict(T850=275.0, T500=255.0, T300=230.0),
                        std=dict(T850=6.0, T500=5.0, T300=4.0), channel_correlation=[[1, 0.6, 0.3], [0.6, 1, 0.6], [0.3, 0.6, 1]])
    return GaussianPrior.from_config(model, GridConfig(nside=16))


def network_prior():
    from ensemble_da.priors.checkpoint import LearnedDenoiser
    from ensemble_da.priors.network import EDMPrecond, HealpixUNet, UNetConfig

    channels = ("T850", "T500", "T300", "U850", "V850", "Z500")
    net = EDMPrecond(HealpixUNet(UNetConfig(channels=len(channels), conditional=False)), sigma_data=1.0)
    norm = Normalization(channels, [0.0] * 6, [1.0] * 6)
    return LearnedDenoiser(net, HealpixGrid(16), norm, 0.002, 80.0)


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print("| prior | method | guided / unguided call |")
    print("|---|---|---:|")
    for label, prior in (("gaussian nside16", gaussian_prior()), ("unet nside16 (random)", network_prior())):
        chans = list(prior.normalization.channels)
        lat, lon = random_locations(200, rng)
        obs = ObservationSet(time=np.datetime64("2020-01-01"), lat=lat, lon=lon, channel=np.array(chans)[np.arange(200) % len(chans)],
                             value=prior.normalization.center[np.arange(200) % len(chans)], sigma=1.0)
        op = ObservationOperator.build(obs, prior.grid, prior.normalization, "bilinear")
        z = torch.randn(args.batch, len(chans), prior.grid.npix)
        sigma = torch.full((args.batch,), 1.0)
        with torch.no_grad():
            base = median_seconds(lambda: prior(z, sigma), args.repeats)
        print(f"| {label} | none ({base * 1e3:.1f} ms) | 1.00 |", flush=True)
        for cfg in METHODS:
            guided = guided_denoiser(prior, op, cfg)
            t = median_seconds(lambda: guided(z, sigma), args.repeats)
            name = cfg.method + (f" {cfg.solver}={cfg.cg_iters}" if cfg.method == "mmps" else "")
            print(f"| {label} | {name} | {t / base:.2f} |", flush=True)


if __name__ == "__main__":
    main()
