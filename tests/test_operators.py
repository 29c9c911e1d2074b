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
