"""The scheduling bookkeeping of a run's work units, plain Python (no Ray): which units are still
missing, which may start now, and on which replica.

A unit may wait for another (a cycled member block at time t for the same block at t − 1, DESIGN.md
§10): it is ready once that one is delivered, whatever the other blocks do, so blocks flow through
the cycles without a barrier. The earliest time goes first (the block furthest behind is the
critical path); at one time a replica takes first the blocks whose previous time it delivered
(affinity: it has just read and written them), and a unit goes to any replica when its own
cannot take it now. `max_lead` bounds how many analysis times a block may run ahead of the
earliest missing unit, so the per-time reductions held open stay few however long the run.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Mapping, Sequence

from ensemble_da.assimilation import WorkUnit

__all__ = ["UnitQueue"]


class UnitQueue:
    """Work units in their given order, each ready once the unit it waits for is delivered.

    Parameters
    ----------
    units : the units to run; ties between ready units go to the earlier one here.
    after : unit → the unit it waits for (only when that one is among `units`: one already in
        the store is no reason to wait).
    max_lead : a unit of time t is ready only while t ≤ (the earliest missing time) + max_lead;
        None: no bound.
    """

    def __init__(self, units: Sequence[WorkUnit], after: Mapping[WorkUnit, WorkUnit] | None = None,
                 max_lead: int | None = None):
        if max_lead is not None and max_lead < 0:
            raise ValueError(f"max_lead must be >= 0, got {max_lead}")
        self.missing: set[WorkUnit] = set(units)
        self.order = {u: i for i, u in enumerate(units)}
        self.max_lead = max_lead
        self.home: dict[WorkUnit, int] = {}
        self._waiting: dict[WorkUnit, list[WorkUnit]] = {}
        self._ready: list[WorkUnit] = []
        self._times = Counter(u.t_index for u in units)
        self._floor = min(self._times, default=0)
        for u in units:
            before = (after or {}).get(u)
            if before is not None and before in self.missing:
                self._waiting.setdefault(before, []).append(u)
            else:
                self._ready.append(u)

    def __bool__(self) -> bool:
        """True while some unit is not delivered."""
        return bool(self.missing)

    def has_ready(self) -> bool:
        """A unit could be issued now (none is waiting on a replica to be free)."""
        return any(self._within_lead(u) for u in self._ready)

    def _within_lead(self, unit: WorkUnit) -> bool:
        return self.max_lead is None or unit.t_index <= self._floor + self.max_lead

    def pop(self, replica: int, can_take: Callable[[int], bool] = lambda r: True) -> WorkUnit | None:
        """The next unit for `replica` (None: none ready) among its own (it delivered their
        predecessor), those with no home and those whose home cannot take them now
        (`can_take(home)` False): the earliest time first (the block furthest behind is the run's
        critical path), its own before others' at that time, then the given order."""
        candidates = [u for u in self._ready if self._within_lead(u)
                      and (self.home.get(u) in (None, replica) or not can_take(self.home[u]))]
        if not candidates:
            return None
        best = min(candidates, key=lambda u: (u.t_index, self.home.get(u) != replica, self.order[u]))
        self._ready.remove(best)
        return best

    def requeue(self, unit: WorkUnit) -> None:
        """`unit` is to run again (its attempt failed, or its replica was lost)."""
        if unit in self.missing and unit not in self._ready:
            self._ready.append(unit)
            self._ready.sort(key=self.order.__getitem__)

    def delivered(self, unit: WorkUnit, replica: int) -> None:
        """`unit` was delivered by `replica`: the units waiting for it are ready, at home there."""
        if unit not in self.missing:
            return
        self.missing.discard(unit)
        if unit in self._ready:
            self._ready.remove(unit)
        self._times[unit.t_index] -= 1
        while self._times and self._times.get(self._floor, 0) <= 0:
            self._times.pop(self._floor, None)
            self._floor = min(self._times, default=self._floor)
        for w in self._waiting.pop(unit, []):
            self.home[w] = replica
            self.requeue(w)
