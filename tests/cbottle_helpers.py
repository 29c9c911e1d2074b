"""Shared by the cBottle tests: the stand-in package on sys.path and its checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

STANDIN = Path(__file__).parent / "standin"
CHANNELS = ["T850", "Z500", "rlut", "tas", "rsds"]
CENTER = [270.0, 55000.0, 240.0, 285.0, 180.0]
SCALES = [10.0, 3000.0, 40.0, 15.0, 90.0]


@pytest.fixture
def standin(monkeypatch):
    """The stand-in `cbottle` importable for one test, forgotten afterwards."""
    monkeypatch.syspath_prepend(str(STANDIN))
    yield
    for name in [m for m in sys.modules if m == "cbottle" or m.startswith("cbottle.")]:
        del sys.modules[name]


def write_checkpoint(path: Path, seed: int, level: int = 1, condition_channels: int = 1) -> Path:
    import cbottle.checkpointing
    import cbottle.models
    from cbottle.datasets.base import BatchInfo

    torch.manual_seed(seed)
    config = cbottle.models.ModelConfigV1(out_channels=len(CHANNELS), condition_channels=condition_channels, level=level)
    net = cbottle.models.get_model(config)
    with cbottle.checkpointing.Checkpoint(path, "w") as c:
        c.write_model(net)
        c.write_model_config(config)
        c.write_batch_info(BatchInfo(channels=CHANNELS, center=CENTER, scales=SCALES))
    return path


def raw_net(path: Path):
    """The network as cBottle itself reads it (the independent side of the comparisons)."""
    import cbottle.checkpointing

    with cbottle.checkpointing.Checkpoint(path) as c:
        return c.read_model().eval()
