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

import weakref
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ensemble_da.channels import channel_info
from ensemble_da.config import GuidanceConfig, SamplerConfig
from ensemble_da.errors import InputError
from ensemble_da.guidance import MMPSGuidance, guided_denoiser
from ensemble_da.obs.bias import ObservationBias
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators import ObservationOperator, OperatorKind
from ensemble_da.obs.qc import describe_observation
from ensemble_da.obs.synthetic import TRUTH_STREAM
from ensemble_da.priors.base import Condition, Denoiser, allows_autocast, time_condition
from ensemble_da.sampling import DivergenceError, KarrasSchedule, edm_sample, member_generator

__all__ = ["sample_posterior", "divergence_message", "prior_innovations", "INNOVATION_K", "LARGE_INNOVATION"]

# Before sampling, `sample_posterior` refuses an observation whose innovation against the prior
# is beyond this many prior-plus-observation standard deviations. For a correct observation of a
# Gaussian prior, |d| > 6 has probability 2e-9, so 10⁵ observations give a false alarm once in
# ~5000 calls; the prior std used is an upper bound (below), which makes it rarer still.
INNOVATION_K = 6.0
# A divergence message names the largest normalised innovation when it is beyond this.
LARGE_INNOVATION = 5.0
# Denoisers already through the protocol check (`priors.plugin.check_denoiser`), by identity.
_CHECKED: "weakref.WeakSet[Any]" = weakref.WeakSet()

_FIXES = {
    "none": "the unguided prior diverges: raise sampler.steps; for a learned prior check model.path and sampler.sigma_max",
    "dps": "lower guidance.zeta or raise sampler.steps",
    "mmps": "use guidance.solver gmres, raise guidance.cg_iters or sampler.steps",
}


def divergence_message(
    exc: DivergenceError, guidance: GuidanceConfig, sampler: SamplerConfig, t_index: int, members: list[int],
    innovation: str | None = None,
) -> DivergenceError:
    """`exc` restated for a user: guidance settings, analysis-time index, member ids, a suggested fix.
    `innovation`: the observation with the largest normalised innovation when it is large
    (`describe_innovation`); the fix then points at it, not at the sampler."""
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
    if innovation is not None:
        fix = (f"observation {innovation} has the largest normalised innovation: check it (units, channel, "
               f"location) or leave it out; if it is right, {fix}")
    out.args = (f"{exc} [{where}]; sampling stopped. Fix: {fix}",)
    return out


