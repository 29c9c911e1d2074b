"""Which runtime a run gets, from `cluster.address`: `inprocess` (actors.executor, no Ray) or a
Ray cluster (actors.ray_backend.services: the Coordinator's replicas and aggregator actors)."""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import numpy as np

from ensemble_da.config import RunConfig

from actors.executor import Runtime, start_inprocess
from actors.session_cache import SessionCache

__all__ = ["open_runtime"]


def open_runtime(config: RunConfig, store_url: str, prior_factory: Callable | None = None,
                 cache: SessionCache | None = None) -> tuple[Callable[[], Runtime], ContextManager]:
    """(start, session) for `cluster.address`: enter the session (Ray up, or nothing in-process)
    first, then `start()` for the run store at `store_url` (path or URL). `cache`: what the runs
    of a session share (a sweep): their replicas are reused."""
    if config.cluster.address == "inprocess":
        return (lambda: start_inprocess(config, store_url, prior_factory, cache)), contextlib.nullcontext()
    from actors.ray_backend.services import start_ray_runtime
    from actors.ray_backend.session import ray_session

    cl = config.cluster
    session = ray_session(cl.address, num_cpus=int(np.ceil(cl.replicas * cl.cpus_per_replica)))
    pool = None if cache is None else cache.replicas
    return (lambda: start_ray_runtime(config, store_url, prior_factory, pool)), session
