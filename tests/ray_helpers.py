"""Shared by the Ray tests: a tiny run config, store equality, and the loopback check."""

from __future__ import annotations

import ipaddress
import json
import os
import time
from pathlib import Path

import numpy as np
import psutil

from ensemble_da.config import RunConfig
from ensemble_da.io import open_run

# nside 4, 8 sampler steps: a unit of 2 members takes long enough to be interrupted part-way.
TREE = dict(
    run_name="cluster",
    seed=11,
    times=["2020-01-01T00:00", "2020-01-02T00:00"],
    grid=dict(nside=4),
    model=dict(kind="gaussian", channels=["T850", "T500", "T300"],
               mean=dict(T850=275.0, T500=255.0, T300=230.0), std=dict(T850=6.0, T500=5.0, T300=4.0),
               length_scale_km=2500),
    sampler=dict(steps=8, batch_size=2),
    guidance=dict(method="mmps", cg_iters=2),
    ensemble=dict(members=6),
    observations=dict(num_obs=30, heldout_fraction=0.2, sigma=dict(T850=0.5, T500=0.5, T300=0.5)),
    # Logical GPUs of a test Cluster have no CUDA: they only reserve scheduling slots.
    cluster=dict(address="inprocess", replicas=1, members_per_unit=2, device="cpu"),
)
UNITS = 6  # 2 times x 3 blocks of 2 members


def config(**cluster) -> RunConfig:
    return RunConfig.model_validate({**TREE, "cluster": {**TREE["cluster"], **cluster}})


def assert_same_store(ref, out):
    a, b = open_run(ref), open_run(out)
    for var in ("analysis", "ensemble_mean", "ensemble_spread", "truth", "exact_mean", "exact_spread"):
        np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=var)
    oa, ob = open_run(ref, group="observations"), open_run(out, group="observations")
    for var in ("hx_mean", "hx_spread"):
        np.testing.assert_array_equal(oa[var].values, ob[var].values, err_msg=var)
    sa = json.loads((ref / "summary.json").read_text())
    sb = json.loads((out / "summary.json").read_text())
    # mmps_residual/max describes the sampling done in that run (a resumed time has only its new
    # blocks' residuals), not the analysis: every other metric must match exactly.
    def metrics(summary):
        return {k: v for k, v in summary.items() if "/" in k and not k.startswith("mmps_residual/")}

    assert metrics(sa) == metrics(sb)


def is_loopback(ip: str) -> bool:
    """127.0.0.1, also written as the IPv4-mapped IPv6 address ::ffff:127.0.0.1."""
    addr = ipaddress.ip_address(ip)
    return addr == ipaddress.ip_address("127.0.0.1") or getattr(addr, "ipv4_mapped", None) == ipaddress.ip_address(
        "127.0.0.1"
    )


def listening_addresses() -> set[str]:
    """IP addresses of every listening socket of the processes this test process started."""
    found = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            conns = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found |= {c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN}
    return found




class SlowLoadingPrior:
    """A `prior_factory` that builds the config's own prior (members equal a run without it),
    but in a Ray replica only after `load_s` seconds, as a large checkpoint would load.

    When a replica starts loading it writes an empty file named by its Ray node id into
    `marks`, so a test knows which nodes hold replicas still starting. In the driver (the
    process that made this object) it builds the prior at once.
    """

    def __init__(self, cfg: RunConfig, marks: Path, load_s: float):
        self.model, self.grid = cfg.model, cfg.grid
        self.marks, self.load_s = Path(marks), load_s
        self.driver_pid = os.getpid()

    def __call__(self, device):
        from ensemble_da.priors import load_prior

        if os.getpid() != self.driver_pid:
            import ray

            (self.marks / ray.get_runtime_context().get_node_id()).touch()
            time.sleep(self.load_s)
        return load_prior(self.model, self.grid)


def run_interrupted(cfg: RunConfig, out, after: int = 2) -> None:
    """Run `cfg` into `out` and interrupt it (KeyboardInterrupt, as Ctrl-C) after `after` units."""
    import pytest

    from actors.run import run_pipeline

    seen = []

    def interrupt(result, executor):
        seen.append(result.unit)
        if len(seen) == after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, out, progress=False, on_unit=interrupt)
