"""Who writes a member block into the run store, and the rule that exactly one copy does.

Two modes (`cluster.store`, see cluster/README.md):

- `shared`: the store is reachable from every node (a shared filesystem path, or a URL zarr
  opens through fsspec); each replica writes its own block (`DirectSink`).
- `writer`: the store is on the driver's disk only; replicas send their block to one
  `StoreWriter` actor on the driver's node, which writes it (`WriterSink`).

Either way a block is written only by the attempt that holds its claim (`StoreWriter.claim`):
when a unit runs twice (a straggler re-issued, a replica restarted after the coordinator gave
its unit away), the first attempt to claim writes, the other writes nothing, so two copies
never interleave inside a chunk. An attempt the coordinator abandoned (its replica's node was
lost) can never claim, and frees its claim for the next attempt.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ensemble_da.assimilation import WorkUnit
from ensemble_da.io import RunStore

__all__ = ["StoreWriter", "DirectSink", "WriterSink", "NamedActor", "call", "write_unit"]


class NamedActor:
    """A Ray actor referred to by its name, looked up where it is used (then kept).

    Replicas get the writer this way, not as a handle: a handle among an actor's constructor
    arguments makes Ray log, at error level on every run, that restarts may fail (ray#53727),
    although nothing of ours is in the object store.
    """

    def __init__(self, name: str):
        self.name = name
        self._handle = None

    def __getstate__(self) -> dict:
        return {"name": self.name}

    def __setstate__(self, state: dict) -> None:
        self.name, self._handle = state["name"], None

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)
        if self._handle is None:
            import ray

            self._handle = ray.get_actor(self.name)
        return getattr(self._handle, method)


def call(target: Any, method: str, *args):
    """`target.method(*args)` for a plain object, or its result for a Ray actor handle."""
    fn = getattr(target, method)
    if hasattr(fn, "remote"):
        import ray

        return ray.get(fn.remote(*args))
    return fn(*args)


class StoreWriter:
    """The claim ledger of a run's store (and, in `writer` mode, the one process that writes).

    Parameters
    ----------
    store_url : str
        Path or URL of the run store.
    """

    def __init__(self, store_url: str):
        self.store_url = store_url
        self._store: RunStore | None = None
        self.claims: dict[WorkUnit, int] = {}
        self.abandoned: set[int] = set()

    @property
    def store(self) -> RunStore:
        if self._store is None:
            self._store = RunStore(self.store_url)
        return self._store

    def claim(self, unit: WorkUnit, attempt: int) -> bool:
        """May `attempt` write `unit`? True for the first attempt to ask (and again for the same
        attempt, e.g. re-run by Ray after its replica restarted), and for any attempt once the
        holder was abandoned (its report was lost, even if it wrote: the new attempt rewrites
        the same bytes); False for an abandoned attempt or while another attempt holds it."""
        if attempt in self.abandoned:
            return False
        holder = self.claims.get(unit)
        if holder is None or holder == attempt or holder in self.abandoned:
            self.claims[unit] = attempt
            return True
        return False

    def abandon(self, attempts: list[int]) -> None:
        """The coordinator gave these attempts' units to other replicas: they may not write, and
        their claims pass to the next attempt that asks."""
        self.abandoned.update(attempts)

    def write(self, unit: WorkUnit, attempt: int, analysis: np.ndarray, extra: dict | None = None) -> bool:
        """`writer` mode: claim and write the block (`write_unit`); False if another attempt holds
        the claim (nothing written)."""
        if not self.claim(unit, attempt):
            return False
        write_unit(self.store, unit, analysis, extra)
        return True

    def read(self, name: str, t_index: int, members: tuple[int, ...]) -> np.ndarray:
        """`writer` mode: member field `name` of `members` at `t_index` (a cycled replica's input)."""
        return self.store.read_block(t_index, members[0], members[-1] + 1, name)


def write_unit(store: RunStore, unit: WorkUnit, analysis: np.ndarray, extra: dict | None) -> None:
    """A unit's block into `store`: (member, channel, cell) at unit.t_index with `extra` member
    fields, or (member, time, channel, cell) trajectories of every time (a reanalysis unit)."""
    if analysis.ndim == 4:
        store.write_trajectories(unit.members, analysis)
    else:
        store.write_block(unit.t_index, unit.members, analysis, extra)


class DirectSink:
    """`shared` mode (and in-process): the replica writes its block itself after claiming it.

    Parameters
    ----------
    store_url : str
        Path or URL of the run store, as this replica's node sees it.
    ledger : StoreWriter or its actor handle
    """

    def __init__(self, store_url: str, ledger: Any):
        self.store_url = store_url
        self.ledger = ledger
        self._store: RunStore | None = None

    def check(self) -> None:
        """Fail on a replica that cannot open the store (not shared with the driver's node);
        called once the driver has created it."""
        from ensemble_da.errors import InputError

        try:
            self._store = RunStore(self.store_url)
        except InputError:
            raise InputError(
                f"cluster.store=shared but the run store {self.store_url} is not reachable from this replica's "
                "node; put the run directory on a shared filesystem or use cluster.store=writer"
            ) from None

    def write(self, unit: WorkUnit, attempt: int, analysis: np.ndarray, extra: dict | None = None) -> bool:
        if not call(self.ledger, "claim", unit, attempt):
            return False
        if self._store is None:
            self.check()
        write_unit(self._store, unit, analysis, extra)
        return True

    def read(self, name: str, t_index: int, members: tuple[int, ...]) -> np.ndarray:
        """Member field `name` of `members` at `t_index`, float32 (member, channel, cell)."""
        if self._store is None:
            self.check()
        return self._store.read_block(t_index, members[0], members[-1] + 1, name)


class WriterSink:
    """`writer` mode: the block goes to the `StoreWriter` actor on the driver's node."""

    def __init__(self, writer: Any):
        self.writer = writer

    def check(self) -> None:
        pass

    def write(self, unit: WorkUnit, attempt: int, analysis: np.ndarray, extra: dict | None = None) -> bool:
        return bool(call(self.writer, "write", unit, attempt, analysis, extra))

    def read(self, name: str, t_index: int, members: tuple[int, ...]) -> np.ndarray:
        return call(self.writer, "read", name, t_index, tuple(members))
