"""Forecast models that carry members from one analysis time to the next (DESIGN.md §2, §10)."""

from __future__ import annotations

from ensemble_da.dynamics.base import ForecastModel, forecast_generator
from ensemble_da.dynamics.markov import MarkovForecast

__all__ = ["ForecastModel", "MarkovForecast", "forecast_generator"]
