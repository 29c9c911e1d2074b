"""Each guidance term against its closed form for a Gaussian prior, and against finite differences."""

import numpy as np
import pytest
import torch

from ensemble_da.channels import Normalization
from ensemble_da.config import GuidanceConfig
from ensemble_da.grid import HealpixGrid
from ensemble_da.guidance import DPSGuidance, MMPSGuidance, RegressionGuidance, guided_denoiser
from ensemble_da.guidance.cg import conjugate_gradient
from guidance_cases import gaussian_case

SIGMAS = [0.05, 0.8, 20.0]


@pytest.fixture(scope="module")
def case():
    return gaussian_case()


def flat(t: torch.Tensor) -> np.ndarray:
    return t.reshape(t.shape[0], -1).numpy()


@pytest.mark.parametrize("s", SIGMAS)
def test_regression_matches_closed_form(case, s):
    g = RegressionGuidance(case.prior, case.op, scale=0.7, gamma=0.05)
    out = g(case.z, torch.full((3,), s, dtype=torch.float64))
    a = case.a(s)
    d = flat(case.z) @ a.T
    v = case.op.sigma**2 + 0.05 * s**2
    ref = d + 0.7 * s**2 * ((case.op.y - d @ case.h.T) / v) @ case.h @ a
    np.testing.assert_allclose(flat(out), ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("s", SIGMAS)
def test_dps_matches_closed_form_per_member(case, s):
    g = DPSGuidance(case.prior, case.op, zeta=2.0)
    out = g(case.z, torch.full((3,), s, dtype=torch.float64))
    a = case.a(s)
    d = flat(case.z) @ a.T
    r = case.op.y - d @ case.h.T
    ref = d + 2.0 * s**2 * (r / np.linalg.norm(r, axis=1, keepdims=True)) @ case.h @ a
    np.testing.assert_allclose(flat(out), ref, rtol=1e-9, atol=1e-9)
    # per member: member 1 alone gives the same as in the batch
    alone = g(case.z[1:2], torch.full((1,), s, dtype=torch.float64))
    np.testing.assert_allclose(flat(alone)[0], flat(out)[1], rtol=1e-12)


@pytest.mark.parametrize("s", SIGMAS)
def test_mmps_with_converged_cg_is_the_exact_conditional_mean(case, s):
    n_obs = len(case.op)
    g = MMPSGuidance(case.prior, case.op, cg_iters=3 * n_obs)
    out = g(case.z, torch.full((3,), s, dtype=torch.float64))
    a = case.a(s)
    d = flat(case.z) @ a.T
    # Gaussian: z₀ | z ~ N(A z, s² A); condition on y = H z₀ + e.
    cov = s**2 * a
    gain = cov @ case.h.T @ np.linalg.inv(case.h @ cov @ case.h.T + np.diag(case.op.sigma**2))
    ref = d + (case.op.y - d @ case.h.T) @ gain.T
    np.testing.assert_allclose(flat(out), ref, rtol=1e-7, atol=1e-7)
    assert float(g.last_relative_residual.max()) < 1e-6


def test_mmps_reports_the_cg_residual(case):
    g = MMPSGuidance(case.prior, case.op, cg_iters=1)
    g(case.z, torch.full((3,), 0.5, dtype=torch.float64))
    res = g.last_relative_residual
    assert res.shape == (3,) and float(res.min()) > 1e-4 and g.max_relative_residual == float(res.max())


def test_conjugate_gradient_solves_each_row_independently():
    rng = np.random.default_rng(3)
    mats = []
    for _ in range(4):
        q = rng.normal(size=(6, 6))
        mats.append(q @ q.T + 6 * np.eye(6))
    a = torch.as_tensor(np.stack(mats))
    b = torch.as_tensor(rng.normal(size=(4, 6)))
    x, rel = conjugate_gradient(lambda v: (a @ v[..., None])[..., 0], b, 6)
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(a.numpy(), b.numpy()[..., None])[..., 0], atol=1e-8)
    assert float(rel.max()) < 1e-8
    x1, _ = conjugate_gradient(lambda v: (a[2:3] @ v[..., None])[..., 0], b[2:3], 3)
    x4, _ = conjugate_gradient(lambda v: (a @ v[..., None])[..., 0], b, 3)
    np.testing.assert_allclose(x1.numpy()[0], x4.numpy()[2], rtol=1e-12)


class TinyNet:
    """A nonlinear per-member denoiser D(z, σ) = tanh(W z / (1 + σ)) for finite differences."""

    def __init__(self, n_channels: int, npix: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(n_channels * npix, n_channels * npix, generator=g, dtype=torch.float64) / (n_channels * npix) ** 0.5
        self.grid = HealpixGrid(1)
        self.normalization = Normalization(("T850", "T500", "T300"), [0.0] * 3, [1.0] * 3)
        self.sigma_min, self.sigma_max = 0.002, 80.0

    def __call__(self, z, sigma, condition=None):
        b = z.shape[0]
        return torch.tanh((z.reshape(b, -1) @ self.w.T) / (1 + sigma.reshape(-1, 1))).reshape(z.shape)


@pytest.mark.parametrize("method", ["regression", "dps"])
def test_guidance_gradient_matches_finite_differences_for_a_nonlinear_denoiser(method):
    from ensemble_da.obs.observation_set import ObservationSet
    from ensemble_da.obs.operators import ObservationOperator

    net = TinyNet(3, 12)
    rng = np.random.default_rng(1)
    obs = ObservationSet(time=np.datetime64("2020-01-01"), lat=rng.uniform(-60, 60, 5), lon=rng.uniform(0, 360, 5),
                         channel=["T850", "T500", "T300", "T850", "T500"], value=rng.normal(size=5), sigma=0.3)
    op = ObservationOperator.build(obs, net.grid, net.normalization, "bilinear")
    cfg = GuidanceConfig(method=method, scale=1.0, gamma=0.1, zeta=1.5)
    g = guided_denoiser(net, op, cfg)
    s = torch.tensor([0.9], dtype=torch.float64)
    z = torch.as_tensor(rng.normal(size=(1, 3, 12)))

    def objective(zz):
        d = net(zz, s)
        return float(g.log_likelihood(d, s)) if method == "regression" else -1.5 * float(g.residual_norm(d))

    grad = (g(z, s) - net(z, s)) / s**2
    eps = 1e-6
    for idx in [(0, 0, 3), (0, 1, 7), (0, 2, 11)]:
        e = torch.zeros_like(z)
        e[idx] = eps
        fd = (objective(z + e) - objective(z - e)) / (2 * eps)
        assert abs(float(grad[idx]) - fd) < 1e-6 * max(1.0, abs(fd))


def test_none_returns_the_prior(case):
    assert guided_denoiser(case.prior, case.op, GuidanceConfig(method="none")) is case.prior
