"""Wall seconds of a run's phases, for summary.json `timings_s` (so a slow run says where)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

__all__ = ["Stopwatch"]


class Stopwatch(dict):
    """Named wall-clock totals in seconds: `with watch("exact_s"): ...` adds the block's time to
    `watch["exact_s"]` (a name timed twice accumulates); `watch.add(name, s)` adds seconds
    measured elsewhere (a replica's sampling time)."""

    @contextmanager
    def time(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float) -> None:
        self[name] = self.get(name, 0.0) + float(seconds)
