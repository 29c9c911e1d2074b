"""Several observation sets in one run (DESIGN.md §5 "Observation sets"): a point set and a column
set in one OSSE on the Gaussian prior against the exact posterior computed here independently
(dense Gaussian conditioning in physical units, H from healpy's weights); per-set QC counts and
metrics; the stacked operator with a nonlinear set; bad set lists."""

from __future__ import annotations

import json

import healpy as hp
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from actors.run import run_pipeline
from ensemble_da.cli import app
from ensemble_da.config import RunConfig
from ensemble_da.io import open_run
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators import StackedOperator, build_operator
from ensemble_da.priors import load_prior

CHANNELS = ["T850", "T500", "T300"]
CENTER = {"T850": 275.0, "T500": 255.0, "T300": 230.0}
SCALE = {"T850": 6.0, "T500": 5.0, "T300": 4.0}
WEIGHTS = {"T850": 0.5, "T500": 0.3, "T300": 0.2}


def tree(**top):
    base = dict(
        run_name="sets", seed=2, times=["2020-01-01T00:00"], grid=dict(nside=4),
        model=dict(kind="gaussian", channels=CHANNELS, mean=CENTER, std=SCALE, length_scale_km=2500),
        sampler=dict(steps=24, batch_size=32), guidance=dict(method="mmps", solver="cg", cg_iters=40),
        ensemble=dict(members=32),
        observations=[
            dict(name="sondes", channels=["T850", "T500"], num_obs=40, heldout_fraction=0.25,
                 sigma=dict(T850=0.5, T500=0.5)),
            dict(name="satellite", channels=["T850"], num_obs=30, heldout_fraction=0.2, sigma=dict(T850=0.4),
                 operator=dict(kind="column", weights=WEIGHTS)),
        ],
        cluster=dict(address="inprocess", replicas=1, members_per_unit=16),
    )
    return {**base, **top}


def dense_posterior(prior, obs):
    """Exact posterior mean and std (channel, cell) of the assimilated observations of `obs`,
    physical units: Σ_phys = D Σ D with Σ from the prior's covariance on the identity; H rows from
    healpy's bilinear weights (the sondes) and the column weights (the satellite)."""
    n = prior.grid.npix
    eye = torch.eye(3 * n, dtype=torch.float64).reshape(-1, 3, n)
    sigma = prior.covariance_apply(eye).reshape(3 * n, -1).numpy()
    d = np.repeat([SCALE[c] for c in CHANNELS], n)
    sigma = d[:, None] * sigma * d[None]
    center = np.repeat([CENTER[c] for c in CHANNELS], n)
    a = obs.assimilated
    rows = []
    for lat, lon, ch, name in zip(obs.lat[a], obs.lon[a], obs.channel[a], obs.set_name[a]):
        pix, w = hp.get_interp_weights(4, lon, lat, nest=True, lonlat=True)
        row = np.zeros(3 * n)
        weights = {ch: 1.0} if name == "sondes" else WEIGHTS
        for c, wc in weights.items():
            np.add.at(row, CHANNELS.index(c) * n + pix, wc * w)
        rows.append(row)
    h = np.array(rows)
    s = h @ sigma @ h.T + np.diag(obs.sigma[a] ** 2)
    gain = sigma @ h.T @ np.linalg.inv(s)
    mean = center + gain @ (obs.value[a] - h @ center)
    var = np.diag(sigma - gain @ h @ sigma)
    return mean.reshape(3, n), np.sqrt(var).reshape(3, n)


