"""The linear operator kinds beyond points (obs/operators/column.py, footprint.py) and how a config
selects them: each checked against healpy directly, by the adjoint identity, and (column) by the
exact posterior against a dense Gaussian conditioning written out here."""

import healpy as hp
import numpy as np
import pytest
import torch

from ensemble_da.channels import Normalization
from ensemble_da.config import GridConfig, ObservationsConfig, operator_config
from ensemble_da.errors import InputError
from ensemble_da.exact import exact_posterior_physical
from ensemble_da.grid import HealpixGrid
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators import ObservationOperator
from ensemble_da.obs.synthetic import random_locations
from ensemble_da.priors.gaussian import GaussianPrior
from test_priors_gaussian import MODEL, dense_covariance

NORM = Normalization(("T850", "T500", "T300"), [275.0, 255.0, 230.0], [6.0, 5.0, 4.0])
WEIGHTS = {"T850": 0.25, "T500": 0.5, "T300": 0.25}


def observations(rng, n=30, value=250.0):
    lat, lon = random_locations(n, rng)
    return ObservationSet(time=np.datetime64("2020-01-01"), lat=lat, lon=lon, channel="T850",
                          value=np.broadcast_to(value, (n,)), sigma=0.5)


def physical_field(rng, nside):
    return NORM.denormalize(rng.normal(size=(3, 12 * nside**2)))


def test_column_is_the_weighted_sum_of_healpy_interpolated_channels(rng):
    nside = 8
    obs = observations(rng)
    op = ObservationOperator.build(obs, HealpixGrid(nside), NORM, {"kind": "column", "weights": WEIGHTS})
    x = physical_field(rng, nside)
    ref = sum(w * hp.get_interp_val(x[NORM.channels.index(c)], obs.lon, obs.lat, nest=True, lonlat=True)
              for c, w in WEIGHTS.items())
    np.testing.assert_allclose(op.observe(x[None])[0], ref, rtol=1e-12)
    # normalised units: observations of x, normalised by the set's unit, are H applied to z
    truth_op = ObservationOperator.build(
        ObservationSet(time=obs.time, lat=obs.lat, lon=obs.lon, channel=obs.channel, value=ref, sigma=0.5),
        HealpixGrid(nside), NORM, {"kind": "column", "weights": WEIGHTS})
    np.testing.assert_allclose(truth_op.apply_numpy(NORM.normalize(x)[None])[0], truth_op.y, atol=1e-12)
    unit = 0.25 * 6 + 0.5 * 5 + 0.25 * 4
    np.testing.assert_allclose(truth_op.sigma, 0.5 / unit)


def test_one_channel_column_is_the_bilinear_point_operator(rng):
    obs = observations(rng)
    col = ObservationOperator.build(obs, HealpixGrid(4), NORM, {"kind": "column", "weights": {"T850": 1.0}})
    bil = ObservationOperator.build(obs, HealpixGrid(4), NORM, "bilinear")
    np.testing.assert_allclose(col.matrix().toarray(), bil.matrix().toarray(), atol=1e-15)
    np.testing.assert_allclose(col.y, bil.y, atol=1e-12)
    np.testing.assert_allclose(col.sigma, bil.sigma, rtol=1e-15)


def test_footprint_is_the_mean_over_healpy_query_disc(rng):
    nside, radius_km = 16, 900.0
    obs = observations(rng, n=20)
    op = ObservationOperator.build(obs, HealpixGrid(nside), NORM, {"kind": "footprint", "radius_km": radius_km})
    x = physical_field(rng, nside)
    ref = []
    for la, lo in zip(obs.lat, obs.lon):
        disc = hp.query_disc(nside, hp.ang2vec(lo, la, lonlat=True), radius_km / 6371.0, nest=True)
        ref.append(x[0, disc].mean())
    assert min(len(hp.query_disc(nside, hp.ang2vec(lo, la, lonlat=True), radius_km / 6371.0, nest=True))
               for la, lo in zip(obs.lat, obs.lon)) > 5  # a real average, not one cell
    np.testing.assert_allclose(op.observe(x[None])[0], ref, rtol=1e-12)
    # commutes with the normalisation, like a point row
    np.testing.assert_allclose(op.apply_numpy(NORM.normalize(x)[None])[0], (np.array(ref) - 275.0) / 6.0, atol=1e-12)


def test_footprint_smaller_than_a_cell_is_the_cell_containing_the_point(rng):
    obs = observations(rng, n=10)
    op = ObservationOperator.build(obs, HealpixGrid(2), NORM, {"kind": "footprint", "radius_km": 1.0})
    x = physical_field(rng, 2)
    pix = hp.ang2pix(2, obs.lon, obs.lat, nest=True, lonlat=True)
    np.testing.assert_allclose(op.observe(x[None])[0], x[0, pix])


