"""Starting or joining Ray for a run (DESIGN.md §8; the recipe of RAY-LOOPBACK.md).

`cluster.address`:
- `local`: start a private Ray on this machine, every listener on 127.0.0.1, no dashboard.
  Ray binds to loopback only when RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is set before `import ray`
  (otherwise it picks the network interface and rewrites 127.0.0.1), so this module sets it and
  imports ray lazily.
- `auto`, `host:port`, `ray://host:port`: join an existing cluster (the variable is left alone:
  on a real multi-node cluster it must be unset).
If this process is already connected to Ray (tests, notebooks), that connection is used and left
open at the end.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from typing import Iterator

from ensemble_da.errors import InputError

__all__ = ["import_ray_loopback", "ray_session", "LOOPBACK_ENV"]

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def import_ray_loopback():
    """Import ray so that clusters started from this process stay on 127.0.0.1."""
    os.environ[LOOPBACK_ENV] = "0"
    import ray
    import ray._private.ray_constants as rc

    rc.ENABLE_RAY_CLUSTER = False  # in case ray was imported before the variable was set
    return ray


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast when `host:port` (or `ray://host:port`) does not accept TCP connections: Ray
    itself retries a wrong address for minutes before it gives up."""
    if address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        raise InputError(f"cluster.address {address!r}: nothing accepts connections there ({exc})") from None


@contextlib.contextmanager
def ray_session(address: str, *, num_cpus: int | None = None, temp_dir: str | None = None) -> Iterator[object]:
    """Connect to Ray for the length of the block and yield the `ray` module.

    Parameters
    ----------
    address : str
        `local`, `auto`, `host:port` or `ray://host:port` (see the module docstring).
    num_cpus : int, optional
        Logical CPUs of a `local` Ray (default: the machine's, at least what the replicas need).
    temp_dir : str, optional
        Private session directory for a `local` Ray (default: Ray's, or RAY_TMPDIR).
    """
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        yield sys.modules["ray"]
        return
    if address == "local":
        # Ray >= 2.59 turns token auth on for a new local cluster and says so in a warning;
        # asking for it explicitly keeps that protection without the noise (tests may disable it).
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        ray = import_ray_loopback()
        kwargs = dict(
            address="local",
            num_cpus=max(num_cpus or 0, os.cpu_count() or 1),
            include_dashboard=False,
            log_to_driver=False,
            logging_level="warning",
            configure_logging=True,
        )
        if temp_dir is not None:
            kwargs["_temp_dir"] = temp_dir
        ray.init(**kwargs)
    else:
        _check_reachable(address)
        import ray

        try:
            ray.init(address=address, log_to_driver=False, logging_level="warning")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InputError(f"cluster.address {address!r}: cannot connect to a Ray cluster ({first})") from None
    try:
        yield ray
    finally:
        ray.shutdown()
