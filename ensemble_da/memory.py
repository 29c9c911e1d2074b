"""Refusing work too large for this machine before allocating it (DESIGN.md §7: one line `error: ...`).

A caller estimates the peak bytes of what it is about to build (a prior's basis, a closed-form
posterior) and calls `check_fits`; past 80 % of the memory still available the work is refused
with an `InputError` that names the work and both sizes in GiB, instead of the process being
killed by the OS halfway.
"""

from __future__ import annotations

import psutil

from ensemble_da.errors import InputError

__all__ = ["available_bytes", "check_fits", "USABLE_FRACTION"]

USABLE_FRACTION = 0.8  # headroom for what the caller did not count (temporaries, the interpreter)


def available_bytes() -> int:
    """Memory this process may still allocate (bytes), as the OS reports it."""
    return int(psutil.virtual_memory().available)


def check_fits(need: int, what: str, error: type[InputError] = InputError) -> None:
    """Raise `error("{what} needs ~N GiB; this machine has M GiB available")` when `need` bytes
    exceed USABLE_FRACTION of `available_bytes()`; return None otherwise."""
    have = available_bytes()
    if need > USABLE_FRACTION * have:
        raise error(f"{what} needs ~{need / 2**30:.1f} GiB; this machine has {have / 2**30:.1f} GiB available")
