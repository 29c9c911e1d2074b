"""ModelReplica: one copy of the prior that samples work units (issue 3, item 1).

A plain class: the coordinator wraps it with `ray.remote` (one actor per placement-group
bundle, pinned to a GPU when the config asks for one), and the in-process executor uses it as
is. Work goes in as (analysis time index, ObservationSet, member ids); members come back as a
`BlockResult` holding float32 numpy (member, channel, cell) in physical units — torch tensors
never leave the replica.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any, Sequence

__all__ = ["ModelReplica"]


def _ray_context() -> dict[str, Any]:
    """Node id and GPU ids when running inside a Ray worker; empty otherwise."""
    if "ray" not in sys.modules:
        return {}
    import ray

    if not ray.is_initialized():
        return {}
    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}


class ModelReplica:
    """Loads the prior once and samples member blocks.

    Parameters
    ----------
    config : dict
        The resolved run config (`RunConfig.model_dump(mode="json")`), so the actor gets plain data.
    index : int
        The replica's number (for progress and diagnostics).

    A failure while loading is kept and raised by `info()`/`sample()` instead of killing the
    actor, so a replica with `max_restarts=-1` does not restart forever on a bad config.
    """

    def __init__(self, config: dict, index: int = 0):
        self.index = index
        self.pid = os.getpid()
        self.started = time.time()
        self._error: BaseException | None = None
        try:
            self._load(config)
        except BaseException as exc:  # noqa: BLE001 - reported through info()/sample()
            self._error = exc

    def _load(self, config: dict) -> None:
        import torch

        from ensemble_da.assimilation import Assimilator
        from ensemble_da.config import RunConfig

        from threadpoolctl import threadpool_limits

        cfg = RunConfig.model_validate(config)
        # Every thread pool (torch's OpenMP, numpy's BLAS) gets cpus_per_replica threads, in Ray
        # workers and in-process alike: reductions split over a different number of threads
        # round differently, and members must not depend on where they ran.
        threads = max(1, int(cfg.cluster.cpus_per_replica))
        threadpool_limits(limits=threads)
        torch.set_num_threads(threads)
        # Inside a Ray actor with num_gpus > 0, CUDA_VISIBLE_DEVICES holds only our GPU(s).
        use_gpu = cfg.cluster.gpus_per_replica > 0 and torch.cuda.is_available()
        self.device = "cuda:0" if use_gpu else "cpu"
        self.assimilator = Assimilator(cfg, device=self.device)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def info(self) -> dict[str, Any]:
        """Where this replica runs: pid, host, device, torch threads, Ray node and GPU ids."""
        self._check()
        import torch

        return {
            "index": self.index,
            "pid": self.pid,
            "host": socket.gethostname(),
            "device": self.device,
            "threads": torch.get_num_threads(),
            "load_seconds": time.time() - self.started,
            **_ray_context(),
        }

    def sample(self, obs, t_index: int, members: Sequence[int]):
        """Sample `members` for analysis time `t_index` given `obs` (ObservationSet or None).

        Returns the assimilator's BlockResult (analysis float32 (member, channel, cell),
        physical units) with `pid` and `replica` added to its diagnostics.
        """
        self._check()
        result = self.assimilator.sample(obs, t_index, list(members))
        result.diagnostics.update(pid=float(self.pid), replica=float(self.index))
        return result
