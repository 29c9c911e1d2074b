"""Forecast models that carry members from one analysis time to the next (DESIGN.md §2, §10).

`build_forecast(config, prior)` builds the one `cycle.forecast` names: `markov` (markov.py),
`python` plug-ins (plugin.py), `speedy` (speedy.py, needs jcm).
"""

from __future__ import annotations

from ensemble_da.dynamics.base import ForecastModel, forecast_generator
from ensemble_da.dynamics.build import build_forecast
from ensemble_da.dynamics.markov import MarkovForecast

__all__ = ["ForecastModel", "MarkovForecast", "build_forecast", "forecast_generator"]
