"""Model replicas kept across the runs of one Ray session (`ensemble-da sweep`, DESIGN.md §7).

A run's Coordinator takes the pool's replicas when their placement (replicas × CPUs × GPUs,
strategy) is what the run asks for, and gives them back when its runs ended cleanly; each call
carries the run's `RunBinding`, so a kept replica serves the new run and keeps its prior when the
prior's config is unchanged. Starting a replica (a worker process importing torch, the prior
built) is most of a small run's cost.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ReplicaPool"]


@dataclass
class ReplicaPool:
    """Idle placement groups and their replica actors by placement key, for the session's length.

    Safe to share between the runs of a sweep that run at the same time (one lock); every set
    taken is either given back or released by the run that took it.
    """

    kept: dict[tuple, list[tuple[Any, list]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self, key: tuple) -> tuple[Any, list] | None:
        """An idle (placement group, replicas) set for `key`, removed from the pool. None when
        there is none; then the idle sets of other keys are released first, since their
        resources may be what the caller's new placement group needs."""
        with self.lock:
            sets = self.kept.get(key)
            if sets:
                return sets.pop()
            others = [s for group in self.kept.values() for s in group]
            self.kept.clear()
        for s in others:
            release(*s)
        return None

    def give(self, key: tuple, placement_group: Any, replicas: list) -> None:
        """Keep the set idle for a later run with `key`."""
        with self.lock:
            self.kept.setdefault(key, []).append((placement_group, replicas))

    def close(self) -> None:
        """Stop every kept replica and release its placement group."""
        with self.lock:
            sets = [s for group in self.kept.values() for s in group]
            self.kept.clear()
        for s in sets:
            release(*s)


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
