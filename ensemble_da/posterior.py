"""`sample_posterior`: posterior members from any denoiser and observations, in one call.

The composable entry point of the science core (DESIGN.md §3, §6): a `Denoiser` (ours, a
plug-in, the cBottle adapter), observations (an `ObservationSet` in physical units, or an
`ObservationOperator` already in the prior's normalised units), member ids and a run seed in,
float32 analyses in physical units out. Guidance wraps the denoiser (`guided_denoiser`), the
EDM sampler integrates it, and member m draws all its noise from SeedSequence([seed, t_index, m]),
so a member is the same whatever the batch size or the other members. `Assimilator` (the run
config path) calls exactly this.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ensemble_da.config import GuidanceConfig, SamplerConfig
from ensemble_da.errors import InputError
from ensemble_da.guidance import MMPSGuidance, guided_denoiser
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators import ObservationOperator, OperatorKind
from ensemble_da.obs.synthetic import TRUTH_STREAM
from ensemble_da.priors.base import Condition, Denoiser, allows_autocast, time_condition
from ensemble_da.sampling import DivergenceError, KarrasSchedule, edm_sample, member_generator

__all__ = ["sample_posterior", "divergence_message"]

_FIXES = {
    "none": "the unguided prior diverges: raise sampler.steps; for a learned prior check model.path and sampler.sigma_max",
    "dps": "lower guidance.zeta or raise sampler.steps",
    "mmps": "use guidance.solver gmres, raise guidance.cg_iters or sampler.steps",
}


def divergence_message(
    exc: DivergenceError, guidance: GuidanceConfig, sampler: SamplerConfig, t_index: int, members: list[int]
) -> DivergenceError:
    """`exc` restated for a user: guidance settings, analysis-time index, member ids, a suggested fix."""
    g = guidance
    params = {"regression": f", gamma={g.gamma:g}", "dps": f", zeta={g.zeta:g}",
              "mmps": f", solver={g.solver}, cg_iters={g.cg_iters}"}.get(g.method, "")
    who = "drawing the OSSE truth" if list(members) == [TRUTH_STREAM] else f"member(s) {members[:4]}"
    where = f"guidance.method={g.method}{params}, sampler.steps={sampler.steps}, analysis time {t_index}, {who}"
    out = DivergenceError(exc.step, exc.steps, exc.sigma, exc.rows, exc.detail)
    fix = "raise sampler.steps or guidance.cg_iters" if g.method == "mmps" and g.solver == "gmres" else _FIXES.get(g.method, "")
    if g.method == "regression":
        fix = (f"raise guidance.gamma (e.g. to {10 * g.gamma:g}) or sampler.steps, or use guidance.method mmps"
               if g.gamma > 0 else "set guidance.gamma > 0 (e.g. 0.1), raise sampler.steps, or use guidance.method mmps")
    if "non-finite" in exc.detail:
        fix = f"check that the prior's denoiser returns finite values at every σ (run with guidance.method=none); else {fix}"
    out.args = (f"{exc} [{where}]; sampling stopped. Fix: {fix}",)
    return out


def _settings(model, value, name: str):
    if value is None:
        return model()
    if isinstance(value, model):
        return value
    if isinstance(value, str) and model is GuidanceConfig:
        value = {"method": value}
    if isinstance(value, Mapping):
        from ensemble_da.config import validate_tree

        return validate_tree(model, dict(value), name)
    raise InputError(f"{name}: expected a {model.__name__} or a mapping, got {type(value).__name__}")


def sample_posterior(
    denoiser: Denoiser,
    observations: ObservationSet | ObservationOperator | None,
    members: int | Sequence[int] = 16,
    seed: int = 0,
    *,
    sampler: SamplerConfig | Mapping[str, Any] | None = None,
    guidance: GuidanceConfig | Mapping[str, Any] | str | None = None,
    operator: OperatorKind = "bilinear",
    time: np.datetime64 | str | None = None,
    condition: Condition | None = None,
    t_index: int = 0,
    device: str | torch.device | None = None,
    progress: Callable[[int], None] | None = None,
    diagnostics: dict[str, float] | None = None,
) -> np.ndarray:
    """Sample posterior members p(x | y) with a diffusion prior and likelihood guidance.

    Parameters
    ----------
    denoiser : Denoiser
        The prior (README "Denoiser protocol": NEST grid, normalised units, σ of shape (batch,)).
    observations : ObservationSet, ObservationOperator or None
        An `ObservationSet` (physical units; only its assimilated observations are used, read
        by `operator`), or an `ObservationOperator` (H, y, sigma in normalised units, e.g. from
        `ObservationOperator.at_cells`). None samples the prior.
    members : int or sequence of int
        How many members (ids 0..n-1), or the member ids to draw.
    seed : int
        Run seed; member m uses SeedSequence([seed, t_index, m]) (DESIGN.md §3).
    sampler : SamplerConfig or mapping, optional
        Steps, σ range, solver, churn, batch size, bf16 autocast (defaults: DESIGN.md §7a).
    guidance : GuidanceConfig, mapping or method name, optional
        `mmps` (default, GMRES), `regression`, `dps` or `none`, with their settings (DESIGN.md §6).
    operator : "nearest" or "bilinear"
        How an `ObservationSet` is read from the grid.
    time : datetime64 or ISO string, optional
        Analysis time: conditions the prior on day of year and second of day.
    condition : mapping, optional
        Explicit conditioning instead of `time`'s (passed to the denoiser as is).
    t_index : int
        Analysis-time index in the seed sequence (several times of one run).
    device : str or torch.device, optional
        Where to sample (default: the denoiser's `device` attribute, else CPU).
    progress : callable, optional
        Called with the number of members finished after each batch.
    diagnostics : dict, optional
        Filled with `cg_residual_max` (MMPS: largest relative CG residual).

    Returns
    -------
    ndarray of float32, shape (member, channel, cell)
        Analyses in physical units (`denoiser.normalization`), NEST cells.

    Raises
    ------
    InputError
        Bad settings or observations of channels the prior does not have.
    DivergenceError
        A member left the sane range (non-finite, or |z| > 20 prior std): one line naming the
        method, σ, step and members, with a suggested fix.
    """
    ids = list(range(members)) if isinstance(members, (int, np.integer)) else [int(m) for m in members]
    if not ids:
        raise InputError("members: need at least one member")
    sampler = _settings(SamplerConfig, sampler, "sampler")
    guidance = _settings(GuidanceConfig, guidance, "guidance")
    device = torch.device(device if device is not None else getattr(denoiser, "device", "cpu"))
    if condition is None and time is not None:
        condition = time_condition(np.datetime64(time, "s"))
    autocast = sampler.autocast == "bf16" and allows_autocast(denoiser)
    if isinstance(observations, ObservationSet):
        observations = ObservationOperator.build(
            observations.assimilated_only(), denoiser.grid, denoiser.normalization, operator
        )
    guided = denoiser
    if observations is not None and guidance.method != "none":
        guided = guided_denoiser(denoiser, observations, guidance, autocast=autocast)
    schedule = KarrasSchedule.from_config(sampler)
    out = []
    for lo in range(0, len(ids), sampler.batch_size):
        block = ids[lo : lo + sampler.batch_size]
        try:
            z = edm_sample(
                guided,
                [member_generator(seed, t_index, m) for m in block],
                schedule,
                solver=sampler.solver,
                churn=sampler.churn,
                condition=condition,
                device=device,
                autocast=autocast,
            )
        except DivergenceError as exc:
            raise divergence_message(exc, guidance, sampler, t_index, [block[r] for r in exc.rows]) from None
        out.append(denoiser.normalization.denormalize(z.double().cpu().numpy()).astype(np.float32))
        if progress is not None:
            progress(len(block))
    if diagnostics is not None and isinstance(guided, MMPSGuidance):
        diagnostics["cg_residual_max"] = guided.max_relative_residual
    return np.concatenate(out)
