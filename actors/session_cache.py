"""What the runs of one session share (`ensemble-da sweep`, DESIGN.md §7): the driver's priors
by their config and the model replicas, so a run whose prior's config is unchanged builds
neither again."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ensemble_da.config import RunConfig

from actors.ray_backend.pool import ReplicaPool

__all__ = ["SessionCache"]


@dataclass
class SessionCache:
    """replicas: the Ray replicas kept between runs (None: not kept, the session does not own
    the Ray it runs on); local_replica: the in-process one; priors: the driver's priors by
    (model, grid) config."""

    replicas: ReplicaPool | None = None
    local_replica: Any = None
    priors: dict[str, Any] = field(default_factory=dict)

    def prior(self, config: RunConfig):
        """The prior of `config.model` on `config.grid`, built once per distinct config."""
        from ensemble_da.priors import load_prior

        key = json.dumps([config.model.model_dump(mode="json"), config.grid.model_dump(mode="json")], sort_keys=True)
        if key not in self.priors:
            self.priors[key] = load_prior(config.model, config.grid)
        return self.priors[key]

    def close(self) -> None:
        """Stop the kept Ray replicas (Ray must still be up)."""
        if self.replicas is not None:
            self.replicas.close()
