"""Divergence is an error: a member leaving the sane range stops sampling with a one-line message."""

import numpy as np
import pytest
import torch

from ensemble_da.channels import Normalization
from ensemble_da.cli import app
from ensemble_da.grid import HealpixGrid
from ensemble_da.sampling import DIVERGENCE_BOUND, DivergenceError, KarrasSchedule, edm_sample, member_generator
from test_cli_run import TINY, invoke


class BrokenDenoiser:
    """Identity-like denoiser that returns `value` for batch row 1 once σ drops below `below`."""

    def __init__(self, below: float, value: float):
        self.grid = HealpixGrid(1)
        self.normalization = Normalization(("T850",), [275.0], [1.0])
        self.sigma_min, self.sigma_max = 0.002, 80.0
        self.below, self.value = below, value

    def __call__(self, z, sigma, condition=None):
        out = z / (1 + sigma.reshape(-1, 1, 1) ** 2)  # the N(0, I) prior's exact denoiser
        if float(sigma[0]) < self.below:
            out = out.clone()
            out[1] = self.value
        return out


@pytest.mark.parametrize("value, what", [(float("nan"), "non-finite"), (1e6, "max |z|")])
def test_edm_sample_names_the_first_bad_step_and_member(value, what):
    schedule = KarrasSchedule(steps=10)
    sigmas = schedule.sigmas()
    den = BrokenDenoiser(below=float(sigmas[5]) * 1.01, value=value)  # first bad call at step index 5
    gens = [member_generator(0, 0, m) for m in range(3)]
    with pytest.raises(DivergenceError) as info:
        edm_sample(den, gens, schedule, solver="euler")
    err = info.value
    assert err.step == 6 and err.rows == [1] and err.sigma == pytest.approx(sigmas[5])
    msg = str(err)
    assert "\n" not in msg and "step 6/10" in msg and what in msg and f"σ = {sigmas[5]:.3g}" in msg
    if np.isfinite(value):
        # The |z| quoted is step 6's (not the later step the check ran at): one Euler step from
        # z (|z| of a few units) towards D = 1e6 moves z by (1 − σ_6/σ_5)·1e6, dwarfing the rest.
        quoted = float(msg.split("max |z| = ")[1].split()[0])
        assert quoted == pytest.approx((1 - sigmas[6] / sigmas[5]) * value, rel=1e-3)


def test_healthy_sampling_stays_inside_the_bound():
    den = BrokenDenoiser(below=-1.0, value=0.0)  # never broken: the exact N(0, I) denoiser
    z = edm_sample(den, [member_generator(0, 0, m) for m in range(4)], KarrasSchedule(steps=8))
    assert torch.isfinite(z).all() and float(z.abs().max()) < DIVERGENCE_BOUND


def test_cli_run_with_divergent_guidance_exits_2_with_one_line(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    # regression with γ = 0 and 4 steps: the guidance step σ²∇log p(y|z) overshoots without bound
    result = invoke("run", cfg, "--out", tmp_path / "run", "--set", "guidance.method=regression",
                    "--set", "guidance.gamma=0", "--set", "sampler.steps=4")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output
    line = errors[0]
    for part in ("sampling diverged at step", "σ = ", "guidance.method=regression", "gamma=0", "Fix: set guidance.gamma > 0"):
        assert part in line, line
    assert np.isfinite(float(line.split("σ = ")[1].split(")")[0]))


def test_mmps_gmres_reports_a_denoiser_that_returns_nan_instead_of_crashing():
    """A denoiser returning NaN below some σ used to crash GMRES's SVD (LinAlgError, traceback);
    it must surface as the divergence error that points at the prior."""
    from ensemble_da.obs.operators import ObservationOperator
    from ensemble_da.posterior import sample_posterior

    den = BrokenDenoiser(below=1.0, value=float("nan"))
    op = ObservationOperator.at_cells(np.array([0, 5]), np.array(["T850", "T850"]), np.array([276.0, 274.0]),
                                      0.5, den.grid, den.normalization)
    with pytest.raises(DivergenceError) as info:
        sample_posterior(den, op, 3, 0, sampler={"steps": 8}, guidance={"method": "mmps", "solver": "gmres"})
    msg = str(info.value)
    assert "\n" not in msg and "non-finite" in msg and "denoiser returns finite values" in msg


@pytest.mark.parametrize("method, settings, fix", [
    ("regression", {"gamma": 0.1}, "raise guidance.gamma (e.g. to 1)"),
    ("regression", {"gamma": 0.0}, "set guidance.gamma > 0"),
    ("none", {}, "the unguided prior diverges: raise sampler.steps"),
])
def test_divergence_fix_suggests_a_change_from_the_current_settings(method, settings, fix):
    """The suggested fix never names a value already in use (γ = 0.1 must not be told 'e.g. 0.1')."""
    from ensemble_da.config import GuidanceConfig, SamplerConfig
    from ensemble_da.posterior import divergence_message

    err = DivergenceError(3, 4, 1.5, [0], "|z| passed 30 normalised units")
    msg = str(divergence_message(err, GuidanceConfig(method=method, **settings), SamplerConfig(steps=4), 0, [0]))
    assert f"Fix: {fix}" in msg and "\n" not in msg