def test_a_point_set_and_a_column_set_in_one_run_match_the_exact_posterior(tmp_path):
    cfg = RunConfig.model_validate(tree())
    out = tmp_path / "run"
    run_pipeline(cfg, out, progress=False)
    ds, obs_ds = open_run(out), open_run(out, group="observations")
    assert list(dict.fromkeys(obs_ds["set"].values.tolist())) == ["sondes", "satellite"]
    obs = ObservationSet.from_dataset(obs_ds)
    assert (obs.set_name == "sondes").sum() == 40 and (obs.set_name == "satellite").sum() == 30
    # the two sets drew their own locations (set 1 from a derived seed)
    assert not np.allclose(obs.lat[obs.set_name == "sondes"][:30], obs.lat[obs.set_name == "satellite"])
    mean, std = dense_posterior(load_prior(cfg.model, cfg.grid), obs)
    np.testing.assert_allclose(ds["exact_mean"].values[0], mean, rtol=2e-6, atol=2e-4)  # float32 store
    np.testing.assert_allclose(ds["exact_spread"].values[0], std, rtol=2e-5)
    summary = json.loads((out / "summary.json").read_text())
    m = summary["by_time"][next(iter(summary["by_time"]))]
    # 32 members: the ensemble mean errs by ~1/√32 = 0.18 exact std, rms over cells; the 2500 km
    # correlation leaves ~10 independent values per channel at nside 4, so the rms fluctuates
    # like √(χ²₁₀/10) (99.9th percentile 1.72): bound 2/√M. Variance within ±20 % (√(2/31)/√10 ≈ 0.08).
    for c in CHANNELS:
        assert m[f"exact_mean_err/{c}"] < 2.0 / np.sqrt(32) and 0.8 < m[f"exact_var_ratio/{c}"] < 1.2, c
    # per-set QC counts add up to the totals
    assert summary["qc/sondes/kept"] == 40 and summary["qc/satellite/kept"] == 30 and summary["qc/kept"] == 70
    # per-set O − A at the assimilated observations, recomputed from the stored fits
    resid = obs_ds["value"].values - obs_ds["hx_mean"].values
    for name, ch in (("sondes", "T500"), ("satellite", "T850")):
        sel = (obs.set_name == name) & (obs.channel == ch) & obs.assimilated
        assert m[f"{name}/oa_rmse/{ch}"] == pytest.approx(np.sqrt(np.mean(resid[sel] ** 2)), rel=1e-5)
    sel = (obs.channel == "T850") & obs.assimilated
    assert m["oa_rmse/T850"] == pytest.approx(np.sqrt(np.mean(resid[sel] ** 2)), rel=1e-5)  # over both sets


def test_a_nonlinear_set_stacks_with_a_linear_one(rng):
    cfg = RunConfig.model_validate(tree(
        model=dict(kind="gaussian", channels=["U850", "V850"], mean=dict(U850=8.0, V850=-2.0),
                   std=dict(U850=4.0, V850=3.0)),
        observations=[dict(name="u", channels=["U850"]),
                      dict(name="speed", channels=["U850"], operator=dict(kind="wind_speed", level=850))]))
    prior = load_prior(cfg.model, cfg.grid)
    obs = ObservationSet(time=np.datetime64("2020-01-01"), lat=rng.uniform(-60, 60, 6), lon=rng.uniform(0, 360, 6),
                         channel="U850", value=rng.uniform(2, 9, 6), sigma=1.0,
                         set_name=["u"] * 3 + ["speed"] * 3)
    op = build_operator(obs, prior.grid, prior.normalization, cfg.observation_sets())
    assert isinstance(op, StackedOperator) and not op.linear and len(op) == 6
    parts = [build_operator(obs.subset(obs.set_name == n), prior.grid, prior.normalization, s)
             for n, s in zip(("u", "speed"), cfg.observation_sets())]
    z = torch.as_tensor(rng.normal(size=(2, 2, prior.grid.npix)))
    np.testing.assert_allclose(op.forward(z).numpy(), torch.cat([p.forward(z) for p in parts], -1).numpy())
    lin, u, v = op.linearize(z), torch.randn_like(z, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    # ⟨J u, v⟩ = ⟨u, Jᵀ v⟩: the stacked linearisation is consistent
    assert float((lin.jvp(u) * v).sum()) == pytest.approx(float((u * lin.vjp(v)).sum()), rel=1e-10)
    with pytest.raises(Exception, match="nonlinear"):
        op.matrix()


@pytest.mark.parametrize("observations,message", [
    ([], "observations: an empty list"),
    ([dict(channels=["T850"]), dict(channels=["T500"])], "set names must differ, ['obs'] repeated"),
    ([dict(name="a"), dict(name="b", source="era5", path="x.nc")], "synthetic sets (an OSSE) cannot be mixed"),
    ([dict(name="a"), dict(name="b", sigma=dict(T850=-1))], "observations[1].sigma"),
    ([dict(name="9a")], "name must be a letter"),
])
def test_bad_set_lists_are_one_error_line(tmp_path, observations, message):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tree(observations=observations)))
    result = CliRunner().invoke(app, ["run", str(cfg), "--out", str(tmp_path / "run")])
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "run").exists()


