"""Observations: sets, linear operators, synthetic draws, readers, selection and QC (DESIGN.md §5)."""

from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators import ObservationOperator

__all__ = ["ObservationSet", "ObservationOperator"]
