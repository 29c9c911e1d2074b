"""Operational diagnostics of an analysis ensemble against its background (DESIGN.md §7 "Diagnostics").

The background B is the unguided prior ensemble drawn with the analysis' seeds; A is the
analysis ensemble; O the observations. Everything here works in observation space on the
ensembles' values at the observations (`ObsFit`, (member, obs), physical units):

- innovations O−B and residuals O−A per channel (`ob_rmse`, `ob_bias`), and the analysis
  improvement at held-out observations, `1 − rms(O−A)/rms(O−B)`;
- background quality control (`background_qc`): reject |O−B| > k·√(σ_o² + σ_b²), σ_b the
  background ensemble spread at the observation (ECMWF's "first-guess check");
- Desroziers et al. (2005, QJRMS 131, 3385) consistency estimates:
  σ_o² ≈ E[(O−A)(O−B)] and HBHᵀ ≈ E[(A−B)(O−B)], exact for an optimal (Kalman) analysis;
- the normalised innovation χ²/n = mean((O−B)² / (σ_o² + σ_b²)), 1 when background and
  observation errors are as stated;
- calibration: rank histograms with random tie-breaking (Hamill 2001, MWR 129, 550), at
  held-out observations with observation noise added to the members (Anderson 1996), and
  spread reliability (binned ensemble spread vs binned error of the ensemble mean).

Each consistency diagnostic is logged beside its expected value (`…_expected/C`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ensemble_da.errors import InputError
from ensemble_da.obs.observation_set import ObservationSet
from ensemble_da.stats import EnsembleMoments, ObsFit, ObsSummary, rank_counts, rms

__all__ = [
    "Background",
    "BackgroundQC",
    "background_qc",
    "screen_observations",
    "desroziers",
    "chi2_per_obs",
    "heldout_rank_counts",
    "spread_reliability",
    "background_metrics",
    "heldout_rank_histogram",
    "DEFAULT_QC_SIGMA_K",
]

DEFAULT_QC_SIGMA_K = 5.0


def _sqrt_or_nan(v: float) -> float:
    """√v, NaN when v < 0 (a Desroziers product can average negative when the analysis is far
    from optimal; a negative variance has no square root and is reported as NaN)."""
    return float(np.sqrt(v)) if v >= 0 else float("nan")


@dataclass(frozen=True)
class BackgroundQC:
    """Result of the background check of one observation set.

    keep : bool (obs,) — observations that pass; rejected : counts per channel name.
    """

    keep: np.ndarray
    rejected: dict[str, int]

    def metrics(self) -> dict[str, float]:
        """`qc/background_rejected/<C>` for MLflow and summary.json."""
        return {f"qc/background_rejected/{c}": float(n) for c, n in self.rejected.items()}


def background_qc(obs: ObservationSet, background: ObsFit, k: float = DEFAULT_QC_SIGMA_K) -> BackgroundQC:
    """Reject observations with |O−B| > k·√(σ_o² + σ_b²) (first-guess check).

    Parameters
    ----------
    obs : the observation set (all of it: assimilated and held out are checked alike, so a gross
        error neither enters the analysis nor spoils its verification).
    background : the background ensemble at `obs` (hx with shape (member, obs), physical units);
        needs at least 2 members for σ_b (ensemble std, ddof=1).
    k : threshold in standard deviations of the innovation (> 0).

    Returns
    -------
    BackgroundQC with the mask of kept observations and the rejected count per channel.
    """
    if not k > 0:
        raise InputError(f"diagnostics.qc_sigma_k must be > 0, got {k}")
    if background.hx.shape != (background.hx.shape[0], len(obs)) or background.hx.shape[0] < 2:
        raise ValueError(f"background at obs has shape {background.hx.shape}, need (member >= 2, {len(obs)})")
    innovation = obs.value - background.hx_mean
    bound = k * np.sqrt(obs.sigma**2 + background.hx_spread**2)
    keep = np.abs(innovation) <= bound
    rejected = {c: int(((obs.channel == c) & ~keep).sum()) for c in obs.channels}
    return BackgroundQC(keep, rejected)


def screen_observations(
    obs: ObservationSet, background: ObsFit, k: float = DEFAULT_QC_SIGMA_K
) -> tuple[ObservationSet, ObsFit, BackgroundQC]:
    """Background QC applied: (the observations that pass, the background at them, the QC result).

    InputError when no assimilated observation passes (the analysis would be the prior)."""
    qc = background_qc(obs, background, k)
    if not (qc.keep & obs.assimilated).any():
        raise InputError(
            f"background QC (qc_sigma_k={k:g}) rejected every assimilated observation at "
            f"{np.datetime_as_string(obs.time[0], unit='m')}; check the observations' units and sigma"
        )
    kept = obs.subset(qc.keep)
    return kept, ObsFit(kept, background.hx[:, qc.keep]), qc


def desroziers(o_minus_a: np.ndarray, o_minus_b: np.ndarray, a_minus_b: np.ndarray) -> tuple[float, float]:
    """Desroziers et al. (2005) estimates (σ_o, σ_b) from one channel's observations.

    σ_o = √mean((O−A)(O−B)), σ_b = √mean((A−B)(O−B)) (σ_b: the background error std in
    observation space, √diag(HBHᵀ) averaged). Arrays (obs,), physical units; NaN where the mean
    product is negative.
    """
    return (
        _sqrt_or_nan(float(np.mean(o_minus_a * o_minus_b))),
        _sqrt_or_nan(float(np.mean(a_minus_b * o_minus_b))),
    )


def chi2_per_obs(o_minus_b: np.ndarray, sigma_o: np.ndarray, sigma_b: np.ndarray) -> float:
    """Normalised innovation χ²/n = mean((O−B)² / (σ_o² + σ_b²)); 1 for consistent error statistics."""
    return float(np.mean(o_minus_b**2 / (sigma_o**2 + sigma_b**2)))


def heldout_rank_counts(hx: np.ndarray, value: np.ndarray, sigma: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rank of held-out observations among the members with observation noise added.

    hx : (member, obs) ensemble at the observations; value, sigma : (obs,). Each member gets
    N(0, sigma²) noise (so a calibrated ensemble is flat against noisy observations), then the
    rank with random tie-breaking. Returns int counts (member + 1,).
    """
    noisy = hx + rng.standard_normal(hx.shape) * sigma[None]
    return rank_counts(noisy, value, rng)


