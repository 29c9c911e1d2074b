"""Nonlinear operators (obs/operators/wind_speed.py, plugin.py, nonlinear.py) and guidance with them:
values against healpy, derivatives against finite differences and an analytic Jacobian, the MMPS
and regression updates against dense formulas, and one InputError line per bad plug-in."""

import healpy as hp
import numpy as np
import pytest
import torch

from ensemble_da.config import GridConfig, model_config
from ensemble_da.errors import InputError
from ensemble_da.exact import ExactPosteriorUnavailable, exact_posterior
from ensemble_da.guidance import DPSGuidance, MMPSGuidance, RegressionGuidance
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators import NonlinearOperatorError, ObservationOperator
from ensemble_da.obs.synthetic import random_locations
from ensemble_da.priors.gaussian import GaussianPrior

WIND = model_config(kind="gaussian", channels=["U850", "V850"], mean={"U850": 8.0, "V850": -2.0},
                   std={"U850": 4.0, "V850": 3.0}, length_scale_km=2500, channel_correlation=[[1.0, 0.3], [0.3, 1.0]],
                   nugget=0.05)
SPEED = {"kind": "wind_speed", "level": 850}
PLUGIN = {"kind": "python", "object": "plugin_operators:wind_speed", "scale": float(np.sqrt((16 + 9) / 2))}


@pytest.fixture(scope="module")
def prior():
    return GaussianPrior.from_config(WIND, GridConfig(nside=2))


def observations(rng, n=8, value=None):
    lat, lon = random_locations(n, rng)
    value = rng.uniform(3, 15, n) if value is None else value
    return ObservationSet(time=np.datetime64("2020-01-01"), lat=lat, lon=lon, channel="U850", value=value, sigma=0.7)


def healpy_speed(x, obs, nside):
    u = hp.get_interp_val(x[0], obs.lon, obs.lat, nest=True, lonlat=True)
    v = hp.get_interp_val(x[1], obs.lon, obs.lat, nest=True, lonlat=True)
    return np.sqrt(u**2 + v**2)


def analytic_jacobian(prior, obs, z):
    """∂ h_n / ∂ z for one normalised state z (2, cell), from healpy's weights: (obs, 2·cell)."""
    norm, npix = prior.normalization, prior.grid.npix
    pix, w = hp.get_interp_weights(prior.grid.nside, obs.lon, obs.lat, nest=True, lonlat=True)
    x = norm.denormalize(z)
    u, v = (np.sum(w * x[c][pix], 0) for c in (0, 1))
    speed = np.sqrt(u**2 + v**2)
    unit = np.sqrt((norm.scale[0] ** 2 + norm.scale[1] ** 2) / 2)
    jac = np.zeros((len(obs.lat), 2 * npix))
    for c, comp in ((0, u), (1, v)):
        for k in range(4):
            np.add.at(jac, (np.arange(len(obs.lat)), c * npix + pix[k]), comp / speed * norm.scale[c] * w[k] / unit)
    return jac


@pytest.mark.parametrize("spec", [SPEED, PLUGIN])
def test_wind_speed_is_the_speed_of_healpy_interpolated_winds(spec, prior, rng):
    obs = observations(rng)
    op = ObservationOperator.build(obs, prior.grid, prior.normalization, spec)
    assert not op.linear and len(op) == 8
    x = prior.normalization.denormalize(rng.normal(size=(2, 48)))
    ref = healpy_speed(x, obs, 2)
    np.testing.assert_allclose(op.observe(x[None])[0], ref, rtol=1e-12)
    # normalised: h_n(z) is the speed over the set's unit; y, sigma divided by the same unit
    unit = np.sqrt((4.0**2 + 3.0**2) / 2)
    np.testing.assert_allclose(op.apply_numpy(prior.normalization.normalize(x)[None])[0], ref / unit, rtol=1e-12)
    np.testing.assert_allclose(op.y, obs.value / unit)
    np.testing.assert_allclose(op.sigma, 0.7 / unit)


