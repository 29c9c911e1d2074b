"""Users' observation operators as plug-ins (`operator: {kind: python, object: "plugin_operators:..."}`):
one good one (wind speed written by a user) and one per way of getting it wrong."""

from __future__ import annotations

import numpy as np
import torch


def wind_speed(x, locations, level=850):
    """√(U² + V²) at every location, as a user would write it with `locations.interpolate`."""
    u = locations.interpolate(x, f"U{level}")
    v = locations.interpolate(x, f"V{level}")
    return torch.sqrt(u * u + v * v)


def wrong_shape(x, locations):
    return wind_speed(x, locations).mean(0)


def nan(x, locations):
    return wind_speed(x, locations) * float("nan")


def through_numpy(x, locations):
    return torch.as_tensor(np.sqrt(wind_speed(x, locations).detach().numpy()))


def mixes_members(x, locations):
    s = wind_speed(x, locations)
    return s - s.mean(0, keepdim=True)


def fails(x, locations):
    raise KeyError("no such level")


def not_a_tensor(x, locations):
    return [0.0] * len(locations)


not_callable = 3.0
