"""BatchInfo as cBottle's checkpoints describe it (channels, time step, center, scales)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class BatchInfo:
    channels: list[str]
    time_step: int = 1
    time_unit: str = "HOUR"
    scales: Any | None = None
    center: Any | None = None
