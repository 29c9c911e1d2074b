"""User forecast models, as plug-ins (`cycle.forecast: {kind: python, object: "plugin_forecast:..."}`).

`ar1` writes the gaussian_markov transition out by hand from the prior's public pieces, without
`MarkovForecast`: z_k = ρ z_{k−1} + √(1 − ρ²) Σ^½ ξ, z_0 = Σ^½ ξ, ξ from the member's forecast
stream. The others break the contract on purpose.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from ensemble_da.dynamics import forecast_generator


class AR1:
    def __init__(self, prior):
        self.prior = prior

    def forecast(self, x, t_index, members, seed):
        p, norm = self.prior, self.prior.normalization
        shape = (len(norm.channels), p.grid.npix)
        xi = torch.stack([torch.randn(shape, generator=forecast_generator(seed, t_index, m), dtype=torch.float64)
                          for m in members])
        draw = p.covariance_sqrt_apply(xi)  # Σ^½ ξ
        if x is None:
            z = draw
        else:
            z = p.rho * torch.as_tensor(norm.normalize(np.asarray(x, np.float64))) + float(np.sqrt(1.0 - p.rho ** 2)) * draw
        return norm.denormalize(z.numpy()).astype(np.float32)


def ar1(prior):
    return AR1(prior)


def wrong_shape(prior):
    return SimpleNamespace(forecast=lambda x, t, members, seed: np.zeros((len(members), 3), np.float32))


def nan_at(prior, time: int = 1):
    good = AR1(prior)

    def forecast(x, t, members, seed):
        out = good.forecast(x, t, members, seed)
        if t >= time:
            out[:, 0, 0] = np.nan
        return out

    return SimpleNamespace(forecast=forecast)


def no_forecast(prior):
    return object()


def slow_block(prior, seconds: float = 10.0, time: int = 2, member: int = 0, until: str | None = None):
    """`ar1`, but the block holding `member` takes `seconds` longer at analysis time `time` (a slow
    node, a slow GPU): the members are those of `ar1`. With `until` (a file path) it is slow
    until that file exists, at most `seconds`: a test's own signal, so that a busy machine does
    not decide how far the others get while it waits."""
    import os
    import time as clock

    good = AR1(prior)

    def forecast(x, t, members, seed):
        if t == time and member in list(members):
            stop = clock.monotonic() + seconds
            while clock.monotonic() < stop and not (until and os.path.exists(until)):
                clock.sleep(0.1)
        return good.forecast(x, t, members, seed)

    return SimpleNamespace(forecast=forecast)
