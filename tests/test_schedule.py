"""The scheduling bookkeeping (`actors.schedule.UnitQueue`), without Ray: dependencies, no barrier
across blocks, affinity, re-queued units and the lead bound."""

from __future__ import annotations

import pytest

from actors.schedule import UnitQueue
from ensemble_da.assimilation import WorkUnit


def chains(times: int, blocks: int):
    """Units (t, block b = members (b,)) in time-major order, each after its block's time before."""
    units = {(t, b): WorkUnit(t, (b,)) for t in range(times) for b in range(blocks)}
    after = {u: units[(t - 1, b)] for (t, b), u in units.items() if t > 0}
    return units, list(units.values()), after


def drain(queue: UnitQueue, replica: int = 0) -> list[WorkUnit]:
    out = []
    while (u := queue.pop(replica)) is not None:
        out.append(u)
    return out


def test_a_unit_waits_for_its_predecessor_only():
    units, order, after = chains(3, 2)
    q = UnitQueue(order, after)
    assert drain(q) == [units[(0, 0)], units[(0, 1)]]  # time 1 waits for time 0
    q.delivered(units[(0, 1)], 0)
    # Block 1 goes on to time 1 while block 0 is still at time 0: no barrier across blocks.
    assert drain(q) == [units[(1, 1)]]
    q.delivered(units[(1, 1)], 0)
    assert drain(q) == [units[(2, 1)]]
    q.delivered(units[(0, 0)], 0)
    assert drain(q) == [units[(1, 0)]]
    assert q and units[(2, 0)] in q.missing


def test_a_predecessor_already_delivered_is_no_reason_to_wait():
    units, order, after = chains(3, 1)
    q = UnitQueue(order[1:], after)  # time 0 is in the store (a resumed run)
    assert drain(q) == [units[(1, 0)]]


def test_the_replica_that_delivered_a_block_gets_its_next_time():
    units, order, after = chains(2, 2)
    q = UnitQueue(order, after)
    first, second = q.pop(0), q.pop(1)
    q.delivered(first, 1)  # block 0 done on replica 1
    q.delivered(second, 0)  # block 1 done on replica 0
    free = {0: True, 1: True}
    # Replica 0 is asked first but takes its own block (1), leaving block 0 to replica 1.
    assert q.pop(0, free.get) == units[(1, 1)]
    assert q.pop(1, free.get) == units[(1, 0)]


def test_a_unit_goes_elsewhere_when_its_home_replica_cannot_take_it():
    units, order, after = chains(2, 1)
    q = UnitQueue(order, after)
    q.delivered(q.pop(1), 1)
    assert q.pop(0, {0: True, 1: True}.get) is None  # replica 1 can take it: it waits there
    assert q.pop(0, {0: True, 1: False}.get) == units[(1, 0)]  # replica 1 busy or lost


def test_a_requeued_unit_runs_again_in_order():
    units, order, after = chains(1, 3)
    q = UnitQueue(order, after)
    taken = drain(q)
    assert taken == order
    q.requeue(units[(0, 2)])
    q.requeue(units[(0, 0)])
    assert drain(q) == [units[(0, 0)], units[(0, 2)]]
    q.delivered(units[(0, 0)], 0)
    q.requeue(units[(0, 0)])  # delivered: never again
    assert drain(q) == []


def test_lead_bounds_how_far_a_block_runs_ahead_of_the_slowest():
    units, order, after = chains(6, 2)
    q = UnitQueue(order, after, max_lead=2)
    slow = q.pop(0)
    assert slow == units[(0, 0)]
    reached = []
    while (u := q.pop(1)) is not None:
        q.delivered(u, 1)
        reached.append(u.t_index)
    assert reached == [0, 1, 2] and not q.has_ready()  # time 3 is 3 ahead of the slowest (time 0)
    q.delivered(slow, 0)
    assert q.has_ready() and q.pop(1) == units[(3, 1)]  # the floor moved to time 1
    assert q.pop(0) == units[(1, 0)]


def test_negative_lead_is_refused():
    with pytest.raises(ValueError, match="max_lead"):
        UnitQueue([], max_lead=-1)