@pytest.mark.parametrize("spec", [SPEED, PLUGIN])
def test_wind_speed_derivatives_match_finite_differences_and_the_analytic_jacobian(spec, prior, rng):
    """Central differences with step 1e-6 on a speed of order 1 (normalised): truncation ~1e-12,
    round-off ~1e-10, so 1e-7 relative separates a right derivative from a wrong one."""
    obs = observations(rng)
    op = ObservationOperator.build(obs, prior.grid, prior.normalization, spec)
    z = torch.as_tensor(rng.normal(size=(3, 2, 48)))
    t = torch.as_tensor(rng.normal(size=(3, 2, 48)))
    eps = 1e-6
    fd = (op.forward(z + eps * t) - op.forward(z - eps * t)) / (2 * eps)
    lin = op.linearize(z)
    torch.testing.assert_close(lin.value, op.forward(z))
    torch.testing.assert_close(lin.jvp(t), fd, rtol=1e-7, atol=1e-9)
    v = torch.as_tensor(rng.normal(size=(3, len(op))))
    # VJP is the transpose of the JVP, per member, and equals autograd's gradient
    assert abs(float((lin.jvp(t) * v).sum() - (t * lin.vjp(v)).sum())) < 1e-10
    zg = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((op.forward(zg) * v).sum(), zg)
    torch.testing.assert_close(g, lin.vjp(v))
    jac = analytic_jacobian(prior, obs, z[1].numpy())
    np.testing.assert_allclose(lin.vjp(v)[1].reshape(-1).numpy(), jac.T @ v[1].numpy(), rtol=1e-10, atol=1e-12)
    # members are independent: member 1's derivative does not see the others
    lin1 = op.linearize(z[1:2])
    torch.testing.assert_close(lin1.vjp(v[1:2])[0], lin.vjp(v)[1])


def test_calm_wind_has_a_finite_gradient(prior, rng):
    """√ has no derivative at U = V = 0: exactly there it is 0; at a calm state up to round-off it
    is a unit direction (|∂y/∂(U, V)| ≤ 1), never NaN."""
    from ensemble_da.obs.operators.wind_speed import speed

    u = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(speed(u, torch.zeros(3, dtype=torch.float64)).sum(), u)
    assert torch.equal(g, torch.zeros(3, dtype=torch.float64))
    op = ObservationOperator.build(observations(rng, n=3), prior.grid, prior.normalization, SPEED)
    zg = torch.as_tensor(prior.normalization.normalize(np.zeros((1, 2, 48)))).requires_grad_(True)
    (g,) = torch.autograd.grad(op.forward(zg).sum(), zg)
    unit = np.sqrt((4.0**2 + 3.0**2) / 2)
    assert torch.isfinite(g).all() and float(g.abs().max()) <= 3 * 4.0 / unit


def dense_covariance(nside, model):
    """Σ of DESIGN.md §4 element by element (NEST pixel centres from healpy), any channel count."""
    r = np.stack(hp.pix2vec(nside, np.arange(12 * nside**2), nest=True), -1)
    k = np.exp(-((r[:, None] - r[None]) ** 2).sum(-1) / (2 * (model.length_scale_km / 6371.0) ** 2))
    corr = np.asarray(model.channel_correlation)
    return (1 - model.nugget) * np.kron(corr, k) + model.nugget * np.eye(len(corr) * len(k))


def dense_terms(prior, obs, op, z, sigma):
    cov = dense_covariance(2, WIND)
    a = np.linalg.solve(cov + sigma**2 * np.eye(cov.shape[0]), cov).T  # D(z, σ) = A z
    d = a @ z.reshape(-1)
    jac = analytic_jacobian(prior, obs, d.reshape(2, -1))
    residual = op.y - op.apply_numpy(d.reshape(1, 2, -1))[0]
    return a, d, jac, residual


