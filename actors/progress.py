"""The progress bar of a run (on stderr): members done / total, per-replica throughput, retries."""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

__all__ = ["progress_bar"]


def progress_bar(enabled: bool, total: int, done: int) -> ContextManager[Callable[[object, int], None]]:
    """Context manager yielding show(executor, done): updates a rich bar of members done / total,
    with each replica's members per second and the executor's retry count. Disabled: a no-op."""
    if not enabled:
        return contextlib.nullcontext(lambda ex, d: None)

    @contextlib.contextmanager
    def bar():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("members"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.description}"), console=Console(stderr=True), transient=False,
        ) as prog:
            task = prog.add_task("starting replicas", total=total, completed=done)

            def show(ex, d: int) -> None:
                rates = " ".join(f"r{s.index}:{s.members_per_second:.2f}/s" for s in ex.stats)
                prog.update(task, completed=d, description=f"{rates} retries:{ex.retries}")

            yield show

    return bar()
