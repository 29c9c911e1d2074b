"""Diagnostics (ensemble_da/diagnostics.py, DESIGN.md §7 "Diagnostics"): each function against a
direct computation on known inputs, then the whole chain on a Gaussian OSSE, where every expected
value is known in closed form (innovation covariance S = HBHᵀ + R from the exact prior)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as sps

from conftest import small_config
from ensemble_da.assimilation import Assimilator, assimilate
from ensemble_da.diagnostics import (
    background_metrics,
    background_qc,
    chi2_per_obs,
    desroziers,
    screen_observations,
    spread_reliability,
)
from ensemble_da.errors import InputError
from ensemble_da.obs.inputs import RunInputs, prepare_inputs
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.obs.operators import ObservationOperator
from ensemble_da.stats import ObsFit, heldout_spread_skill


def _obs(values, sigma, channels, assimilated) -> ObservationSet:
    n = len(values)
    return ObservationSet(time=np.datetime64("2020-01-01", "ns"), lat=np.linspace(-60, 60, n), lon=np.arange(n) * 7.0,
                          channel=np.asarray(channels), value=np.asarray(values, float), sigma=np.asarray(sigma, float),
                          assimilated=np.asarray(assimilated))


# --- functions against direct formulas ------------------------------------------------------------
def test_background_qc_threshold_by_hand():
    # Background members at 3 obs: means (0, 0, 10), std (ddof=1) 1 at each.
    a = np.sqrt(0.5)
    hb = np.array([[-a, -a, 10 - a], [a, a, 10 + a]])
    obs = _obs([4.9, -5.2, 20.0], [1e-9, 1e-9, np.sqrt(3.0)], ["T850", "T500", "T500"], [True] * 3)
    # bounds: 5·√(σ_o² + 1) = 5, 5, 5·√(3 + 1) = 10  →  |O−B| = 4.9 kept, 5.2 rejected, 10.0 kept (≤).
    qc = background_qc(obs, ObsFit(obs, hb), k=5.0)
    np.testing.assert_array_equal(qc.keep, [True, False, True])
    assert qc.metrics() == {"qc/background_rejected/T850": 0.0, "qc/background_rejected/T500": 1.0}
    with pytest.raises(InputError, match="qc_sigma_k"):
        background_qc(obs, ObsFit(obs, hb), k=0.0)
    with pytest.raises(InputError, match="rejected every assimilated observation"):
        screen_observations(obs, ObsFit(obs, hb + 100.0), k=5.0)


def test_desroziers_chi2_spread_skill_by_hand():
    o_a, o_b, a_b = np.array([1.0, -2.0, 3.0]), np.array([2.0, -1.0, 4.0]), np.array([1.0, 1.0, 1.0])
    s_o, s_b = desroziers(o_a, o_b, a_b)
    assert s_o == pytest.approx(np.sqrt((2 + 2 + 12) / 3)) and s_b == pytest.approx(np.sqrt((2 - 1 + 4) / 3))
    assert np.isnan(desroziers(-o_a, o_b, a_b)[0])  # negative mean product: no square root
    assert chi2_per_obs(o_b, np.array([1.0, 1.0, 2.0]), np.array([1.0, 0.0, 0.0])) == pytest.approx(
        (4 / 2 + 1 / 1 + 16 / 4) / 3)
    hx = np.array([[0.0, 2.0], [2.0, 4.0]])  # 2 members at 2 obs: means (1, 3), variances (2, 2)
    value, sigma = np.array([2.0, 1.0]), np.array([1.0, 1.0])
    assert heldout_spread_skill(hx, value, sigma) == pytest.approx(np.sqrt(1 + 1.5 * 2) / np.sqrt((1 + 4) / 2))


def test_spread_reliability_bins_by_spread():
    spread = np.array([4.0, 1.0, 3.0, 2.0, 6.0, 5.0])
    error = np.array([40.0, 10.0, 30.0, 20.0, 60.0, 50.0])
    s, e, n = spread_reliability(spread, error, bins=3)
    np.testing.assert_allclose(s, [np.sqrt((1 + 4) / 2), np.sqrt((9 + 16) / 2), np.sqrt((25 + 36) / 2)])
    np.testing.assert_allclose(e, 10 * s)
    np.testing.assert_array_equal(n, [2, 2, 2])


def test_background_metrics_by_hand():
    obs = _obs([1.0, 2.0, 3.0, 10.0], [0.5, 0.5, 1.0, 1.0], ["T850", "T850", "T850", "T850"], [True, True, True, False])
    ha = np.array([[0.0, 1.0, 2.0, 8.0], [1.0, 2.0, 3.0, 9.0]])  # means 0.5, 1.5, 2.5, 8.5
    hb = np.array([[-1.0, 0.0, 0.0, 4.0], [1.0, 2.0, 2.0, 6.0]])  # means 0, 1, 1, 5; std √2
    out = background_metrics(["T850"], ha.mean(0), ObsFit(obs, hb))
    o_a, o_b, a_b = np.array([0.5, 0.5, 0.5]), np.array([1.0, 1.0, 2.0]), np.array([0.5, 0.5, 1.5])
    assert out["ob_rmse/T850"] == pytest.approx(np.sqrt(6 / 3)) and out["ob_bias/T850"] == pytest.approx(4 / 3)
    assert out["desroziers_sigma_o/T850"] == pytest.approx(np.sqrt(np.mean(o_a * o_b)))
    assert out["desroziers_sigma_b/T850"] == pytest.approx(np.sqrt(np.mean(a_b * o_b)))
    assert out["desroziers_sigma_o_expected/T850"] == pytest.approx(np.sqrt((0.25 + 0.25 + 1) / 3))
    assert out["desroziers_sigma_b_expected/T850"] == pytest.approx(np.sqrt(2.0))
    assert out["chi2_per_obs/T850"] == pytest.approx(np.mean(o_b**2 / (np.array([0.25, 0.25, 1.0]) + 2.0)))
    assert out["chi2_per_obs_expected/T850"] == pytest.approx(np.mean(1 + 2.0 / (2 * (np.array([0.25, 0.25, 1.0]) + 2.0))))
    assert out["heldout_improvement/T850"] == pytest.approx(1 - 1.5 / 5.0)


def test_desroziers_recovers_sigmas_of_a_scalar_kalman_analysis(rng):
    """Independent of any sampler: O = x + e, B = 0, A = K(O − B) with the optimal gain, so
    E[(O−A)(O−B)] = σ_o² and E[(A−B)(O−B)] = σ_b² exactly. For n independent obs the products are
    c·d² with d ~ N(0, σ_b² + σ_o²): relative standard error of each estimated variance √(2/n)."""
    n, s_b, s_o = 20000, 3.0, 1.5
    d = rng.normal(0, s_b, n) + rng.normal(0, s_o, n)
    gain = s_b**2 / (s_b**2 + s_o**2)
    est_o, est_b = desroziers(d - gain * d, d, gain * d)
    tol = 4 * np.sqrt(2 / n)  # 4 standard errors of a variance; half of that for a std
    assert est_o**2 == pytest.approx(s_o**2, rel=tol) and est_b**2 == pytest.approx(s_b**2, rel=tol)


# --- the Gaussian OSSE ------------------------------------------------------------------------
SIGMA_O = 2.0
MEMBERS = 31  # 32 ranks: 8 bins of 4 for the rank-histogram test


@pytest.fixture(scope="module")
def osse():
    """3 analysis times, 300 observations each (20% held out), σ_o = 2 K, MMPS (cg 3, 32 steps),
    31 members, with the background ensemble. ~15 s on one core."""
    cfg = small_config(
        times=["2020-01-01T00", "2020-01-02T00", "2020-01-03T00"], ensemble=dict(members=MEMBERS),
        observations=dict(num_obs=300, heldout_fraction=0.2, sigma={c: SIGMA_O for c in ("T850", "T500", "T300")}),
        guidance=dict(method="mmps", cg_iters=3), diagnostics=dict(background=True),
    )
    a = Assimilator(cfg)
    inputs = prepare_inputs(cfg, a.prior)
    return cfg, a, inputs, assimilate(cfg, inputs, a)


def _innovation_cov(a: Assimilator, obs: ObservationSet, kind: str) -> np.ndarray:
    """S = H B Hᵀ + R in physical units for `obs`, B the exact prior covariance (DESIGN.md §4)."""
    op = ObservationOperator.build(obs, a.grid, a.normalization, kind)
    ht = torch.as_tensor(op.matrix().toarray().reshape(len(op), op.n_channels, op.npix))
    hbh = op.matrix() @ a.prior.covariance_apply(ht).reshape(len(op), -1).numpy().T
    scale = a.normalization.scale[a.normalization.index(obs.channel)]
    return hbh * np.outer(scale, scale) + np.diag(obs.sigma**2)


def test_osse_desroziers_recovers_sigma_o_and_chi2_is_one(osse):
    """Pooled over the 3 times, per channel. For an optimal analysis (O−A) = R S⁻¹ d, d = O − B ~ N(0, S),
    so by Isserlis Var(mean_i (O−A)_i (O−B)_i) = [Σ_ij (R S⁻¹ R)_ij S_ij + Σ_i σ_i⁴] / n² (summed over
    independent times) — the sampling error of the Desroziers σ_o² we test against (3 standard errors,
    with the finite ensembles' terms below added). χ²/n: Var = 2 Σ_ij S_ij² / (D_i D_j) / n²,
    D_i = σ_o² + σ_b²; its mean is 1 + σ_b²/(M·D) because the background mean has error variance σ_b²/M."""
    cfg, a, inputs, res = osse
    kind = cfg.observations.operator
    for name in ("T850", "T500", "T300"):
        prod, var_prod, bias, chi, var_chi, chi_expected, n = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0
        for t in range(3):
            fit, bfit = res.fits[t], res.background_fits[t]
            sel = (fit.obs.channel == name) & fit.obs.assimilated
            s_full = _innovation_cov(a, fit.obs.subset(fit.obs.assimilated), kind)
            obs_a = fit.obs.subset(fit.obs.assimilated)
            idx = obs_a.channel == name
            r = np.diag(obs_a.sigma**2)
            s_inv = np.linalg.inv(s_full)
            rsr = (r @ s_inv @ r)[np.ix_(idx, idx)]
            s = s_full[np.ix_(idx, idx)]
            o_a = fit.obs.value[sel] - fit.hx_mean[sel]
            o_b = fit.obs.value[sel] - bfit.hx_mean[sel]
            prod += float(np.sum(o_a * o_b))
            var_prod += float(np.sum(rsr * s) + np.sum(obs_a.sigma[idx] ** 4))
            # Finite ensembles: the analysis and background means carry sampling errors ε_a, ε_b
            # (covariances C_a/M, C_b/M at the obs, from the members), correlated through the shared
            # seeds: E[(O−A)(O−B)] gains mean_i Cov(ε_a, ε_b)_ii, the variance Σ C_a S / M + Σ C_b RS⁻¹R / M.
            ca, cb = np.cov(fit.hx[:, sel].T), np.cov(bfit.hx[:, sel].T)
            cab = np.mean((fit.hx[:, sel] - fit.hx_mean[sel]) * (bfit.hx[:, sel] - bfit.hx_mean[sel]), 0) * MEMBERS / (MEMBERS - 1)
            bias += float(np.sum(cab)) / MEMBERS
            var_prod += float(np.sum(ca * s) + np.sum(cb * rsr)) / MEMBERS
            d = np.diag(s)
            chi += float(np.sum(o_b**2 / (SIGMA_O**2 + bfit.hx_spread[sel] ** 2)))
            var_chi += float(2 * np.sum(s**2 / np.outer(d, d)))
            chi_expected += float(np.sum(1 + (d - SIGMA_O**2) / (MEMBERS * d)))
            n += int(sel.sum())
        est, se = prod / n, np.sqrt(var_prod) / n
        # Measured (seed fixed): σ_o² estimates 4.24, 5.32, 3.67 against 4.26, 4.21, 4.17 ± 0.40, 0.42, 0.38.
        assert abs(est - (SIGMA_O**2 + bias / n)) < 3 * se, (name, est, bias / n, se)
        assert res.metrics[0][f"desroziers_sigma_o_expected/{name}"] == pytest.approx(SIGMA_O)
        chi2 = chi / n
        # σ_b² in the denominator is an M-member estimate (relative error √(2/(M−1)) ≈ 0.26 per obs, at
        # worst shared by all obs of a time): allow that on top, averaged over the 3 independent times.
        # Measured: χ²/n 0.97, 1.25, 0.99 against 1.03 ± 0.13, 0.12, 0.12.
        tol = 3 * np.sqrt(var_chi) / n + np.sqrt(2 / (MEMBERS - 1)) / np.sqrt(3)
        assert abs(chi2 - chi_expected / n) < tol, (name, chi2, chi_expected / n)


def test_osse_rank_histogram_flat_and_analysis_beats_background(osse):
    cfg, a, inputs, res = osse
    counts = res.heldout_ranks.sum(axis=(0, 1))  # 32 ranks, pooled over times and channels
    assert counts.shape == (MEMBERS + 1,) and counts.sum() == sum(int((~f.obs.assimilated).sum()) for f in res.fits)
    # χ² test of uniformity on 8 bins of 4 ranks (≥ 20 expected per bin) at the 1% level: a
    # calibrated ensemble fails it 1% of the time, and this seed is fixed.
    assert sps.chisquare(counts.reshape(8, 4).sum(1)).pvalue > 0.01
    for t in range(3):
        for name in ("T850", "T500", "T300"):
            assert res.metrics[t][f"heldout_improvement/{name}"] > 0, (t, name)  # rms(O−A) < rms(O−B)
            fit, bfit = res.fits[t], res.background_fits[t]
            held = (fit.obs.channel == name) & ~fit.obs.assimilated
            ob = np.sqrt(np.mean((fit.obs.value[held] - bfit.hx_mean[held]) ** 2))
            oa = np.sqrt(np.mean((fit.obs.value[held] - fit.hx_mean[held]) ** 2))
            assert res.metrics[t][f"heldout_improvement/{name}"] == pytest.approx(1 - oa / ob)
    assert res.background.shape == res.analysis.shape
    # The background is the prior drawn with the analysis' seeds: members 0 of both differ.
    assert not np.allclose(res.background[0, 0], res.analysis[0, 0])


def test_background_qc_rejects_planted_gross_errors_only():
    """Background spread 2 K (model std 2 K), σ_o = 0.5 K, k = 5: the bound is 5·√(0.25 + σ_b²) ≈ 10 K.
    Clean innovations exceed it with probability ~6e-7 each (5σ), a +20 K error is below it only when
    the innovation is < −9.7 K (4.7σ): rejected are exactly the planted ones."""
    cfg = small_config(
        model=dict(std={"T850": 2.0, "T500": 2.0, "T300": 2.0}), sampler=dict(steps=12),
        ensemble=dict(members=16), observations=dict(num_obs=300), guidance=dict(method="mmps"),
        diagnostics=dict(background=True, qc_sigma_k=5.0),
    )
    a = Assimilator(cfg)
    inputs = prepare_inputs(cfg, a.prior)
    clean = assimilate(cfg, inputs, a)
    assert all(v == 0.0 for k, v in clean.metrics[0].items() if k.startswith("qc/background_rejected/"))
    assert clean.qc[0].keep.all()

    obs = inputs.observations[0]
    planted = np.zeros(len(obs), bool)
    planted[np.random.default_rng(7).choice(len(obs), 12, replace=False)] = True
    bad = ObservationSet(obs.time, obs.lat, obs.lon, obs.channel, obs.value + 20.0 * planted, obs.sigma,
                         obs.assimilated)
    res = assimilate(cfg, RunInputs(inputs.times, [bad], inputs.truth), a)
    np.testing.assert_array_equal(res.qc[0].keep, ~planted)
    for name in ("T850", "T500", "T300"):
        assert res.metrics[0][f"qc/background_rejected/{name}"] == int((planted & (obs.channel == name)).sum())
    assert len(res.fits[0].obs) == len(obs) - 12


def test_bad_diagnostics_config_is_one_clear_error():
    from ensemble_da.config import load_config

    with pytest.raises(InputError, match=r"diagnostics.qc_sigma_k.*-1"):
        load_config(None, ["diagnostics.qc_sigma_k=-1"])
    with pytest.raises(InputError, match="unknown config key 'diagnostics.qc_k'"):
        load_config(None, ["diagnostics.qc_k=3"])
