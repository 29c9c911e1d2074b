"""What the runs of one session share (`ensemble-da sweep`, DESIGN.md §7): the driver's priors
by their config and the model replicas, so a run whose prior's config is unchanged builds
neither again."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from ensemble_da.config import RunConfig, prior_key

from actors.ray_backend.pool import ReplicaPool

__all__ = ["SessionCache"]


@dataclass
class SessionCache:
    """replicas: the Ray replicas kept between runs (None: not kept, the session does not own
    the Ray it runs on); local_replica: the in-process one; priors: the driver's priors by
    (model, grid) config; inputs_lock: serialises the runs' input reading."""

    replicas: ReplicaPool | None = None
    local_replica: Any = None
    priors: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Held while a run reads its input files: NetCDF/HDF5 and ecCodes are not thread-safe, and a
    # sweep's runs going at once (driver threads) must not open files together.
    inputs_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def prior(self, config: RunConfig):
        """The prior of `config.model` on `config.grid`, built once per distinct config (also
        when runs of a sweep ask at the same time)."""
        from ensemble_da.priors import load_prior

        key = prior_key(config.model, config.grid)
        with self.lock:
            if key not in self.priors:
                self.priors[key] = load_prior(config.model, config.grid)
            return self.priors[key]

    def close(self) -> None:
        """Stop the kept Ray replicas (Ray must still be up)."""
        if self.replicas is not None:
            self.replicas.close()
