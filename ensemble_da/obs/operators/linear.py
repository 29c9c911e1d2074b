"""Linear observation operators H and the one place every operator kind is built (DESIGN.md §5).

`ObservationOperator` is H of one observation set as sparse rows on the (channel, cell) state,
in the prior's normalised units: observation i reads `flat[i, :]` with `weights[i, :]`, and
y, sigma are normalised by each observation's own unit (`rows`). H and its adjoint Hᵀ are
explicit torch maps (`sparse`: constants on the device once, gathered formulation, a
deterministic Hᵀ that never accumulates with atomics) and are each other's derivative, so
`torch.autograd`, `torch.func.vjp`, `jvp` and `vmap` see exactly these two linear maps.

`ObservationOperator.build(obs, grid, normalization, operator)` turns a config `operator:`
(a kind name or a mapping, `ensemble_da.config.operator_config`) into an operator: the linear
kinds (`points`, `column`, `footprint`) give an `ObservationOperator`, the nonlinear ones
(`wind_speed`, `plugin`) a `NonlinearOperator` with the same protocol (`base.Operator`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from ensemble_da.channels import Normalization
from ensemble_da.config import operator_config
from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.qc import check_observations
from ensemble_da.obs.operators.base import Linearization
from ensemble_da.obs.operators.column import column_rows
from ensemble_da.obs.operators.footprint import footprint_rows
from ensemble_da.obs.operators.nonlinear import NonlinearOperator
from ensemble_da.obs.operators.plugin import PluginOperator
from ensemble_da.obs.operators.points import point_rows
from ensemble_da.obs.operators.rows import LinearRows
from ensemble_da.obs.operators.sparse import SparsePlan, apply_rows, apply_rows_adjoint
from ensemble_da.obs.operators.wind_speed import WindSpeedOperator

__all__ = ["ObservationOperator", "OperatorKind"]

OperatorKind = Literal["nearest", "bilinear", "column", "footprint", "wind_speed", "python"]


@dataclass(frozen=True)
class ObservationOperator:
    """Linear H for one observation set on one grid, in the prior's normalised units.

    Parameters
    ----------
    flat : ndarray of int64, shape (obs, k)
        Index into the flattened (channel, cell) state: `channel * npix + cell`.
    weights : ndarray of float64, shape (obs, k)
        H's weights (normalised units; for point rows the interpolation weights, summing to 1).
        Padding entries carry weight 0.
    y, sigma : ndarray of float64, shape (obs,)
        Observations and error std in normalised units.
    n_channels, npix : int
        State shape (channel, cell).
    physical_weights : ndarray of float64, shape (obs, k), or None
        The weights that read physical fields into physical values (`observe`), for rows that do
        not commute with the per-channel normalisation (a column mixing channels). None: `weights`
        serve for both (point and footprint rows; `rows` module).
    """

    flat: np.ndarray
    weights: np.ndarray
    y: np.ndarray
    sigma: np.ndarray
    n_channels: int
    npix: int
    physical_weights: np.ndarray | None = None
    _plans: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    linear: ClassVar[bool] = True

    @classmethod
    def build(
        cls,
        obs: ObservationSet,
        grid: HealpixGrid,
        normalization: Normalization,
        kind: OperatorKind | str | dict | Any = "bilinear",
    ) -> "ObservationOperator | NonlinearOperator":
        """The operator of `obs` (all of them: filter with `obs.assimilated_only()` first).

        `kind` is `observations.operator`: a point kind name (`nearest`, `bilinear`), a mapping
        `{kind: ..., ...}` or its config model. Linear kinds return an ObservationOperator,
        nonlinear ones (`wind_speed`, `python`) a NonlinearOperator. InputError (one line) for a
        bad operator, a channel the prior lacks, or a plug-in that fails its checks.
        """
        spec = operator_config(kind)
        if spec.kind in ("nearest", "bilinear"):
            rows = point_rows(obs, grid, normalization, spec.kind)
        elif spec.kind == "column":
            rows = column_rows(obs, grid, normalization, spec.weights)
        elif spec.kind == "footprint":
            rows = footprint_rows(obs, grid, normalization, spec.radius_km)
        elif spec.kind == "wind_speed":
            return WindSpeedOperator(obs, grid, normalization, spec.level)
        elif spec.kind == "python":
            return PluginOperator.load(obs, grid, normalization, spec.object, spec.options, spec.scale)
        else:  # operator_config admits only the kinds above
            raise InputError(f"observations.operator: unknown kind {spec.kind!r}")
        return cls.from_rows(rows, obs, normalization, grid.npix)

    @classmethod
    def from_rows(cls, rows: LinearRows, obs: ObservationSet, normalization: Normalization,
                  npix: int) -> "ObservationOperator":
        """H of `rows` with `obs`'s values and sigma normalised by the rows' observation units."""
        return cls(
            flat=rows.flat,
            weights=rows.weights,
            y=(obs.value - rows.center) / rows.scale,
            sigma=obs.sigma / rows.scale,
            n_channels=len(normalization.channels),
            npix=npix,
            physical_weights=rows.physical_weights,
        )

    @classmethod
    def at_cells(
        cls,
        cells: np.ndarray,
        channels: np.ndarray,
        values: np.ndarray,
        sigma: np.ndarray | float,
        grid: HealpixGrid,
        normalization: Normalization,
    ) -> "ObservationOperator":
        """H that reads whole cells: observation i is `values[i]` ± `sigma[i]` (physical units)
        of channel `channels[i]` at NEST cell `cells[i]`; all arrays with shape (obs,).

        InputError for a cell outside the grid, a channel the prior does not have, a non-finite
        value or one outside its channel's physical bounds (the CLI's quality control, same message).
        """
        cells = np.asarray(cells, dtype=np.int64).reshape(-1)
        if cells.size == 0:
            raise InputError("no observations given")
        bad = (cells < 0) | (cells >= grid.npix)
        if bad.any():
            raise InputError(f"observation cell {int(cells[bad][0])} is outside the grid (0..{grid.npix - 1})")
        ch = normalization.index(np.broadcast_to(np.asarray(channels, dtype=str), cells.shape).tolist())
        values = np.broadcast_to(np.asarray(values, dtype=np.float64), cells.shape)
        sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), cells.shape)
        # the CLI's QC checks (non-finite, physical bounds) with its messages (obs/qc.py)
        check_observations(values, None, None, np.asarray(normalization.channels)[ch], cell=cells, strict=False)
        if not np.all(sigma > 0):
            raise InputError(f"observation sigma must be > 0, got {float(sigma.min())}")
        return cls(
            flat=(ch * grid.npix + cells)[:, None],
            weights=np.ones((cells.size, 1)),
            y=(values - normalization.center[ch]) / normalization.scale[ch],
            sigma=sigma / normalization.scale[ch],
            n_channels=len(normalization.channels),
            npix=grid.npix,
        )

    @classmethod
    def concatenate(cls, operators: "Sequence[ObservationOperator]") -> "ObservationOperator":
        """One operator reading the observations of `operators` in turn (same state shape):
        rows padded to the widest with weight-0 entries. ValueError for different states."""
        ops = list(operators)
        if not ops or len({(o.n_channels, o.npix) for o in ops}) != 1:
            raise ValueError("concatenate needs at least one operator, all on the same (channel, cell) state")
        width = max(o.flat.shape[1] for o in ops)

        def pad(a: np.ndarray, value) -> np.ndarray:
            return np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=value)

        physical = None
        if any(o.physical_weights is not None for o in ops):
            physical = np.concatenate([pad(o.weights if o.physical_weights is None else o.physical_weights, 0.0)
                                       for o in ops])
        return cls(
            flat=np.concatenate([pad(o.flat, 0) for o in ops]),
            weights=np.concatenate([pad(o.weights, 0.0) for o in ops]),
            y=np.concatenate([o.y for o in ops]),
            sigma=np.concatenate([o.sigma for o in ops]),
            n_channels=ops[0].n_channels,
            npix=ops[0].npix,
            physical_weights=physical,
        )

    def __len__(self) -> int:
        return len(self.y)

    @property
    def state_size(self) -> int:
        return self.n_channels * self.npix

    def _plan(self, device: torch.device) -> SparsePlan:
        if device not in self._plans:
            self._plans[device] = SparsePlan.build(self.flat, self.weights, self.state_size, device)
        return self._plans[device]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """H x: (..., channel, cell) → (..., obs); differentiable (autograd and torch.func)."""
        return apply_rows(x, self._plan(x.device), (self.n_channels, self.npix))

    __call__ = forward

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Hᵀ y: (..., obs) → (..., channel, cell); deterministic, differentiable."""
        return apply_rows_adjoint(y, self._plan(y.device), (self.n_channels, self.npix))

    def linearize(self, x: torch.Tensor) -> Linearization:
        """H is its own linearisation: (H x, H, Hᵀ)."""
        return Linearization(self.forward(x), self.forward, self.adjoint)

    def matrix(self) -> sp.csr_matrix:
        """H as a sparse (obs, channel·cell) matrix, for exact posteriors and diagnostics."""
        rows = np.repeat(np.arange(len(self)), self.flat.shape[1])
        return sp.csr_matrix(
            (self.weights.reshape(-1), (rows, self.flat.reshape(-1))), shape=(len(self), self.state_size)
        )

    def apply_numpy(self, x: np.ndarray) -> np.ndarray:
        """H x for float numpy arrays with shape (batch, channel, cell) → (batch, obs), normalised units."""
        xf = x.reshape(x.shape[0], -1)
        return (xf[:, self.flat] * self.weights).sum(-1)

    def observe(self, x: np.ndarray) -> np.ndarray:
        """The observations of physical fields (batch, channel, cell) → (batch, obs), physical units."""
        if self.physical_weights is None:
            return self.apply_numpy(x)
        xf = x.reshape(x.shape[0], -1)
        return (xf[:, self.flat] * self.physical_weights).sum(-1)
