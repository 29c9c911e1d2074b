"""Throughput of a cycled run's schedule with one slow member block: a simulated cluster.

Replicas are simulated GPUs (an event clock, no sleeping, no Ray): a unit (time, block) takes 1 s,
the slow block's units take `--slow-factor` s (at every time, or at one time only: a node that
hangs once). Two schedules of the same units:
- barrier: every block's time t before any block's time t + 1 (the first-guess check of
  `cycle.first_guess_check: true` needs the whole background ensemble);
- flow: `actors.schedule.UnitQueue`, the scheduler a run with `first_guess_check: false` uses
  (a block waits only for itself at the time before, at most `max_lead` times ahead).
Ideal: the larger of total work / replicas and the slow block's own chain. The table gives each
schedule's share of ideal throughput (ideal makespan / makespan).

    python benchmarks/cycle_schedule.py [--replicas 8 --blocks 16 --cycles 20 --slow-factor 3]

What it does not measure: Ray's own costs per unit (see benchmarks/ray_overhead.py).
"""

from __future__ import annotations

import argparse
import heapq

from actors.schedule import UnitQueue
from ensemble_da.assimilation import WorkUnit


def unit_seconds(unit: WorkUnit, slow_factor: float, slow_at: int | None) -> float:
    slow = unit.members[0] == 0 and (slow_at is None or unit.t_index == slow_at)
    return slow_factor if slow else 1.0


def simulate(units: list[WorkUnit], after: dict, replicas: int, seconds, max_lead: int | None) -> float:
    """Makespan (s) of `units` on `replicas`, each taking one unit at a time from a UnitQueue."""
    queue = UnitQueue(units, after, max_lead)
    clock, busy, free = 0.0, [], list(range(replicas))
    while queue:
        for r in list(free):
            unit = queue.pop(r, lambda h: h in free)
            if unit is not None:
                free.remove(r)
                heapq.heappush(busy, (clock + seconds(unit), r, unit))
        clock, r, unit = heapq.heappop(busy)
        queue.delivered(unit, r)
        free.append(r)
    return clock


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=8)
    ap.add_argument("--blocks", type=int, default=16)
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--slow-factor", type=float, default=3.0)
    ap.add_argument("--max-lead", type=int, default=4)
    args = ap.parse_args()
    units = {(t, b): WorkUnit(t, (b,)) for t in range(args.cycles) for b in range(args.blocks)}
    chained = {u: units[(t - 1, b)] for (t, b), u in units.items() if t > 0}
    order = list(units.values())
    print(f"{args.replicas} replicas, {args.blocks} blocks, {args.cycles} cycles, unit 1 s, "
          f"slow block {args.slow_factor:g} s per unit\n")
    print("| slow block | ideal (s) | barrier (s) | flow (s) | barrier / ideal throughput | flow / ideal throughput |")
    print("|---|---|---|---|---|---|")
    for label, slow_at in (("at every cycle", None), ("at cycle 5 only", 5)):
        def seconds(u):
            return unit_seconds(u, args.slow_factor, slow_at)

        work = sum(seconds(u) for u in order)
        chain = sum(seconds(units[(t, 0)]) for t in range(args.cycles))
        ideal = max(work / args.replicas, chain)
        # Barrier: each cycle alone, its blocks in any order.
        barrier = sum(simulate([units[(t, b)] for b in range(args.blocks)], {}, args.replicas, seconds, None)
                      for t in range(args.cycles))
        flow = simulate(order, chained, args.replicas, seconds, args.max_lead)
        print(f"| {label} | {ideal:.1f} | {barrier:.1f} | {flow:.1f} | {ideal / barrier:.2f} | {ideal / flow:.2f} |")


if __name__ == "__main__":
    main()
