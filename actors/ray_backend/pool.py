"""Model replicas kept across the runs of one Ray session (`ensemble-da sweep`, DESIGN.md §7).

A run's Coordinator takes the pool's replicas when their placement (replicas × CPUs × GPUs,
strategy) is what the run asks for, and gives them back when its runs ended cleanly; each call
carries the run's `RunBinding`, so a kept replica serves the new run and keeps its prior when the
prior's config is unchanged. Starting a replica (a worker process importing torch, the prior
built) is most of a small run's cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ReplicaPool"]


@dataclass
class ReplicaPool:
    """Placement groups and their replica actors by placement key, for the session's length."""

    kept: dict[tuple, tuple[Any, list]] = field(default_factory=dict)

    def take(self, key: tuple) -> tuple[Any, list] | None:
        """(placement group, replicas) kept for `key`, removed from the pool; None when none are."""
        return self.kept.pop(key, None)

    def give(self, key: tuple, placement_group: Any, replicas: list) -> None:
        """Keep them for the next run with `key` (one set per key: a second is released)."""
        if key in self.kept:
            release(*self.kept.pop(key))
        self.kept[key] = (placement_group, replicas)

    def close(self) -> None:
        """Stop every kept replica and release its placement group."""
        while self.kept:
            release(*self.kept.popitem()[1])


def release(placement_group: Any, replicas: list) -> None:
    """Kill `replicas` (no restart) and remove their placement group."""
    import ray

    for r in replicas:
        try:
            ray.kill(r, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
    try:
        ray.util.remove_placement_group(placement_group)
    except Exception:  # noqa: BLE001
        pass
