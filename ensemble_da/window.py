"""Guided sampling of a window of consecutive analysis times (DESIGN.md §10).

A window state has shape (member, slot·channel, cell): slot j's channel c is channel
j·C + c, so the EDM sampler and every guidance method (DESIGN.md §6) work on it unchanged;
observations sit at their slot (`slot_operator`: H acts per slot). A window prior may be given
the state just before the window per member (`previous`), passed to the denoiser as
`condition[PREVIOUS]`, batch row by batch row. Member m draws all its noise from
SeedSequence([seed, t_index, m]) (DESIGN.md §3), so a member does not depend on its batch.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ensemble_da.config import GuidanceConfig, SamplerConfig
from ensemble_da.guidance import MMPSGuidance, guided_denoiser
from ensemble_da.obs.operators import ObservationOperator
from ensemble_da.posterior import divergence_message
from ensemble_da.priors.base import Denoiser
from ensemble_da.priors.gaussian_markov import PREVIOUS
from ensemble_da.sampling import DivergenceError, KarrasSchedule, edm_sample, member_generator

__all__ = ["slot_operator", "sample_window"]


def slot_operator(operators: Sequence[ObservationOperator | None]) -> ObservationOperator | None:
    """One operator over a window of len(operators) slots: slot j's observations (its operator
    over (channel, cell), normalised units) read channel block j. None when no slot observes."""
    present = [(j, op) for j, op in enumerate(operators) if op is not None and len(op)]
    if not present:
        return None
    first = present[0][1]
    c, npix, slots = first.n_channels, first.npix, len(operators)
    width = max(op.flat.shape[1] for _, op in present)

    def padded(a: np.ndarray, fill) -> np.ndarray:
        return np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=fill)

    flat = np.concatenate([padded(op.flat + j * c * npix, j * c * npix) for j, op in present])
    weights = np.concatenate([padded(op.weights, 0.0) for _, op in present])
    return ObservationOperator(
        flat=flat,
        weights=weights,
        y=np.concatenate([op.y for _, op in present]),
        sigma=np.concatenate([op.sigma for _, op in present]),
        n_channels=c * slots,
        npix=npix,
    )


def sample_window(
    window: Denoiser,
    operator: ObservationOperator | None,
    members: Sequence[int],
    seed: int,
    t_index: int,
    sampler: SamplerConfig,
    guidance: GuidanceConfig,
    previous: np.ndarray | None = None,
    diagnostics: dict[str, float] | None = None,
) -> np.ndarray:
    """Posterior members of a window, float32 (member, slot, channel, cell), physical units.

    Parameters
    ----------
    window : a window denoiser over (batch, slot·channel, cell) with attributes `slots` and
        `prior` (the single-time prior, for its normalisation), e.g. `GaussianMarkovPrior.window`.
    operator : the window's observations (`slot_operator`), or None (the window prior).
    members : member ids; member m uses SeedSequence([seed, t_index, m]).
    previous : float (member, channel, cell), physical units: the state just before the window of
        each member (a conditioned window), else None.
    diagnostics : filled with `cg_residual_max` (MMPS).

    Raises DivergenceError (one line, with the guidance settings and a fix).
    """
    guided = window if operator is None or guidance.method == "none" else guided_denoiser(
        window, operator, guidance, autocast=False)
    norm, single, slots = window.normalization, window.prior.normalization, window.slots
    schedule = KarrasSchedule.from_config(sampler)
    ids = [int(m) for m in members]
    out = []
    for lo in range(0, len(ids), sampler.batch_size):
        block = ids[lo:lo + sampler.batch_size]
        condition = None
        if previous is not None:
            prev = single.normalize(np.asarray(previous[lo:lo + len(block)], np.float64))
            condition = {PREVIOUS: torch.as_tensor(prev, dtype=torch.float32)}
        try:
            z = edm_sample(guided, [member_generator(seed, t_index, m) for m in block], schedule,
                           solver=sampler.solver, churn=sampler.churn, condition=condition, autocast=False)
        except DivergenceError as exc:
            raise divergence_message(exc, guidance, sampler, t_index, [block[r] for r in exc.rows]) from None
        x = norm.denormalize(z.double().cpu().numpy()).astype(np.float32)
        out.append(x.reshape(len(block), slots, len(single.channels), -1))
    if diagnostics is not None and isinstance(guided, MMPSGuidance):
        diagnostics["cg_residual_max"] = guided.max_relative_residual
    return np.concatenate(out)
