"""`cycle.forecast: {kind: python, object: "package.module:factory", options: {...}}`: a user
forecast model (DESIGN.md §2, §10).

The contract: `object` names a factory, called once per run as `factory(prior, **options)`
(`prior`: the run's `Denoiser`, for its grid and normalisation); it returns an object with the
`ForecastModel` method (`ensemble_da.dynamics.base`)

    forecast(x, t_index, members, seed) -> array (member, channel, cell), physical units

with x float32 (member, channel, cell) physical units, the members' states at t_index − 1 (None
before the first time: the model's climatological draw), members the member ids, seed the run's
seed. A stochastic model should draw member m's noise from `forecast_generator(seed, t_index, m)`,
so a member's forecast does not depend on its batch, replica or retry. A plain forecast function
is wrapped as a factory that ignores the prior: `lambda prior: SimpleNamespace(forecast=f)`.

Every call's output is checked (`PluginForecast`): an array of shape (len(members), channels of
the prior, cells of the prior's grid), all finite; otherwise one `InputError` line naming the
plug-in and what was wrong. The import goes through the plug-in priors' loader
(`ensemble_da.priors.plugin.resolve_object`). Before a run starts, `check_forecast_plugin`
builds it once more and forecasts member 0 into times 0 and 1, so a plug-in broken from the start
is refused before the run directory exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ensemble_da.errors import InputError
from ensemble_da.priors.plugin import resolve_object

__all__ = ["PluginForecast", "load_forecast_plugin", "check_forecast_plugin"]

KEY = "cycle.forecast.object"


@dataclass
class PluginForecast:
    """A user forecast model with its output checked on every call.

    model: the factory's result (has `forecast`); name: the `object` string; shape: (channel,
    cell) of one member's state.
    """

    model: Any
    name: str
    shape: tuple[int, int]

    def forecast(self, x: np.ndarray | None, t_index: int, members: Sequence[int], seed: int) -> np.ndarray:
        """The plug-in's forecast of `members` into time `t_index`: float32 (member, channel, cell)."""
        members = [int(m) for m in members]
        label = f"{KEY} {self.name!r}"
        try:
            out = self.model.forecast(x, int(t_index), members, int(seed))
        except InputError as exc:
            raise InputError(f"{label}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - user code failing is reported, not a traceback
            raise InputError(f"{label}: forecast into time {t_index} failed ({type(exc).__name__}: {exc})") from None
        try:
            arr = np.asarray(out, dtype=np.float32) if not hasattr(out, "detach") else out.detach().cpu().numpy()
        except (TypeError, ValueError) as exc:
            raise InputError(f"{label}: forecast returned {type(out).__name__}, not an array ({exc})") from None
        expect = (len(members), *self.shape)
        if arr.shape != expect:
            raise InputError(f"{label}: forecast into time {t_index} returned shape {arr.shape}, expected {expect} "
                             "(member, channel, cell)")
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise InputError(f"{label}: forecast into time {t_index} returned {bad} non-finite values (NaN or inf)")
        return arr.astype(np.float32, copy=False)


def load_forecast_plugin(spec: str, options: Mapping[str, Any], prior: Any) -> PluginForecast:
    """Import `spec`, call it as `factory(prior, **options)` and wrap the result (checked output)."""
    factory = resolve_object(spec, KEY)
    try:
        model = factory(prior, **dict(options))
    except InputError as exc:
        raise InputError(f"{KEY} {spec!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - user code failing is reported, not a traceback
        raise InputError(f"{KEY} {spec!r} failed: {type(exc).__name__}: {exc}") from None
    if not callable(getattr(model, "forecast", None)):
        raise InputError(f"{KEY} {spec!r}: the factory returned {type(model).__name__}, which has no "
                         "forecast(x, t_index, members, seed) method")
    return PluginForecast(model, spec, (len(prior.normalization.channels), prior.grid.npix))


def check_forecast_plugin(spec: str, options: Mapping[str, Any], prior: Any, seed: int, times: int) -> None:
    """Build the plug-in and forecast member 0 into time 0 (from None) and, when the run has a
    second time, from that into time 1; InputError (one line) for what fails. A separate instance
    from the run's, so a plug-in that keeps state starts the run fresh."""
    model = load_forecast_plugin(spec, options, prior)
    x = model.forecast(None, 0, [0], seed)
    if times > 1:
        model.forecast(x, 1, [0], seed)