def test_mmps_linearises_the_operator_at_the_denoised_state(prior, rng):
    """With a nonlinear h MMPS solves (diag(s²) + σ² J_h A J_hᵀ) v = y − h(D), J_h at D = A z:
    compared with that system written out densely (analytic J_h) and solved exactly (8 CG
    iterations on an 8-dimensional SPD system). Tolerance 1e-8: float64 Krylov vs direct solve."""
    obs = observations(rng)
    op = ObservationOperator.build(obs, prior.grid, prior.normalization, SPEED)
    z = rng.normal(size=(1, 2, 48)) * 2
    sigma = 0.8
    a, d, jac, residual = dense_terms(prior, obs, op, z, sigma)
    system = np.diag(op.sigma**2) + sigma**2 * jac @ a @ jac.T
    guided = MMPSGuidance(prior, op, cg_iters=8, solver="cg")
    zt, st = torch.as_tensor(z), torch.full((1,), sigma, dtype=torch.float64)
    _, matvec, rhs, _ = guided.linear_system(zt, st)
    probe = rng.normal(size=(1, len(op)))
    np.testing.assert_allclose(matvec(torch.as_tensor(probe)).numpy()[0], system @ probe[0], rtol=1e-10)
    np.testing.assert_allclose(rhs.numpy()[0], residual, rtol=1e-10)
    out = guided(zt, st).numpy().reshape(-1)
    ref = d + sigma**2 * a.T @ jac.T @ np.linalg.solve(system, residual)
    np.testing.assert_allclose(out, ref, rtol=1e-8, atol=1e-10)
    assert float(guided.last_relative_residual.max()) < 1e-8


def test_regression_and_dps_differentiate_through_the_operator(prior, rng):
    """Regression: D + σ² Aᵀ J_hᵀ (y − h(D)) / (s² + γσ²); DPS: D + ζσ² Aᵀ J_hᵀ r / ‖r‖, with r = y − h(D)."""
    obs = observations(rng)
    op = ObservationOperator.build(obs, prior.grid, prior.normalization, SPEED)
    z = rng.normal(size=(1, 2, 48)) * 2
    sigma, gamma, zeta = 0.8, 0.05, 0.3
    a, d, jac, r = dense_terms(prior, obs, op, z, sigma)
    zt, st = torch.as_tensor(z), torch.full((1,), sigma, dtype=torch.float64)
    reg = RegressionGuidance(prior, op, scale=1.0, gamma=gamma)(zt, st).numpy().reshape(-1)
    np.testing.assert_allclose(reg, d + sigma**2 * a.T @ jac.T @ (r / (op.sigma**2 + gamma * sigma**2)), rtol=1e-9)
    dps = DPSGuidance(prior, op, zeta=zeta)(zt, st).numpy().reshape(-1)
    np.testing.assert_allclose(dps, d + zeta * sigma**2 * a.T @ jac.T @ (r / np.linalg.norm(r)), rtol=1e-9)


def test_exact_posterior_and_matrix_refuse_a_nonlinear_operator(prior, rng):
    op = ObservationOperator.build(observations(rng), prior.grid, prior.normalization, SPEED)
    with pytest.raises(ExactPosteriorUnavailable, match="no exact posterior with the nonlinear observation operator wind_speed"):
        exact_posterior(prior, op)
    with pytest.raises(NonlinearOperatorError, match="wind_speed is nonlinear: it has no matrix"):
        op.matrix()
    with pytest.raises(InputError, match=r"needs channels \['U300', 'V300'\]"):
        ObservationOperator.build(observations(rng), prior.grid, prior.normalization, {"kind": "wind_speed", "level": 300})


