"""`get_model(config)`: a tiny random EDM-preconditioned HEALPix network."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from cbottle.models.networks import EDMPrecond, TinyNet


@dataclass
class ModelConfigV1:
    architecture: str = "tiny"
    model_channels: int = 8
    label_dim: int = 1024
    out_channels: int = 1
    condition_channels: int = 0
    time_length: int = 1
    level: int = 1

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, s) -> "ModelConfigV1":
        d = json.loads(s)
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


def get_model(config: ModelConfigV1, **_ignored) -> EDMPrecond:
    npix = 12 * 4**config.level
    net = TinyNet(config.out_channels, config.condition_channels, config.label_dim, config.model_channels, npix)
    return EDMPrecond(net, img_channels=config.out_channels, label_dim=config.label_dim, npix=npix)
