"""Classical data assimilation a user would pick instead of a diffusion prior, on the same inputs
(DESIGN.md §2 `baselines`): a background ensemble (M, channel, cell) of prior draws in normalised
units, and the run's `ObservationOperator` (y, sigma in the same units).

- `stochastic_enkf`: the EnKF with perturbed observations (Burgers et al. 1998).
- `letkf`: the local ensemble transform Kalman filter (Hunt et al. 2007) with Gaspari–Cohn
  localisation by great-circle distance and multiplicative inflation.
- `optimal_interpolation`: OI / 3D-Var with the static (climatological) B, the closed-form
  update of `ensemble_da.exact` with the `gaussian_climatology` prior.
- `cycle_ensemble_filter`: either filter cycled with a forecast model in the loop (the cycled
  EnKF/LETKF that `mode: cycle` is compared with).
"""

from ensemble_da.baselines.cycled import CycledEnsemble, EnsembleFilter, cycle_ensemble_filter
from ensemble_da.baselines.enkf import stochastic_enkf
from ensemble_da.baselines.letkf import letkf
from ensemble_da.baselines.localization import gaspari_cohn, great_circle_km
from ensemble_da.baselines.oi import optimal_interpolation

__all__ = ["cycle_ensemble_filter", "EnsembleFilter", "CycledEnsemble", "stochastic_enkf", "letkf", "gaspari_cohn", "great_circle_km", "optimal_interpolation"]
