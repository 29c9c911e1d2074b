"""Members per second per GPU for a cBottle-sized HEALPix denoiser (random weights).

Network: the package's HEALPix U-Net (`priors/network.py`) at nside 64 with 45 channels and
widths 128-256-384-512 (random weights: throughput does not depend on training). For every
combination of guidance (none / regression / mmps with 3 CG iterations), precision (fp32 /
bf16 autocast of the network forward; guidance math stays fp32/fp64) and batch size (1, 2, 4,
8, 16) it samples `--steps` Heun steps (2·steps − 1 network evaluations) and reports members
per second = batch / wall time of one full sampling, after one warm-up sampling. Observations:
`--obs` random bilinear point observations of random channels.

    python benchmarks/gpu_throughput.py                 # GPU, cBottle size
    python benchmarks/gpu_throughput.py --toy           # CPU check at toy size (nside 8, 4 channels)

On CPU bf16 autocast is not applied (the sampler autocasts on CUDA only), so bf16 rows are
skipped there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ensemble_da.channels import Normalization  # noqa: E402
from ensemble_da.config import GuidanceConfig  # noqa: E402
from ensemble_da.grid import HealpixGrid  # noqa: E402
from ensemble_da.guidance import guided_denoiser  # noqa: E402
from ensemble_da.obs.operators import ObservationOperator  # noqa: E402
from ensemble_da.priors.checkpoint import LearnedDenoiser  # noqa: E402
from ensemble_da.priors.network import EDMPrecond, HealpixUNet, UNetConfig  # noqa: E402
from ensemble_da.sampling import KarrasSchedule, edm_sample, member_generator  # noqa: E402


def build(nside: int, channels: int, widths: list[int], device: torch.device) -> LearnedDenoiser:
    torch.manual_seed(0)
    net = HealpixUNet(UNetConfig(channels=channels, widths=widths, blocks=1, emb_dim=128))
    with torch.no_grad():  # random, non-zero output layer so the forward is not trivially zero
        net.out.weight.normal_(0, 1e-3)
    names = tuple(f"T{100 + 10 * i}" for i in range(channels))
    norm = Normalization(names, np.zeros(channels), np.ones(channels))
    return LearnedDenoiser(EDMPrecond(net, 1.0).to(device), HealpixGrid(nside), norm, 0.002, 80.0)


def random_operator(den: LearnedDenoiser, n_obs: int, seed: int = 0) -> ObservationOperator:
    rng = np.random.default_rng(seed)
    lat = np.rad2deg(np.arcsin(rng.uniform(-1, 1, n_obs)))
    lon = rng.uniform(0, 360, n_obs)
    cells, w = den.grid.interp_weights(lat, lon)
    ch = rng.integers(0, len(den.normalization.channels), n_obs)
    return ObservationOperator(ch[:, None] * den.grid.npix + cells, w, rng.normal(size=n_obs), np.full(n_obs, 0.1),
                               len(den.normalization.channels), den.grid.npix)


def time_sampling(den, op, method: str, bf16: bool, batch: int, steps: int, device: torch.device) -> float:
    schedule = KarrasSchedule(steps=steps, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    model = den if method == "none" else guided_denoiser(den, op, GuidanceConfig(method=method, cg_iters=3), autocast=bf16)
    gens = [member_generator(0, 0, m) for m in range(batch)]

    def once():
        z = edm_sample(model, gens, schedule, solver="heun", device=device, autocast=bf16)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return z

    once()  # warm-up (allocations, kernels, neighbour tables)
    t0 = time.perf_counter()
    z = once()
    dt = time.perf_counter() - t0
    if not torch.isfinite(z).all():
        raise RuntimeError(f"non-finite sample ({method}, bf16={bf16}, batch={batch})")
    return dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--toy", action="store_true", help="CPU-sized check: nside 8, 4 channels, widths 8-16")
    ap.add_argument("--steps", type=int, default=None, help="Heun steps per sample (default 18; toy 4)")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,2,4,8,16; toy 1,2)")
    ap.add_argument("--obs", type=int, default=None, help="observations (default 10000; toy 50)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 avoids spin-waits on shared CPUs)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    device = torch.device("cuda" if torch.cuda.is_available() and not args.toy else "cpu")
    if args.toy:
        nside, channels, widths = 8, 4, [8, 16]
        steps, batches, n_obs = args.steps or 4, args.batches or "1,2", args.obs or 50
    else:
        nside, channels, widths = 64, 45, [128, 256, 384, 512]
        steps, batches, n_obs = args.steps or 18, args.batches or "1,2,4,8,16", args.obs or 10000
        if device.type != "cuda":
            print("warning: no CUDA device; running the full-size benchmark on CPU will be very slow", file=sys.stderr)
    den = build(nside, channels, widths, device)
    op = random_operator(den, n_obs)
    n_params = sum(p.numel() for p in den.model.parameters())
    print(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}; nside {nside}, {channels} channels, "
          f"widths {widths}, {n_params / 1e6:.1f} M parameters; {steps} Heun steps ({2 * steps - 1} evaluations), {n_obs} obs")
    precisions = [False, True] if device.type == "cuda" else [False]
    rows = []
    print("| guidance | precision | batch | s / sample | members / s |")
    print("|---|---|---|---|---|")
    for method in ("none", "regression", "mmps"):
        for bf16 in precisions:
            for batch in [int(b) for b in batches.split(",")]:
                dt = time_sampling(den, op, method, bf16, batch, steps, device)
                row = dict(guidance=method, precision="bf16" if bf16 else "fp32", batch=batch, seconds=dt, members_per_s=batch / dt)
                rows.append(row)
                print(f"| {method} | {row['precision']} | {batch} | {dt:.3f} | {batch / dt:.2f} |", flush=True)
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    if args.out:
        Path(args.out).write_text(json.dumps({"nside": nside, "channels": channels, "widths": widths, "steps": steps,
                                              "obs": n_obs, "device": str(device), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
