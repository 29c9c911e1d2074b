"""Batched GMRES against direct solves, and MMPS with GMRES for symmetric and non-symmetric Jacobians."""

import numpy as np
import pytest
import torch

from ensemble_da.config import GuidanceConfig
from ensemble_da.guidance import MMPSGuidance, guided_denoiser
from ensemble_da.guidance.gmres import gmres
from guidance_cases import gaussian_case
from test_guidance import TinyNet


def batched(a: torch.Tensor):
    return lambda v: (a @ v[..., None])[..., 0]


def nonsymmetric_systems(batch: int = 4, n: int = 7, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(batch, n, n)) + 3 * np.eye(n)  # far from symmetric, indefinite parts
    return torch.as_tensor(a), torch.as_tensor(rng.normal(size=(batch, n)))


def test_gmres_with_n_iterations_is_the_direct_solve_of_a_nonsymmetric_system():
    a, b = nonsymmetric_systems()
    assert float((a - a.transpose(1, 2)).abs().max()) > 1.0
    x, rel = gmres(batched(a), b, 7)
    assert x.dtype == torch.float64
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(a.numpy(), b.numpy()[..., None])[..., 0], atol=1e-9)
    assert float(rel.max()) < 1e-10


def test_gmres_after_k_iterations_minimises_the_residual_over_the_krylov_space():
    a, b = nonsymmetric_systems()
    k = 3
    x, rel = gmres(batched(a), b, k)
    for row in range(a.shape[0]):
        an, bn = a[row].numpy(), b[row].numpy()
        krylov = np.stack([np.linalg.matrix_power(an, i) @ bn for i in range(k)], axis=1)  # (n, k)
        c, *_ = np.linalg.lstsq(an @ krylov, bn, rcond=None)
        ref = krylov @ c
        np.testing.assert_allclose(x[row].numpy(), ref, atol=1e-9)
        true_rel = np.linalg.norm(bn - an @ x[row].numpy()) / np.linalg.norm(bn)
        assert abs(float(rel[row]) - true_rel) < 1e-10 and true_rel > 1e-3  # not converged, reported exactly


def test_gmres_rows_are_independent_and_zero_rhs_is_zero():
    a, b = nonsymmetric_systems()
    b = b.clone()
    b[3] = 0.0
    x4, rel4 = gmres(batched(a), b, 3)
    x1, _ = gmres(batched(a[2:3]), b[2:3], 3)
    np.testing.assert_allclose(x1.numpy()[0], x4.numpy()[2], rtol=1e-12)
    assert float(x4[3].abs().max()) == 0.0 and float(rel4[3]) == 0.0


def test_gmres_survives_breakdown_on_an_invariant_subspace():
    a = torch.diag_embed(torch.tensor([[2.0, 5.0, 1.0, 4.0]], dtype=torch.float64))
    b = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)  # an eigenvector: exact after 1 step
    x, rel = gmres(batched(a), b, 3)
    np.testing.assert_allclose(x.numpy(), [[0.5, 0.0, 0.0, 0.0]], atol=1e-14)
    assert float(rel[0]) < 1e-14


@pytest.mark.parametrize("s", [0.05, 0.8, 20.0])
def test_mmps_gmres_equals_mmps_cg_on_the_gaussian_prior(s):
    case = gaussian_case()
    sig = torch.full((3,), s, dtype=torch.float64)
    n = 3 * len(case.op)
    cg = MMPSGuidance(case.prior, case.op, cg_iters=n, solver="cg")(case.z, sig)
    gm = MMPSGuidance(case.prior, case.op, cg_iters=len(case.op), solver="gmres")(case.z, sig)
    np.testing.assert_allclose(gm.numpy(), cg.numpy(), rtol=1e-7, atol=1e-7)


def test_mmps_gmres_solves_the_nonsymmetric_system_of_a_network_and_cg_does_not():
    from ensemble_da.obs.observation_set import ObservationSet
    from ensemble_da.obs.operators import ObservationOperator

    net = TinyNet(3, 12, seed=2)
    rng = np.random.default_rng(4)
    n_obs = 6
    obs = ObservationSet(time=np.datetime64("2020-01-01"), lat=rng.uniform(-60, 60, n_obs), lon=rng.uniform(0, 360, n_obs),
                         channel=["T850", "T500", "T300"] * 2, value=rng.normal(size=n_obs), sigma=0.3)
    op = ObservationOperator.build(obs, net.grid, net.normalization, "bilinear")
    s = torch.tensor([0.9], dtype=torch.float64)
    z = torch.as_tensor(rng.normal(size=(1, 3, 12)))
    # dense reference: J by autograd's full Jacobian, then the MMPS formula with a direct solve
    jac = torch.autograd.functional.jacobian(lambda zz: net(zz, s).reshape(-1), z).reshape(36, 36).numpy()
    assert np.abs(jac - jac.T).max() > 0.05
    h = op.matrix().toarray()
    d = net(z, s).reshape(-1).numpy()
    mat = np.diag(op.sigma**2) + 0.81 * h @ jac.T @ h.T
    ref = d + 0.81 * jac.T @ h.T @ np.linalg.solve(mat, op.y - h @ d)
    gm = guided_denoiser(net, op, GuidanceConfig(method="mmps", solver="gmres", cg_iters=n_obs))(z, s)
    np.testing.assert_allclose(gm.reshape(-1).numpy(), ref, atol=1e-9)
    cg = guided_denoiser(net, op, GuidanceConfig(method="mmps", solver="cg", cg_iters=n_obs))(z, s)
    assert np.abs(cg.reshape(-1).numpy() - ref).max() > 1e-4