def test_plugin_operator_equals_the_builtin_wind_speed_under_guidance(prior, rng):
    obs = observations(rng)
    builtin = ObservationOperator.build(obs, prior.grid, prior.normalization, SPEED)
    plugin = ObservationOperator.build(obs, prior.grid, prior.normalization, PLUGIN)
    z, st = torch.as_tensor(rng.normal(size=(2, 2, 48))), torch.full((2,), 0.5, dtype=torch.float64)
    torch.testing.assert_close(MMPSGuidance(prior, plugin, 4)(z, st), MMPSGuidance(prior, builtin, 4)(z, st),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("target,message", [
    ("plugin_operators:wrong_shape", "returned shape (8,), expected (member, obs) = (2, 8)"),
    ("plugin_operators:nan", "returned NaN or inf on the probe state"),
    ("plugin_operators:through_numpy", "is not differentiable with respect to the state"),
    ("plugin_operators:mixes_members", "depends on the other members of the batch"),
    ("plugin_operators:fails", "calling it failed (KeyError: 'no such level')"),
    ("plugin_operators:not_a_tensor", "returned list, expected a torch tensor of shape (member, obs) = (2, 8)"),
    ("plugin_operators:not_callable", "'not_callable' is not callable"),
    ("plugin_operators:missing", "has no attribute 'missing'"),
    ("no_such_module_here:f", "cannot import 'no_such_module_here'"),
    ("plugin_operators", 'expected "package.module:callable"'),
])
def test_bad_plugins_are_one_line_errors(target, message, prior, rng):
    with pytest.raises(InputError) as err:
        ObservationOperator.build(observations(rng), prior.grid, prior.normalization, {"kind": "python", "object": target})
    text = str(err.value)
    assert message in text and "\n" not in text and f"observations.operator.object {target!r}" in text


def test_mmps_wind_speed_posterior_against_quadrature():
    """Independent reference for a nonlinear H: one wind-speed observation y = |(u, v)| + e at one
    point. y depends on the state only through the interpolated (u, v) there, a 2-dimensional
    Gaussian projection of the prior, so its posterior is computed by quadrature on a 801² grid
    over ±8 prior std (converged far below the tolerances). The MMPS-guided sampler (3 CG
    iterations, 32 Heun steps, 256 members, fixed seeds) must give (u, v) posterior means within
    0.25 posterior std and posterior std within 30%: Monte-Carlo error alone is 1/√256 ≈ 0.06 std
    on the mean and ≈ 4.5% on the std; the rest is room for MMPS's linearisation of |·| at the
    denoised state, which is exact only in the linear limit (measured: 0.09 and 0.06 std on the
    means, std ratios 0.86 and 1.07)."""
    from ensemble_da.sampling import KarrasSchedule, edm_sample

    prior = GaussianPrior.from_config(WIND, GridConfig(nside=2))
    lat, lon, y, s_o = np.array([20.0]), np.array([40.0]), 6.0, 0.7
    obs = ObservationSet(time=np.datetime64("2020-01-01"), lat=lat, lon=lon, channel="U850", value=np.array([y]),
                         sigma=s_o)
    op = ObservationOperator.build(obs, prior.grid, prior.normalization, SPEED)
    norm, npix = prior.normalization, prior.grid.npix
    eye = torch.eye(2 * npix, dtype=torch.float64).reshape(2 * npix, 2, npix)
    s = np.repeat(norm.scale, npix)
    cov = s[:, None] * prior.covariance_apply(eye).reshape(2 * npix, -1).numpy() * s[None, :]
    pix, w = hp.get_interp_weights(2, lon, lat, nest=True, lonlat=True)
    proj = np.zeros((2, 2 * npix))
    for c in range(2):
        for k in range(4):
            proj[c, c * npix + pix[k, 0]] += w[k, 0]
    m_ab, chol = proj @ np.repeat(norm.center, npix), np.linalg.cholesky(proj @ cov @ proj.T)
    grid = np.linspace(-8, 8, 801)
    a, b = np.meshgrid(grid, grid, indexing="ij")
    ab = m_ab[:, None] + chol @ np.stack([a.ravel(), b.ravel()])
    logw = -0.5 * (a.ravel() ** 2 + b.ravel() ** 2) - 0.5 * ((y - np.hypot(*ab)) / s_o) ** 2
    weight = np.exp(logw - logw.max())
    weight /= weight.sum()
    post_mean = ab @ weight
    post_std = np.sqrt(((ab - post_mean[:, None]) ** 2) @ weight)

    gens = [torch.Generator().manual_seed(i) for i in range(256)]
    z = edm_sample(MMPSGuidance(prior, op, cg_iters=3), gens, KarrasSchedule(steps=32))
    ens = norm.denormalize(z.double().numpy()).reshape(256, -1) @ proj.T
    assert np.all(np.abs(ens.mean(0) - post_mean) / post_std <= 0.25), (ens.mean(0), post_mean, post_std)
    assert np.all(np.abs(ens.std(0, ddof=1) / post_std - 1) <= 0.3), (ens.std(0, ddof=1), post_std)
