import numpy as np
import pytest
import torch

from ensemble_da.channels import Normalization
from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators import ObservationOperator
from ensemble_da.obs.synthetic import random_locations

NORM = Normalization(("T850", "T500"), [275.0, 255.0], [6.0, 5.0])


def operator(kind, rng, n=40, nside=8):
    lat, lon = random_locations(n, rng)
    obs = ObservationSet(time=np.datetime64("2020-01-01"), lat=lat, lon=lon,
                         channel=np.where(np.arange(n) % 2, "T500", "T850"), value=np.full(n, 260.0), sigma=0.5)
    return obs, ObservationOperator.build(obs, HealpixGrid(nside), NORM, kind)


@pytest.mark.parametrize("kind", ["nearest", "bilinear"])
def test_adjoint_identity(kind, rng):
    _, op = operator(kind, rng)
    x = torch.as_tensor(rng.normal(size=(3, 2, op.npix)))
    y = torch.as_tensor(rng.normal(size=(3, len(op))))
    lhs = (op.forward(x) * y).sum()
    rhs = (x * op.adjoint(y)).sum()
    assert abs(float(lhs - rhs)) < 1e-10 * float(abs(lhs))
    # autograd's backward of H is the explicit adjoint
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((op.forward(xg) * y).sum(), xg)
    torch.testing.assert_close(g, op.adjoint(y))
    np.testing.assert_allclose(op.matrix() @ x[0].reshape(-1).numpy(), op.forward(x)[0].numpy())


def test_nearest_is_healpy_ang2pix_and_bilinear_matches_healpy(rng):
    import healpy as hp

    obs, near = operator("nearest", rng)
    _, bil = operator("bilinear", np.random.default_rng(1234))
    field = rng.normal(size=(2, 768))
    pix = hp.ang2pix(8, obs.lon, obs.lat, nest=True, lonlat=True)
    ch = NORM.index(obs.channel)
    np.testing.assert_allclose(near.apply_numpy(field[None])[0], field[ch, pix])
    ref = np.array([hp.get_interp_val(field[c], lo, la, nest=True, lonlat=True) for c, lo, la in zip(ch, obs.lon, obs.lat)])
    np.testing.assert_allclose(bil.apply_numpy(field[None])[0], ref, atol=1e-12)


def test_normalised_observations_commute_with_normalisation(rng):
    obs, op = operator("bilinear", rng)
    x = NORM.denormalize(rng.normal(size=(1, 2, 768)))
    hx = op.apply_numpy(x)[0]
    hz = op.apply_numpy(NORM.normalize(x))[0]
    ch = NORM.index(obs.channel)
    np.testing.assert_allclose((hx - NORM.center[ch]) / NORM.scale[ch], hz, atol=1e-10)
    np.testing.assert_allclose(op.sigma, 0.5 / NORM.scale[ch])


def _dense(op):
    return torch.as_tensor(op.matrix().toarray())


def test_torch_func_vjp_jvp_vmap_match_the_dense_matrix(rng):
    """torch.func sees H and Hᵀ; compared with scipy's dense H (an independent construction)."""
    _, op = operator("bilinear", rng)
    H = _dense(op)
    x = torch.as_tensor(rng.normal(size=(3, 2, op.npix)))
    y = torch.as_tensor(rng.normal(size=(3, len(op))))
    hx, vjp = torch.func.vjp(op.forward, x)
    torch.testing.assert_close(hx, x.reshape(3, -1) @ H.T)
    (g,) = vjp(y)
    torch.testing.assert_close(g.reshape(3, -1), y @ H)
    _, tangent = torch.func.jvp(op.forward, (x,), (x * 2.0,))
    torch.testing.assert_close(tangent, 2.0 * x.reshape(3, -1) @ H.T)
    _, tangent_t = torch.func.jvp(op.adjoint, (y,), (y,))
    torch.testing.assert_close(tangent_t.reshape(3, -1), y @ H)
    many = torch.as_tensor(rng.normal(size=(5, 3, 2, op.npix)))
    torch.testing.assert_close(torch.func.vmap(op.forward)(many), many.reshape(5, 3, -1) @ H.T)
    ys = torch.as_tensor(rng.normal(size=(5, 3, len(op))))
    torch.testing.assert_close(torch.func.vmap(op.adjoint)(ys).reshape(5, 3, -1), ys @ H)
    # vmap of the per-member VJP (what a batched guidance gradient does)
    per_member = torch.func.vmap(lambda xi, yi: torch.func.vjp(op.forward, xi)[1](yi)[0])
    torch.testing.assert_close(per_member(x, y).reshape(3, -1), y @ H)
    # second order: the derivative of Hᵀ is H
    yg = y.clone().requires_grad_(True)
    (h,) = torch.autograd.grad((op.adjoint(yg) * x).sum(), yg)
    torch.testing.assert_close(h, x.reshape(3, -1) @ H.T)


def test_adjoint_is_deterministic_without_accumulating_kernels():
    """Hᵀ is bit-identical across calls and batch compositions, and dispatches no scatter-add
    (index_add, scatter_add/reduce, index_put with accumulate: the kernels that accumulate with
    atomics on CUDA; a plain index_put writes each target once). Many observations share cells here
    (nside 2, 400 observations), so every target has several contributions."""
    from torch.utils._python_dispatch import TorchDispatchMode

    rng = np.random.default_rng(7)
    _, op = operator("bilinear", rng, n=400, nside=2)
    y = torch.as_tensor(rng.normal(size=(6, len(op))), dtype=torch.float32)
    ref = op.adjoint(y)
    for _ in range(3):
        assert torch.equal(op.adjoint(y), ref)
    assert torch.equal(op.adjoint(y[[4, 1]]), ref[[4, 1]])
    assert torch.equal(op.adjoint(y[3:4]), ref[3:4])
    assert torch.equal(op.adjoint(torch.cat([y[2:3]] * 5))[4], ref[2])

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = str(func)
            if "index_put" in name and (args[3] if len(args) > 3 else kwargs.get("accumulate", False)):
                name += "(accumulate)"
            self.seen.append(name)
            return func(*args, **kwargs)

    x = torch.tensor(rng.normal(size=(2, 2, op.npix)), dtype=torch.float32, requires_grad=True)
    with Ops() as mode:
        op.adjoint(y)
        torch.autograd.grad((op.forward(x) * y[:2]).sum(), x)
    assert mode.seen, "no aten op recorded"
    accumulating = [f for f in mode.seen if any(s in f for s in ("index_add", "scatter_add", "scatter_reduce", "(accumulate)"))]
    assert accumulating == []
    np.testing.assert_allclose(ref.double().reshape(6, -1).numpy(), y.double().numpy() @ op.matrix().toarray(), rtol=1e-5, atol=1e-5)
