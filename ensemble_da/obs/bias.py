"""Observation bias estimated jointly with the state, VarBC-like (DESIGN.md §5; Dee 2005, QJRMS 131).

The observations of a set with a bias model read

    y = h(z) + P β + e ,   e ~ N(0, diag(s²)) ,   β ~ N(0, diag(b²)) independent of z ,

with β (k,) the bias parameters in the physical units of the observed quantity (per unit of
predictor) and P (obs, k) the predictors divided by each observation's normalisation scale, so
P β is in the normalised units of y. One parameter per (observed channel, predictor): `constant`
(1), `latitude` (latitude / 90°) or `value` (the observed value, standardised over the set's
observations of that channel).

Over β the error covariance is R = diag(s²) + P diag(b²) Pᵀ: guidance sees that R (MMPS adds
P B Pᵀ to its Krylov system, regression guidance applies R⁻¹ by Woodbury). Given a member's state
z the bias posterior is Gaussian,

    β | z, y ~ N(C Pᵀ S⁻¹ (y − h(z)), C) ,   C = (B⁻¹ + Pᵀ S⁻¹ P)⁻¹ ,   S = diag(s²) ,

so one draw of β per member, from the member's own stream, makes (z, β) a draw of the joint
posterior: exact whenever z is (a Gaussian prior, linear h, converged MMPS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch

from ensemble_da.errors import InputError
from ensemble_da.obs.observation_set import ObservationSet

__all__ = ["ObservationBias", "BiasPredictor", "BIAS_STREAM", "bias_generator", "draw_bias", "bias_model", "bias_statistics",
           "exact_bias_metrics"]

BiasPredictor = Literal["constant", "latitude", "value"]

# Member m's bias draw at time t comes from SeedSequence([seed, t, m, BIAS_STREAM]): apart from its
# sampling noise (SeedSequence([seed, t, m])) and from the scores' streams (stats.py).
BIAS_STREAM = 2**31 - 6


def bias_generator(seed: int, t_index: int, member: int) -> np.random.Generator:
    """The generator of member `member`'s bias draw at time `t_index`."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(t_index), int(member), BIAS_STREAM]))