def spread_reliability(spread: np.ndarray, error: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spread reliability: points binned by ensemble spread into equally populated bins.

    spread : ensemble std per point; error : ensemble mean minus verification per point (same shape).
    Returns (rms spread, rms error, count), each (bins,) — a reliable ensemble has rms error ≈ rms
    spread in every bin (up to the (M+1)/M factor of a finite ensemble).
    """
    spread, error = np.ravel(spread), np.ravel(error)
    if spread.shape != error.shape or spread.size < bins:
        raise ValueError(f"need equal shapes and at least {bins} points, got {spread.shape}, {error.shape}")
    order = np.argsort(spread, kind="stable")
    groups = np.array_split(order, bins)
    rms_spread = np.array([rms(spread[g]) for g in groups])
    rms_error = np.array([rms(error[g]) for g in groups])
    return rms_spread, rms_error, np.array([len(g) for g in groups])


def background_metrics(channels: Sequence[str], analysis_mean: np.ndarray, background: ObsFit | ObsSummary
                       ) -> dict[str, float]:
    """Per-channel diagnostics of DESIGN.md §7 for one time, at the observations `background.obs`.

    analysis_mean : (obs,) the analysis ensemble mean at the same observations (H applied).

    ob_rmse/C, ob_bias/C (assimilated O − background mean), heldout_improvement/C,
    desroziers_sigma_o/C and desroziers_sigma_b/C with `…_expected/C` (rms configured σ_o; rms
    background ensemble spread at the obs), chi2_per_obs/C with chi2_per_obs_expected/C
    (1 + σ_b²/(M(σ_o² + σ_b²)) for an M-member background mean).
    """
    obs = background.obs
    if np.shape(analysis_mean) != (len(obs),):
        raise ValueError(f"analysis mean at obs has shape {np.shape(analysis_mean)}, expected ({len(obs)},)")
    o_a = obs.value - analysis_mean
    o_b = obs.value - background.hx_mean
    a_b = analysis_mean - background.hx_mean
    sigma_b, members = background.hx_spread, background.members
    out: dict[str, float] = {}
    for name in channels:
        sel = obs.channel == name
        assim, held = sel & obs.assimilated, sel & ~obs.assimilated
        if assim.any():
            out[f"ob_rmse/{name}"] = rms(o_b[assim])
            out[f"ob_bias/{name}"] = float(o_b[assim].mean())
            s_o, s_b = desroziers(o_a[assim], o_b[assim], a_b[assim])
            out[f"desroziers_sigma_o/{name}"] = s_o
            out[f"desroziers_sigma_o_expected/{name}"] = rms(obs.sigma[assim])
            out[f"desroziers_sigma_b/{name}"] = s_b
            out[f"desroziers_sigma_b_expected/{name}"] = rms(sigma_b[assim])
            out[f"chi2_per_obs/{name}"] = chi2_per_obs(o_b[assim], obs.sigma[assim], sigma_b[assim])
            # An M-member background mean errs by σ_b²/M more than the background distribution's mean.
            sb2, so2 = sigma_b[assim] ** 2, obs.sigma[assim] ** 2
            out[f"chi2_per_obs_expected/{name}"] = float(np.mean(1 + sb2 / (members * (so2 + sb2))))
        if held.any():
            ob = rms(o_b[held])
            out[f"heldout_improvement/{name}"] = 1.0 - rms(o_a[held]) / ob if ob > 0 else float("nan")
    return out


@dataclass
class Background:
    """The background ensemble of a run's times, reduced, and the observations screened against it
    (what `assimilate` and the distributed run, `actors.background`, both do with a background).

    moments : per time, the background moments, arrays (channel, cell) in physical units (empty
        for a cycled run, which writes each time's into the store as it goes).
    fits : per time, the background members at the observations that passed QC (a cycled run
        keeps only their mean and spread there, `ObsSummary`, once the time is finished).
    qc : per time, the background check (`background_qc`).
    """

    moments: list[EnsembleMoments]
    fits: list[ObsFit | ObsSummary]
    qc: list[BackgroundQC]

    @classmethod
    def screened(cls, moments: Sequence[EnsembleMoments], at_obs: Sequence[ObsFit], k: float) -> "Background":
        """Screen each time's observations `at_obs[t].obs` against the background there
        (`screen_observations`, threshold k); InputError when a time keeps nothing to assimilate."""
        fits, qcs = [], []
        for fit in at_obs:
            _, kept, qc = screen_observations(fit.obs, fit, k)
            fits.append(kept)
            qcs.append(qc)
        return cls(list(moments), fits, qcs)

    @property
    def observations(self) -> list[ObservationSet]:
        """Each time's observations after background QC."""
        return [f.obs for f in self.fits]

    def time_metrics(self, t: int, channels: Sequence[str], analysis_mean_at_obs: np.ndarray) -> dict[str, float]:
        """§7 diagnostics of time t (O−B, Desroziers, χ²/n, held-out improvement) and its QC counts;
        `analysis_mean_at_obs` (obs,) at `observations[t]`."""
        return {**background_metrics(channels, analysis_mean_at_obs, self.fits[t]), **self.qc[t].metrics()}

    def qc_totals(self) -> dict[str, float]:
        """`qc/background_rejected/<C>` summed over times."""
        out: dict[str, float] = {}
        for q in self.qc:
            for k, v in q.metrics().items():
                out[k] = out.get(k, 0.0) + v
        return out

    def fields(self, analysis_mean: np.ndarray) -> dict[str, np.ndarray]:
        """Store variables (time, channel, cell): background mean and spread, and the increment
        (analysis mean − background mean) given the analysis mean (time, channel, cell)."""
        mean = np.stack([m.mean for m in self.moments])
        spread = np.stack([m.spread() for m in self.moments])
        return {"background_mean": mean, "background_spread": spread, "increment": analysis_mean - mean}

    def observation_columns(self) -> dict[str, np.ndarray]:
        """`hb_mean`, `hb_spread`: the background at each observation, all times in order (obs,)."""
        return {"hb_mean": np.concatenate([f.hx_mean for f in self.fits]),
                "hb_spread": np.concatenate([f.hx_spread for f in self.fits])}


def heldout_rank_histogram(channels: Sequence[str], analysis: ObsFit, rng: np.random.Generator) -> np.ndarray:
    """Rank counts of held-out observations among the members (observation noise added), int
    (channel, member + 1); zero for a channel without held-out observations. `rng` draws the
    noise and the tie-breaks."""
    obs, m = analysis.obs, analysis.hx.shape[0]
    counts = np.zeros((len(channels), m + 1), dtype=np.int64)
    for c, name in enumerate(channels):
        held = (obs.channel == name) & ~obs.assimilated
        if held.any():
            counts[c] = heldout_rank_counts(analysis.hx[:, held], obs.value[held], obs.sigma[held], rng)
    return counts
