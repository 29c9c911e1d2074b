"""Observation operators (DESIGN.md §5): what an observation measures, one module per kind.

| kind | module | linear | reads |
|---|---|---|---|
| `nearest`, `bilinear` | `points` | yes | its channel at (lat, lon) |
| `column` | `column` | yes | Σ_c w_c · bilinear(x_c) |
| `footprint` | `footprint` | yes | its channel averaged over a disc of `radius_km` |
| `wind_speed` | `wind_speed` | no | √(U² + V²) of the bilinear U, V at `level` |
| `python` | `plugin` | no (autograd) | a user's torch function of the member batch |

`ObservationOperator.build` (`linear`) is the one place a config's `operator:` becomes an
operator, and `build_operator` (`sets`) the one place a run's observation sets become H; `base.Operator` is the protocol guidance and statistics rely on; `sparse` is the
deterministic gather/scatter every linear kind (and wind speed) runs on; `rows` is how
observations of any linear kind are normalised.
"""

from ensemble_da.obs.operators.base import Linearization, Operator
from ensemble_da.obs.operators.linear import ObservationOperator, OperatorKind
from ensemble_da.obs.operators.nonlinear import NonlinearOperator, NonlinearOperatorError
from ensemble_da.obs.operators.plugin import ObservationLocations
from ensemble_da.obs.operators.sets import StackedOperator, build_operator

__all__ = [
    "ObservationOperator",
    "OperatorKind",
    "Operator",
    "Linearization",
    "NonlinearOperator",
    "NonlinearOperatorError",
    "ObservationLocations",
    "StackedOperator",
    "build_operator",
]