def prior_innovations(
    denoiser: Denoiser, operator: ObservationOperator, condition: Condition | None = None,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Innovations of the observations against the prior, normalised units: (y − H μ, d), each (obs,),
    with d_i = (y − H μ)_i / √(s_i² + sigma_i²) in prior-plus-observation standard deviations.

    μ ≈ E[z] is the denoiser at σ = sigma_max applied to the zero state (D(z, σ) → E[z] as σ grows;
    exact for the Gaussian priors); s_i is H applied to the prior std per cell (`prior_spread()`
    when the prior has one, else 1, the normalisation's unit): an upper bound on the std of (H z)_i.
    """
    n_channels, npix = len(denoiser.normalization.channels), denoiser.grid.npix
    with torch.no_grad():
        z = torch.zeros((1, n_channels, npix), device=device)
        mean = denoiser(z, torch.full((1,), float(denoiser.sigma_max), device=device), condition)
    mean = mean.detach().double().cpu().numpy().reshape(1, n_channels, npix)
    spread = np.ones((1, n_channels, npix))
    if callable(getattr(denoiser, "prior_spread", None)):
        spread = (np.asarray(denoiser.prior_spread(), np.float64).reshape(n_channels, npix)
                  / denoiser.normalization.scale[:, None])[None]
    innovation = operator.y - operator.apply_numpy(mean)[0]
    return innovation, innovation / np.sqrt(operator.apply_numpy(spread)[0] ** 2 + operator.sigma**2)


def describe_innovation(denoiser: Denoiser, operator: ObservationOperator, innovation: np.ndarray, d: np.ndarray,
                        i: int, points: ObservationSet | None = None) -> str:
    """`T850 = 340 K at lat 10, lon 20 (innovation +65 K = 10.8 prior+obs std)` for observation i
    (`points`: the observations `operator` was built from, for their locations)."""
    norm = denoiser.normalization
    c = int(operator.flat[i, 0]) // operator.npix
    channel, scale = norm.channels[c], float(norm.scale[c])
    if points is not None:
        what = describe_observation(str(points.channel[i]), float(points.value[i]), float(points.lat[i]), float(points.lon[i]))
    else:
        value = float(norm.center[c] + scale * operator.y[i])
        what = describe_observation(channel, value, cell=int(operator.flat[i, 0]) % operator.npix)
    try:
        units = " " + channel_info(channel).units
    except InputError:
        units = ""
    return f"{what} (innovation {innovation[i] * scale:+.3g}{units} = {abs(d[i]):.3g} prior+obs std)"


def _check_protocol(denoiser: Denoiser, device: torch.device) -> None:
    """The plug-in protocol check of the CLI (`check_denoiser`, its messages), once per denoiser."""
    try:
        if denoiser in _CHECKED:
            return
    except TypeError:  # not weak-referenceable / hashable: checked on every call
        pass
    from ensemble_da.priors.plugin import check_denoiser

    check_denoiser(denoiser, f"denoiser {type(denoiser).__name__}", None, device)
    try:
        _CHECKED.add(denoiser)
    except TypeError:
        pass


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
    innovation_k: float | None = INNOVATION_K,
    check_inputs: bool = True,
    bias: ObservationBias | None = None,
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
    innovation_k : float or None
        Refuse (InputError) an observation whose innovation against the prior, y − H E[z], is
        beyond `innovation_k` prior-plus-observation standard deviations (`prior_innovations`);
        None skips this check. Default `INNOVATION_K` = 6.
    check_inputs : bool
        Run the checks below before sampling (the config path, `Assimilator`, has run the CLI's
        own before and passes False).
    bias : ObservationBias, optional
        A bias model of the observations (`ensemble_da.obs.bias`, built for the operator's
        observations in its order): marginalised in the guidance (mmps, regression; dps refuses
        it); draw each member's β afterwards with `ensemble_da.obs.bias.draw_bias`.

    Returns
    -------
    ndarray of float32, shape (member, channel, cell)
        Analyses in physical units (`denoiser.normalization`), NEST cells.

    Raises
    ------
    InputError
        Bad settings; observations of channels the prior does not have; the CLI's checks with
        the CLI's messages: an observation value outside its channel's physical bounds (e.g. T
        outside 150–350 K; non-finite values and locations are refused by `ObservationSet`
        itself), a denoiser that fails the plug-in protocol check (`priors.plugin.check_denoiser`:
        attributes, one call at sigma_max giving finite output of z's shape); an observation
        beyond `innovation_k` prior-plus-observation std of the prior (named with its value,
        channel, location and innovation).
    DivergenceError
        A member left the sane range (non-finite, or |z| > 20 prior std): one line naming the
        method, σ, step and members, with a suggested fix (the observation with the largest
        normalised innovation, when it is beyond `LARGE_INNOVATION` = 5 std).
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
    points = None
    if isinstance(observations, ObservationSet):
        if check_inputs:
            observations.check_bounds()
        points = observations.assimilated_only()
        observations = ObservationOperator.build(points, denoiser.grid, denoiser.normalization, operator)
    if check_inputs:
        _check_protocol(denoiser, device)
    guided_obs = observations is not None and guidance.method != "none"
    innovations = None
    if check_inputs and guided_obs and innovation_k is not None:
        innovations = prior_innovations(denoiser, observations, condition, device)
        far = np.abs(innovations[1]) > innovation_k
        if far.any():
            i = int(np.argmax(np.abs(innovations[1])))
            raise InputError(
                f"observation {describe_innovation(denoiser, observations, *innovations, i, points)} is beyond "
                f"{innovation_k:g} prior+obs std of the prior ({int(far.sum())} of {len(far)} observations are); "
                "check it (units, channel, location) or leave it out (innovation_k=None skips this check)"
            )
    guided = denoiser
    if observations is not None and guidance.method != "none":
        guided = guided_denoiser(denoiser, observations, guidance, autocast=autocast, bias=bias)
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
            hint = None
            if guided_obs:
                if innovations is None:
                    innovations = prior_innovations(denoiser, observations, condition, device)
                i = int(np.argmax(np.abs(innovations[1])))
                if abs(innovations[1][i]) > LARGE_INNOVATION:
                    hint = describe_innovation(denoiser, observations, *innovations, i, points)
            raise divergence_message(exc, guidance, sampler, t_index, [block[r] for r in exc.rows], hint) from None
        out.append(denoiser.normalization.denormalize(z.double().cpu().numpy()).astype(np.float32))
        if progress is not None:
            progress(len(block))
    if diagnostics is not None and isinstance(guided, MMPSGuidance):
        diagnostics["cg_residual_max"] = guided.max_relative_residual
    return np.concatenate(out)
