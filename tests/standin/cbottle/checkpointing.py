"""cBottle's checkpoint zip: net_state.pth, model.json, batch_info.json, metadata.json."""

from __future__ import annotations

import json
import zipfile

import torch

import cbottle.models
from cbottle.datasets.base import BatchInfo

current_version = 1


class Checkpoint:
    def __init__(self, f, mode: str = "r"):
        self._zip = None
        self._zip = zipfile.ZipFile(f, mode)

    def write_model(self, net: torch.nn.Module) -> None:
        with self._zip.open("net_state.pth", "w", force_zip64=True) as f:
            torch.save(net.state_dict(), f)

    def write_model_config(self, config) -> None:
        self._zip.writestr("model.json", config.dumps())

    def write_batch_info(self, info: BatchInfo) -> None:
        d = {"channels": info.channels, "time_step": info.time_step, "time_unit": info.time_unit}
        if info.scales is not None:
            d["scales"] = list(info.scales)
        if info.center is not None:
            d["center"] = list(info.center)
        self._zip.writestr("batch_info.json", json.dumps(d))

    def read_model_config(self):
        return cbottle.models.ModelConfigV1.loads(self._zip.open("model.json").read())

    def read_model(self, net=None, map_location="cpu", **model_kwargs) -> torch.nn.Module:
        metadata = json.loads(self._zip.read("metadata.json").decode())
        if metadata["version"] != current_version:
            raise ValueError(f"Unsupported checkpoint version: {metadata['version']}")
        if net is None:
            net = cbottle.models.get_model(self.read_model_config(), **model_kwargs)
        with self._zip.open("net_state.pth", "r") as f:
            net.load_state_dict(torch.load(f, weights_only=True, map_location=map_location))
        return net

    def read_batch_info(self) -> BatchInfo:
        d = json.loads(self._zip.read("batch_info.json"))
        return BatchInfo(channels=d["channels"], time_step=d.get("time_step", 1), time_unit=d.get("time_unit", "HOUR"),
                         scales=d.get("scales"), center=d.get("center"))

    def close(self) -> None:
        if self._zip.mode == "w":
            self._zip.writestr("metadata.json", json.dumps({"version": current_version}))
        self._zip.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