def test_set_overrides_name_the_set():
    from ensemble_da.config import InputError, apply_overrides

    t = tree()
    out = apply_overrides(t, ["observations.satellite.sigma.T850=0.9", "observations.0.num_obs=12"])
    assert out["observations"][1]["sigma"]["T850"] == 0.9 and out["observations"][0]["num_obs"] == 12
    with pytest.raises(InputError, match=r"a list of sets; name one of \['sondes', 'satellite'\].*"
                                         r"observations\.sondes\.sigma\.T850"):
        apply_overrides(tree(), ["observations.sigma.T850=1"])


def test_a_biased_column_set_beside_an_unbiased_point_set_has_the_exact_joint_posterior(rng):
    """The bias model of the sets is block-diagonal (only the satellite's rows carry β); the joint
    posterior (state and β) against the augmented dense Kalman update (tolerance 1e-9: float64)."""
    from ensemble_da.exact import kalman_update_with_bias
    from ensemble_da.obs.bias import bias_model

    t = tree()
    t["observations"][1]["bias"] = dict(prior_sigma=1.5)
    cfg = RunConfig.model_validate(t)
    prior = load_prior(cfg.model, cfg.grid)
    n = 24
    obs = ObservationSet(time=np.datetime64("2020-01-01"), lat=rng.uniform(-70, 70, n), lon=rng.uniform(0, 360, n),
                         channel=["T850", "T500"] * 6 + ["T850"] * 12, value=rng.normal(262, 6, n), sigma=0.6,
                         set_name=["sondes"] * 12 + ["satellite"] * 12)
    op = build_operator(obs, prior.grid, prior.normalization, cfg.observation_sets())
    bias = bias_model(obs, op.sigma, cfg.observation_sets())
    assert op.linear and bias.names == ("satellite/T850",)
    assert np.all(bias.predictors[:12] == 0) and np.all(bias.predictors[12:] > 0)
    npix = prior.grid.npix
    eye = torch.eye(3 * npix, dtype=torch.float64).reshape(-1, 3, npix)
    sigma = prior.covariance_apply(eye).reshape(3 * npix, -1).numpy()
    h = np.hstack([op.matrix().toarray(), bias.predictors])
    cw = np.zeros((3 * npix + 1, 3 * npix + 1))
    cw[:-1, :-1], cw[-1, -1] = sigma, 1.5**2
    gain = cw @ h.T @ np.linalg.inv(h @ cw @ h.T + np.diag(op.sigma**2))
    post = cw - gain @ h @ cw
    mean, var, beta, cov = kalman_update_with_bias(prior.basis, op.matrix(), op.y, op.sigma, bias.predictors,
                                                   bias.prior_sigma)
    np.testing.assert_allclose(mean.reshape(-1), (gain @ op.y)[:-1], atol=1e-9)
    np.testing.assert_allclose(var.reshape(-1), np.diag(post)[:-1], atol=1e-9)
    np.testing.assert_allclose(beta, (gain @ op.y)[-1:], atol=1e-9)
    np.testing.assert_allclose(cov, post[-1:, -1:], atol=1e-9)