@pytest.mark.parametrize("spec", [{"kind": "column", "weights": WEIGHTS}, {"kind": "footprint", "radius_km": 1500.0}])
def test_adjoint_identity_and_autograd_for_column_and_footprint(spec, rng):
    op = ObservationOperator.build(observations(rng, n=50), HealpixGrid(4), NORM, spec)
    x = torch.as_tensor(rng.normal(size=(3, 3, op.npix)))
    y = torch.as_tensor(rng.normal(size=(3, len(op))))
    lhs, rhs = (op.forward(x) * y).sum(), (x * op.adjoint(y)).sum()
    assert abs(float(lhs - rhs)) < 1e-12 * float(abs(lhs))
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((op.forward(xg) * y).sum(), xg)
    assert torch.equal(g, op.adjoint(y))
    np.testing.assert_allclose(op.matrix() @ x[1].reshape(-1).numpy(), op.forward(x)[1].numpy(), atol=1e-12)


def test_exact_posterior_with_a_column_operator_is_dense_gaussian_conditioning(rng):
    """Physical units throughout: x ~ N(m, S Σ S) with Σ of DESIGN.md §4, y = W x + e with W built
    here from healpy's weights, conditioned by the textbook formula. Tolerance 1e-8 relative: both
    are float64 direct solves of a well-conditioned 144-dimensional system."""
    prior = GaussianPrior.from_config(MODEL, GridConfig(nside=2))
    obs = observations(rng, n=25, value=rng.normal(250, 5, 25))
    op = ObservationOperator.build(obs, prior.grid, prior.normalization, {"kind": "column", "weights": WEIGHTS})
    mean, spread = exact_posterior_physical(prior, op)

    norm = prior.normalization
    npix = prior.grid.npix
    w = np.zeros((len(obs.lat), 3 * npix))
    pix, interp = hp.get_interp_weights(2, obs.lon, obs.lat, nest=True, lonlat=True)
    for c, weight in WEIGHTS.items():
        ch = norm.channels.index(c)
        for k in range(4):
            np.add.at(w, (np.arange(len(obs.lat)), ch * npix + pix[k]), weight * interp[k])
    s = np.repeat(norm.scale, npix)
    m = np.repeat(norm.center, npix)
    cov = s[:, None] * dense_covariance(2, MODEL) * s[None, :]
    gain = cov @ w.T @ np.linalg.inv(w @ cov @ w.T + np.diag(np.full(len(obs.lat), 0.5**2)))
    mean_ref = m + gain @ (obs.value - w @ m)
    var_ref = np.diag(cov - gain @ w @ cov)
    np.testing.assert_allclose(mean.reshape(-1), mean_ref, rtol=1e-8)
    np.testing.assert_allclose(spread.reshape(-1) ** 2, var_ref, rtol=1e-8)


def test_config_accepts_a_kind_name_or_a_mapping():
    assert ObservationsConfig(operator="nearest").operator == "nearest"
    col = ObservationsConfig(operator={"kind": "column", "weights": WEIGHTS}).operator
    assert col.kind == "column" and col.weights == WEIGHTS
    assert ObservationsConfig(operator={"kind": "footprint", "radius_km": 50}).operator.radius_km == 50
    assert ObservationsConfig(operator={"kind": "wind_speed", "level": 850}).operator.level == 850
    assert operator_config("bilinear").kind == "bilinear"
    assert str(col) == "{kind: column, weights: {T850: 0.25, T500: 0.5, T300: 0.25}}"


@pytest.mark.parametrize("spec,message", [
    ("column", "operator column needs settings: write operator: {kind: column, weights: {channel: w}}"),
    ("cubic", "unknown operator kind 'cubic'"),
    ({"kind": "radar"}, "operator needs kind: one of nearest | bilinear | column"),
    ({"kind": "column", "weights": {}}, "column weights must map channels to finite numbers, not all zero"),
    ({"kind": "column", "weights": {"T850": 1.0}, "level": 3}, "Extra inputs are not permitted"),
    ({"kind": "footprint", "radius_km": -3}, "radius_km must be in (0, 20000)"),
    ({"kind": "wind_speed"}, "level: Field required"),
])
def test_bad_operator_configs_are_one_line_errors(spec, message):
    from ensemble_da.config import load_config

    with pytest.raises(InputError) as err:
        operator_config(spec)
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError) as err:
        load_config(None, [f"observations.operator={spec!r}" if isinstance(spec, str) else
                           "observations.operator=" + str(spec).replace("'", "")])
    assert "observations.operator" in str(err.value) and "\n" not in str(err.value)


def test_column_of_a_channel_the_prior_lacks_is_one_line(rng):
    with pytest.raises(InputError, match=r"channel\(s\) \['Q700'\] are not channels of the prior"):
        ObservationOperator.build(observations(rng), HealpixGrid(2), NORM, {"kind": "column", "weights": {"Q700": 1.0}})
