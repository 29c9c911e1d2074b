import numpy as np
import torch

from ensemble_da.config import GridConfig
from ensemble_da.priors.gaussian import GaussianPrior
from ensemble_da.sampling import KarrasSchedule, edm_sample, member_generator
from test_priors_gaussian import MODEL


def test_karras_schedule():
    s = KarrasSchedule(steps=16, sigma_min=0.002, sigma_max=80.0, rho=7.0).sigmas()
    assert len(s) == 17 and s[0] == 80.0 and s[-1] == 0.0
    np.testing.assert_allclose(s[-2], 0.002)
    assert np.all(np.diff(s) < 0)


def test_member_streams_are_stable_and_distinct():
    a = torch.randn(5, generator=member_generator(7, 1, 3))
    b = torch.randn(5, generator=member_generator(7, 1, 3))
    c = torch.randn(5, generator=member_generator(7, 1, 4))
    d = torch.randn(5, generator=member_generator(7, 2, 3))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)


def test_heun_and_euler_converge_to_the_gaussian_ode_solution_at_their_order():
    # For a Gaussian prior the ODE is solved along each eigenvector: s(σ) = s(σ_max) √((λ+σ²)/(λ+σ_max²)).
    prior = GaussianPrior.from_config(MODEL, GridConfig(nside=1))
    noise = torch.stack([torch.randn(3, 12, generator=member_generator(0, 0, m)) for m in range(4)]).double() * 80.0
    lam = torch.as_tensor(prior.basis.eigenvalues)
    expected = prior.basis.from_spectral(prior.basis.to_spectral(noise) * torch.sqrt(lam / (lam + 80.0**2)))

    def error(solver, steps):
        gens = [member_generator(0, 0, m) for m in range(4)]
        z = edm_sample(prior, gens, KarrasSchedule(steps=steps), solver=solver).double()
        return float((z - expected).abs().max())

    heun = [error("heun", n) for n in (64, 128)]
    euler = [error("euler", n) for n in (64, 128)]
    assert heun[1] < 3e-3  # measured 2.2e-3 (unit prior std)
    assert 3.5 < heun[0] / heun[1] < 4.5  # second order: halving the step quarters the error
    assert 1.7 < euler[0] / euler[1] < 2.3  # first order


def test_churn_changes_the_sample_but_stays_finite():
    prior = GaussianPrior.from_config(MODEL, GridConfig(nside=1))
    gens = lambda: [member_generator(0, 0, m) for m in range(2)]  # noqa: E731
    a = edm_sample(prior, gens(), KarrasSchedule(steps=8), churn=0.0)
    b = edm_sample(prior, gens(), KarrasSchedule(steps=8), churn=10.0)
    assert torch.isfinite(b).all() and not torch.allclose(a, b)
