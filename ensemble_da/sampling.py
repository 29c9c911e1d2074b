"""EDM sampling (Karras et al. 2022, Algorithm 2) with per-member random streams (DESIGN.md §3).

The probability-flow ODE dz/dσ = (z − D(z, σ))/σ is integrated from σ_max to 0 on the Karras
schedule σ_i = (σ_max^{1/ρ} + i/(N−1)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, σ_N = 0, by Heun (2nd order,
Euler on the last step) or Euler, with optional churn. Member m at analysis time t draws all its
noise from `member_generator(seed, t, m)`, so its result never depends on batch companions.

Divergence is an error, not a result: after every step a member whose state is non-finite or
has |z| > DIVERGENCE_BOUND · √(1 + σ²) (normalised units; the noisy prior's scale at σ is
√(σ_d² + σ²) with σ_d ≈ 1) is flagged on the device, and the flags are read back every
`CHECK_EVERY` steps and at the end (one host synchronisation each), raising `DivergenceError`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch

from ensemble_da.config import SamplerConfig
from ensemble_da.errors import InputError
from ensemble_da.priors.base import Condition, Denoiser

__all__ = ["KarrasSchedule", "member_generator", "edm_sample", "member_noise", "DivergenceError", "DIVERGENCE_BOUND"]

# |z| beyond this many prior standard deviations (at the step's noise level) is divergence:
# a climate state never sits 20 climatological std from the mean, a noisy one at σ hardly 5 σ.
DIVERGENCE_BOUND = 20.0
CHECK_EVERY = 4


class DivergenceError(InputError):
    """A member left the sane range during sampling (non-finite, or |z| far beyond the prior's scale).

    Attributes: `step` (1-based) of `steps`, its noise level `sigma`, the batch rows `rows`
    that diverged first, and `detail` (what was seen). The message is one line.
    """

    def __init__(self, step: int, steps: int, sigma: float, rows: list[int], detail: str):
        self.step, self.steps, self.sigma, self.rows, self.detail = step, steps, sigma, rows, detail
        super().__init__(f"sampling diverged at step {step}/{steps} (σ = {sigma:.3g}): {detail}")


def _divergence(first_bad: torch.Tensor, first_abs: torch.Tensor, sigmas: np.ndarray) -> DivergenceError:
    """The error for the earliest flagged step; `first_abs` is each row's max |z| at the step it
    was first flagged, so the bound and the value the message quotes are of the same step."""
    steps = len(sigmas) - 1
    step = int(first_bad[first_bad >= 0].min())
    rows = [int(r) for r in torch.nonzero(first_bad == step).flatten()]
    bound = DIVERGENCE_BOUND * math.sqrt(1.0 + float(sigmas[step + 1]) ** 2)
    value = first_abs[rows]
    state = "non-finite values" if not bool(torch.isfinite(value).all()) else f"max |z| = {float(value.max()):.3g}"
    detail = f"{state} after that step, beyond {bound:.3g} normalised units ({DIVERGENCE_BOUND:g} prior std at that σ)"
    return DivergenceError(step + 1, steps, float(sigmas[step]), rows, detail)


@dataclass(frozen=True)
class KarrasSchedule:
    """Noise levels σ_0 > … > σ_{N−1} = σ_min, then σ_N = 0."""

    steps: int = 32
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    @classmethod
    def from_config(cls, cfg: SamplerConfig) -> "KarrasSchedule":
        return cls(cfg.steps, cfg.sigma_min, cfg.sigma_max, cfg.rho)

    def sigmas(self) -> np.ndarray:
        """The N+1 noise levels, float64, ending with 0."""
        i = np.arange(self.steps, dtype=np.float64)
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        ramp = hi + i / max(self.steps - 1, 1) * (lo - hi)
        return np.append(ramp**self.rho, 0.0)


def member_generator(run_seed: int, t_index: int, member: int) -> torch.Generator:
    """The CPU generator of member `member` at analysis time `t_index` (DESIGN.md §3)."""
    state = np.random.SeedSequence([int(run_seed), int(t_index), int(member)]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def member_noise(gens: Sequence[torch.Generator], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """One N(0, 1) draw per member from its own generator, stacked to (member, *shape), float32."""
    return torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in gens]).to(device)


def _call(denoiser: Denoiser, z: torch.Tensor, sigma: float, condition: Condition | None, autocast: bool):
    sig = torch.full((z.shape[0],), sigma, dtype=z.dtype, device=z.device)
    ctx = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if autocast and z.device.type == "cuda" and not getattr(denoiser, "handles_autocast", False)
        else contextlib.nullcontext()
    )
    with ctx:
        return denoiser(z, sig, condition).to(z.dtype)


@torch.no_grad()
def edm_sample(
    denoiser: Denoiser,
    generators: Sequence[torch.Generator],
    schedule: KarrasSchedule,
    solver: Literal["heun", "euler"] = "heun",
    churn: float = 0.0,
    condition: Condition | None = None,
    device: str | torch.device = "cpu",
    autocast: bool = True,
) -> torch.Tensor:
    """Draw one sample per generator; returns normalised states (member, channel, cell), float32.

    Parameters
    ----------
    denoiser : Denoiser
        Prior or guided denoiser (guided denoisers enable gradients themselves).
    generators : sequence of torch.Generator
        One per member (see `member_generator`); all noise of member i comes from generators[i].
    schedule : KarrasSchedule
    solver : "heun" or "euler"
    churn : float
        S_churn of Karras et al.; 0 is the deterministic probability-flow ODE.
    autocast : bool
        Run an unguided denoiser's forward in bf16 on CUDA (guided denoisers autocast only
        their network call and keep the guidance math in float32/float64).

    Raises
    ------
    DivergenceError
        A member's state became non-finite or left |z| ≤ DIVERGENCE_BOUND · √(1 + σ²).
    """
    device = torch.device(device)
    shape = (len(denoiser.normalization.channels), denoiser.grid.npix)
    sigmas = schedule.sigmas()
    z = member_noise(generators, shape, device) * float(sigmas[0])
    n = schedule.steps
    gamma = min(churn / n, math.sqrt(2.0) - 1.0) if churn > 0 else 0.0
    first_bad = torch.full((z.shape[0],), -1, dtype=torch.long, device=device)
    first_abs = torch.zeros(z.shape[0], dtype=torch.float64, device=device)
    for i in range(n):
        s_cur, s_next = float(sigmas[i]), float(sigmas[i + 1])
        s_hat = s_cur * (1.0 + gamma)
        if gamma > 0:
            z = z + math.sqrt(s_hat**2 - s_cur**2) * member_noise(generators, shape, device)
        d_cur = (z - _call(denoiser, z, s_hat, condition, autocast)) / s_hat
        z_next = z + (s_next - s_hat) * d_cur
        if solver == "heun" and s_next > 0:
            d_next = (z_next - _call(denoiser, z_next, s_next, condition, autocast)) / s_next
            z_next = z + (s_next - s_hat) * 0.5 * (d_cur + d_next)
        z = z_next
        limit = DIVERGENCE_BOUND * math.sqrt(1.0 + s_next**2)
        size = z.flatten(1).abs().amax(1)
        bad = ~(size <= limit)  # NaN and inf compare False: bad too
        new = bad & (first_bad < 0)
        first_bad = torch.where(new, torch.full_like(first_bad, i), first_bad)
        first_abs = torch.where(new, size.to(first_abs.dtype), first_abs)
        if ((i + 1) % CHECK_EVERY == 0 or i == n - 1) and bool((first_bad >= 0).any()):
            raise _divergence(first_bad, first_abs, sigmas)
    return z
