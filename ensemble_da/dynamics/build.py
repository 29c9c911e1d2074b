"""`build_forecast`: the forecast model a run's `cycle.forecast` names (DESIGN.md §10)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ensemble_da.config import ReplicaSpec, RunConfig
from ensemble_da.errors import InputError

__all__ = ["build_forecast"]


def build_forecast(config: ReplicaSpec | RunConfig, prior: Any):
    """The `ForecastModel` of `config.cycle.forecast` for `prior` (the run's `Denoiser`); `config`
    is the run's `ReplicaSpec` (a RunConfig serves as well: the same names).

    markov: `MarkovForecast` (needs model.kind gaussian_markov); python: the checked plug-in
    (`ensemble_da.dynamics.plugin`); window: `WindowForecast` (a window checkpoint's own
    transition); speedy: `SpeedyForecast` (jcm, imported only here). Every
    failure is one InputError line.
    """
    spec = config.cycle.forecast
    if spec.kind == "markov":
        from ensemble_da.dynamics.markov import MarkovForecast
        from ensemble_da.priors.gaussian_markov import GaussianMarkovPrior

        if not isinstance(prior, GaussianMarkovPrior):
            raise InputError(f"cycle.forecast markov is the transition of model.kind gaussian_markov, got model.kind "
                             f"{config.model.kind}: use that prior or another cycle.forecast kind")
        return MarkovForecast(prior)
    if spec.kind == "python":
        from ensemble_da.dynamics.plugin import load_forecast_plugin

        return load_forecast_plugin(spec.object, spec.options, prior)
    if spec.kind == "window":
        from ensemble_da.dynamics.window import WindowForecast

        return WindowForecast.create(prior, config.sampler)
    from ensemble_da.dynamics.speedy import SpeedyForecast  # spec.kind == "speedy": the union is closed

    times = config.analysis_times()
    hours = 6.0 if len(times) < 2 else float((times[1] - times[0]) / np.timedelta64(1, "h"))
    return SpeedyForecast.create(prior.grid, prior.normalization.channels, hours=hours, spinup_days=spec.spinup_days,
                                 perturbation_k=spec.perturbation_k, seed=config.seed)