@dataclass(frozen=True)
class ObservationBias:
    """The bias model of one observation set (module docstring).

    predictors : float64 (obs, k), P: normalised units of y per physical unit of β.
    prior_sigma : float64 (k,), b: prior std of β, physical units.
    names : k parameter names, `<channel>` for a constant, `<channel>:<predictor>` otherwise.
    """

    predictors: np.ndarray
    prior_sigma: np.ndarray
    names: tuple[str, ...]

    @classmethod
    def build(cls, obs: ObservationSet, sigma_normalised: np.ndarray, prior_sigma: float,
              predictors: Sequence[BiasPredictor] = ("constant",)) -> "ObservationBias":
        """The model of `obs` (the assimilated observations H reads, in its order), whose
        normalised error std is `sigma_normalised` (obs,): each observation's normalisation
        scale is obs.sigma / sigma_normalised. InputError for prior_sigma ≤ 0 or not finite."""
        if not (np.isfinite(prior_sigma) and prior_sigma > 0):
            raise InputError(f"observations.bias.prior_sigma must be a finite number > 0, got {prior_sigma}")
        scale = np.asarray(obs.sigma, np.float64) / np.asarray(sigma_normalised, np.float64)
        channels = np.asarray(obs.channel).astype(str)
        y_norm = np.asarray(obs.value, np.float64)
        columns, names = [], []
        for ch in dict.fromkeys(channels.tolist()):
            inside = channels == ch
            values = (y_norm[inside] - y_norm[inside].mean()) / max(float(y_norm[inside].std()), 1e-12)
            for p in predictors:
                col = np.zeros(len(obs))
                col[inside] = {"constant": 1.0, "latitude": np.asarray(obs.lat)[inside] / 90.0, "value": values}[p]
                columns.append(col / scale)
                names.append(ch if p == "constant" else f"{ch}:{p}")
        return cls(np.stack(columns, 1), np.full(len(names), float(prior_sigma)), tuple(names))

    def __len__(self) -> int:
        return len(self.names)

    def _torch(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.as_tensor(self.predictors, dtype=like.dtype, device=like.device),
                torch.as_tensor(self.prior_sigma**2, dtype=like.dtype, device=like.device))

    def covariance_matvec(self, v: torch.Tensor) -> torch.Tensor:
        """P B Pᵀ v for v (batch, obs): the bias's share of the error covariance."""
        p, b2 = self._torch(v)
        return ((v @ p) * b2) @ p.T

    def quadratic(self, r: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """rᵀ (diag(var) + P B Pᵀ)⁻¹ r per row, for r (batch, obs), var (batch, obs) or (1, obs),
        by Woodbury: rᵀA⁻¹r − uᵀ (B⁻¹ + PᵀA⁻¹P)⁻¹ u with u = PᵀA⁻¹r (differentiable in r)."""
        p, b2 = self._torch(r)
        w = r / var
        u = w @ p  # (batch, k)
        core = torch.diag_embed(1.0 / b2).expand(r.shape[0], -1, -1) + torch.einsum(
            "ok,bo,ol->bkl", p, (1.0 / var).expand_as(r), p)
        return (w * r).sum(-1) - (u * torch.linalg.solve(core, u[..., None])[..., 0]).sum(-1)

    def posterior(self, residual: np.ndarray, sigma2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean (batch, k) and covariance (k, k) of β given residuals y − h(z) (batch, obs) and
        the error variances s² (obs,), all normalised; β in physical units."""
        pw = self.predictors / sigma2[:, None]
        cov = np.linalg.inv(np.diag(1.0 / self.prior_sigma**2) + self.predictors.T @ pw)
        cov = 0.5 * (cov + cov.T)
        return np.asarray(residual, np.float64) @ pw @ cov, cov

    def draw(self, residual: np.ndarray, sigma2: np.ndarray, generators: Sequence[np.random.Generator]) -> np.ndarray:
        """One β per member from β | z, y (`posterior`), member i from generators[i]: (member, k)."""
        mean, cov = self.posterior(residual, sigma2)
        chol = np.linalg.cholesky(cov)
        noise = np.stack([g.standard_normal(len(self)) for g in generators])
        return mean + noise @ chol.T

    def correction(self, beta: np.ndarray) -> np.ndarray:
        """P β: (..., k) → (..., obs), the bias in the normalised units of y."""
        return np.asarray(beta) @ self.predictors.T


def draw_bias(bias: ObservationBias, operator, z: np.ndarray, seed: int, t_index: int,
              members: Sequence[int]) -> np.ndarray:
    """β for each member given its normalised state z (member, channel, cell) and `operator`'s
    observations (the operator the members were guided by): (member, k) float64, physical units.
    Member m draws from `bias_generator(seed, t_index, m)`, so its β does not depend on the batch."""
    with torch.no_grad():
        hz = operator.forward(torch.as_tensor(np.asarray(z, np.float64))).numpy()
    residual = np.asarray(operator.y, np.float64)[None] - hz
    return bias.draw(residual, np.asarray(operator.sigma, np.float64) ** 2,
                     [bias_generator(seed, t_index, m) for m in members])


def bias_model(obs: ObservationSet, sigma_normalised: np.ndarray | None, sets) -> ObservationBias | None:
    """The bias model of the run's observation sets (`ObservationsConfig`s, each with its own
    `bias:`) for the assimilated observations `obs`, block by block (sets without a bias have no
    parameters; None when no set has one). `sigma_normalised`: their normalised error std (H's
    order), None for physical units (predictors per physical unit of y: `bias_statistics`).
    With several sets a parameter is named `<set>/<name>`."""
    sets = list(sets) if isinstance(sets, (list, tuple)) else [sets]
    if all(s.bias is None for s in sets):
        return None
    sigma = np.asarray(obs.sigma, np.float64) if sigma_normalised is None else np.asarray(sigma_normalised, np.float64)
    blocks, names, prior = [], [], []
    for i, rows in obs.set_rows([s.name for s in sets]):
        cfg = sets[i].bias
        if cfg is None:
            continue
        sub = ObservationBias.build(obs.subset(rows), sigma[rows], cfg.prior_sigma, cfg.predictor_names())
        p = np.zeros((len(obs), len(sub)))
        p[rows] = sub.predictors
        blocks.append(p)
        names += [f"{sets[i].name}/{n}" if len(sets) > 1 else n for n in sub.names]
        prior.append(sub.prior_sigma)
    if not blocks:
        return None
    return ObservationBias(np.hstack(blocks), np.concatenate(prior), tuple(names))


def bias_statistics(obs: ObservationSet, hx: np.ndarray, sets, seed: int, t_index: int) -> dict[str, float]:
    """`bias_mean/<name>` and `bias_spread/<name>` (ddof 1) of one time: member m's β drawn from
    β | x_m, y (`ObservationBias.draw`) with the residuals y − H x_m at the assimilated
    observations of `obs`, physical units. hx: (member, obs), member ids 0..M−1 in order, at
    every observation of `obs`. The same β as a normalised-units draw: the posterior is unit-free.
    Empty when no set has a bias model."""
    a = np.asarray(obs.assimilated, bool)
    assimilated = obs.assimilated_only()
    model = bias_model(assimilated, None, sets)
    if model is None:
        return {}
    residual = np.asarray(assimilated.value, np.float64)[None] - np.asarray(hx, np.float64)[:, a]
    beta = model.draw(residual, np.asarray(assimilated.sigma, np.float64) ** 2,
                      [bias_generator(seed, t_index, m) for m in range(hx.shape[0])])
    out = {}
    for j, name in enumerate(model.names):
        out[f"bias_mean/{name}"] = float(beta[:, j].mean())
        if len(beta) > 1:
            out[f"bias_spread/{name}"] = float(beta[:, j].std(ddof=1))
    return out


def exact_bias_metrics(names: Sequence[str], mean: np.ndarray, cov: np.ndarray) -> dict[str, float]:
    """`exact_bias_mean/<name>` and `exact_bias_spread/<name>` of the exact β posterior."""
    out = {}
    for j, name in enumerate(names):
        out[f"exact_bias_mean/{name}"] = float(mean[j])
        out[f"exact_bias_spread/{name}"] = float(np.sqrt(cov[j, j]))
    return out
