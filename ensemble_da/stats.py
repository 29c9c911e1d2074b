"""Streaming ensemble statistics and scores (DESIGN.md §7 metric names).

`EnsembleMoments` accumulates mean and variance over member blocks by the parallel merge of
Chan et al. (1979), so no process needs the whole ensemble; `OrderedReduction` merges a time's
blocks (`BlockStats`) in member order, so the result does not depend on arrival order. Scores are named as forecasters name
them and say what they reduce: `fair_crps` (sort based, over members), `rank_counts` (truth's
rank among members, random tie-breaking), `spread_skill_ratio`, `heldout_spread_skill` (at
held-out observations, observation error included); `time_metrics` turns one analysis time's reductions
into the per-channel scalars logged to MLflow and summary.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Sequence

import numpy as np

from ensemble_da.obs.observation_set import ObservationSet

__all__ = [
    "EnsembleMoments",
    "fair_crps",
    "rank_counts",
    "spread_skill_ratio",
    "heldout_spread_skill",
    "ObsFit",
    "ObsSummary",
    "time_metrics",
    "set_metrics",
    "heldout_noise_rng",
    "heldout_rank_rng",
    "truth_rank_rng",
    "BlockStats",
    "OrderedReduction",
    "rms",
]


@dataclass
class EnsembleMoments:
    """Running count, mean and sum of squared deviations (M2) over the member axis.

    Arrays have the shape of one member (e.g. (channel, cell)); float64 throughout.
    """

    count: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None

    @classmethod
    def of(cls, block: np.ndarray) -> "EnsembleMoments":
        """Moments of a block with shape (member, ...)."""
        block = np.asarray(block, dtype=np.float64)
        mean = block.mean(0)
        return cls(block.shape[0], mean, ((block - mean) ** 2).sum(0))

    def merge(self, other: "EnsembleMoments") -> "EnsembleMoments":
        """Combine two disjoint sets of members (Chan et al. parallel update)."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return EnsembleMoments(n, mean, m2)

    def update(self, block: np.ndarray) -> "EnsembleMoments":
        """Merge a block of new members (member, ...); returns the merged moments."""
        return self.merge(EnsembleMoments.of(block))

    def variance(self, ddof: int = 1) -> np.ndarray:
        if self.count <= ddof:
            raise ValueError(f"variance with ddof={ddof} needs more than {ddof} members, have {self.count}")
        return self.m2 / (self.count - ddof)

    def std(self, ddof: int = 1) -> np.ndarray:
        return np.sqrt(self.variance(ddof))

    def spread(self) -> np.ndarray:
        """The ensemble spread as stored (DESIGN.md §7): std with ddof 1, zero for one member."""
        return self.std(ddof=1) if self.count > 1 else np.zeros_like(self.mean)


def fair_crps(ensemble: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Fair CRPS of an ensemble (member, ...) against `truth` (...), reduced over members only.

    CRPS_fair = mean_i |x_i - y| - Σ_ij |x_i - x_j| / (2 M (M - 1)) (Ferro 2014), with the pair
    sum taken from the sorted members, Σ_ij |x_i - x_j| = 2 Σ_k (2k - M - 1) x_(k) (k = 1..M):
    O(M log M) time and O(M) memory per point, never an (M, M) array. float64 (...).
    """
    x = np.asarray(ensemble, dtype=np.float64)
    m = x.shape[0]
    if m < 2:
        raise ValueError(f"fair CRPS needs at least 2 members, got {m}")
    skill = np.abs(x - np.asarray(truth, dtype=np.float64)[None]).mean(0)
    weights = (2.0 * np.arange(1, m + 1) - m - 1).reshape((m,) + (1,) * (x.ndim - 1))
    pairs = 2.0 * (weights * np.sort(x, axis=0)).sum(0)
    return skill - pairs / (2.0 * m * (m - 1))


@dataclass
class BlockStats:
    """What a replica returns for a member block instead of the block (DESIGN.md §2 data path).

    moments : EnsembleMoments of the block, arrays (channel, cell) float64, physical units
    hx : float64 (member, obs): H applied to each member over all of the time's observations
    cg_residual_max : largest MMPS relative CG residual met while sampling the block (NaN: none)
    """

    moments: EnsembleMoments
    hx: np.ndarray
    cg_residual_max: float = float("nan")

    @classmethod
    def of(cls, analysis: np.ndarray, operator, cg_residual_max: float = float("nan")) -> "BlockStats":
        """Statistics of `analysis` float32 (member, channel, cell), physical units, with `operator`
        (an observation operator over all observations of the time; its `observe` reads physical fields)."""
        block = np.asarray(analysis, dtype=np.float64)
        return cls(EnsembleMoments.of(block), operator.observe(block), float(cg_residual_max))


def rank_counts(ensemble: np.ndarray, truth: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Histogram of the truth's rank among the members: counts with shape (member + 1,).

    Ranks are taken independently at every point of `truth` (...): the number of members below
    it, plus, where members equal it, a uniform draw from 0..(number equal) (random tie-breaking,
    Hamill 2001), so a calibrated ensemble gives a flat histogram even for discretised values.
    `rng` draws the tie-breaks (default: a generator seeded 0, so the counts are reproducible).
    """
    ensemble, truth = np.asarray(ensemble), np.asarray(truth)[None]
    below = (ensemble < truth).sum(0)
    ties = (ensemble == truth).sum(0)
    if ties.any():
        rng = rng if rng is not None else np.random.default_rng(0)
        below = below + rng.integers(0, ties + 1)
    return np.bincount(below.reshape(-1), minlength=ensemble.shape[0] + 1)


def spread_skill_ratio(spread: float, rmse: float, members: int) -> float:
    """sqrt((M+1)/M) · spread / rmse: 1 for a calibrated ensemble of M members."""
    return float(np.sqrt((members + 1) / members) * spread / rmse) if rmse > 0 else float("nan")


def heldout_spread_skill(hx: np.ndarray, value: np.ndarray, sigma: np.ndarray) -> float:
    """Spread-skill ratio at held-out observations:
    √mean(σ_o² + (M+1)/M·σ_a²) / rms(O − mean A), 1 for a calibrated ensemble of M members
    (E[(O − Ā)²] = σ_o² + σ_a² + σ_a²/M when O and the members are exchangeable up to obs noise)."""
    m = hx.shape[0]
    spread2 = hx.var(0, ddof=1)
    err = rms(value - hx.mean(0))
    return float(np.sqrt(np.mean(sigma**2 + (m + 1) / m * spread2)) / err) if err > 0 else float("nan")


@dataclass
class ObsFit:
    """The analysis ensemble in observation space for one time: H applied to every member.

    hx has shape (member, obs) in physical units; obs is the time's full ObservationSet.
    """

    obs: ObservationSet
    hx: np.ndarray

    @cached_property
    def hx_mean(self) -> np.ndarray:
        """Ensemble mean at each observation, (obs,); computed once (`hx` is never changed)."""
        return self.hx.mean(0)

    @cached_property
    def hx_spread(self) -> np.ndarray:
        """Ensemble std (ddof 1) at each observation, (obs,); zero for one member; computed once."""
        return self.hx.std(0, ddof=1) if self.hx.shape[0] > 1 else np.zeros(self.hx.shape[1])

    @property
    def members(self) -> int:
        return int(self.hx.shape[0])

    def summary(self) -> "ObsSummary":
        """This fit without its member values: what a finished time keeps."""
        return ObsSummary(self.obs, self.hx_mean, self.hx_spread, self.members)


@dataclass(frozen=True)
class ObsSummary:
    """An `ObsFit` reduced to the ensemble mean and spread (obs,) at its observations and its
    member count: enough for `diagnostics.background_metrics` and the observations group, with
    two values per observation instead of one per member. A cycled run keeps one per finished
    time instead of the fit."""

    obs: ObservationSet
    hx_mean: np.ndarray
    hx_spread: np.ndarray
    members: int


def _nanmax(a: float, b: float) -> float:
    return b if np.isnan(a) else a if np.isnan(b) else max(a, b)


@dataclass
class OrderedReduction:
    """The `BlockStats` of one analysis time's member blocks, merged in block order (Chan merges of
    the moments, H x stacked by member, the largest CG residual) whatever order they arrive in: an
    early block waits (two fields) until its turn, so every float is the same in process and on
    Ray, with failures, stragglers or `--resume`.

    blocks : how many member blocks the time has; a block is named by its index in that order.
    """

    blocks: int
    moments: EnsembleMoments = field(default_factory=EnsembleMoments)
    hx: list[np.ndarray] = field(default_factory=list)
    cg_residual_max: float = float("nan")
    merged: int = 0
    pending: dict[int, BlockStats] = field(default_factory=dict)

    def add(self, index: int, stats: BlockStats) -> bool:
        """Queue block `index` and merge every block now next in order; False (and nothing done)
        for a block already seen: a unit run twice counts once."""
        if index < self.merged or index in self.pending:
            return False
        self.pending[index] = stats
        while self.merged in self.pending:
            s = self.pending.pop(self.merged)
            self.moments = self.moments.merge(s.moments)
            self.hx.append(s.hx)
            self.cg_residual_max = _nanmax(self.cg_residual_max, s.cg_residual_max)
            self.merged += 1
        return True

    @property
    def complete(self) -> bool:
        """Every block merged."""
        return self.merged == self.blocks

    def fit(self, obs: ObservationSet) -> ObsFit:
        """The merged members at `obs` (the observations the blocks' H x were taken at)."""
        return ObsFit(obs, np.concatenate(self.hx))


# Streams of the scores' own draws: SeedSequence([seed, t, stream]) with a stream id far from
# any member id (members use [seed, t, m]; and [seed, t] is the same entropy as [seed, t, 0]).
HELDOUT_NOISE_STREAM = 2**31 - 3
HELDOUT_RANK_STREAM = 2**31 - 4
TRUTH_RANK_STREAM = 2**31 - 5


def heldout_noise_rng(seed: int, t_index: int) -> np.random.Generator:
    """The stream of observation noise added to members for the held-out CRPS of time `t_index`
    (one definition, so in-memory and distributed runs report the same score)."""
    return np.random.default_rng(np.random.SeedSequence([seed, t_index, HELDOUT_NOISE_STREAM]))


def heldout_rank_rng(seed: int, t_index: int) -> np.random.Generator:
    """The stream of observation noise and tie-breaks of the held-out rank histogram of time
    `t_index` (one definition, so a run's own histogram and its report's agree)."""
    return np.random.default_rng(np.random.SeedSequence([seed, t_index, HELDOUT_RANK_STREAM]))


def truth_rank_rng(seed: int) -> np.random.Generator:
    """The tie-break stream of the report's rank histogram of the truth among the members."""
    return np.random.default_rng(np.random.SeedSequence([seed, TRUTH_RANK_STREAM]))


def rms(a: np.ndarray) -> float:
    """Root mean square of all elements; NaN for an empty array."""
    return float(np.sqrt(np.mean(np.square(a)))) if a.size else float("nan")


def time_metrics(
    channels: Sequence[str],
    moments: EnsembleMoments,
    fit: ObsFit | None = None,
    truth: np.ndarray | None = None,
    crps: np.ndarray | None = None,
    exact: tuple[np.ndarray, np.ndarray] | None = None,
    heldout_noise_rng: np.random.Generator | None = None,
) -> dict[str, float]:
    """Per-channel scalars of DESIGN.md §7 for one analysis time.

    Parameters
    ----------
    channels : names along the channel axis.
    moments : ensemble moments with arrays (channel, cell), physical units.
    fit : the ensemble in observation space (O−A, held-out O−A, spread at obs, held-out CRPS and
        spread-skill ratio).
    truth : (channel, cell) verifying truth (rmse, ssr; with `crps`).
    crps : (channel, cell) fair CRPS against truth, from `fair_crps`.
    exact : exact posterior (mean, spread), each (channel, cell).
    heldout_noise_rng : draws the observation noise added to members for held-out CRPS.
    """
    out: dict[str, float] = {}
    var = moments.variance()
    std = np.sqrt(var)
    m = moments.count
    resid = None if fit is None else fit.obs.value - fit.hx_mean  # O − A at every observation
    for c, name in enumerate(channels):
        out[f"spread/{name}"] = float(std[c].mean())
        if fit is not None:
            sel = fit.obs.channel == name
            assim, held = sel & fit.obs.assimilated, sel & ~fit.obs.assimilated
            if assim.any():
                out[f"oa_rmse/{name}"] = rms(resid[assim])
                out[f"oa_bias/{name}"] = float(resid[assim].mean())
                out[f"spread_at_obs/{name}"] = float(fit.hx_spread[assim].mean())
            if held.any():
                out[f"heldout_oa_rmse/{name}"] = rms(resid[held])
                if m > 1:
                    out[f"heldout_ssr/{name}"] = heldout_spread_skill(fit.hx[:, held], fit.obs.value[held], fit.obs.sigma[held])
                if heldout_noise_rng is not None:
                    noisy = fit.hx[:, held] + heldout_noise_rng.standard_normal((m, int(held.sum()))) * fit.obs.sigma[held]
                    out[f"heldout_crps/{name}"] = float(fair_crps(noisy, fit.obs.value[held]).mean())
        if truth is not None:
            rmse = rms(moments.mean[c] - truth[c])
            out[f"rmse/{name}"] = rmse
            out[f"ssr/{name}"] = spread_skill_ratio(float(np.sqrt(var[c].mean())), rmse, m)
            if crps is not None:
                out[f"crps/{name}"] = float(crps[c].mean())
        if exact is not None:
            e_mean, e_spread = exact
            out[f"exact_mean_err/{name}"] = rms((moments.mean[c] - e_mean[c]) / e_spread[c])
            out[f"exact_var_ratio/{name}"] = float(var[c].mean() / np.mean(e_spread[c] ** 2))
    return out


def set_metrics(channels: Sequence[str], moments: EnsembleMoments, fit: ObsFit, seed: int, t_index: int
                ) -> dict[str, float]:
    """Observation-space metrics of each observation set, `<set>/oa_rmse/<C>` and the other
    `time_metrics` keys that depend on the observations, when `fit` holds more than one set;
    held-out CRPS noise from `heldout_noise_rng(seed, t_index)`, drawn per set."""
    names = fit.obs.set_names
    if len(names) < 2:
        return {}
    out: dict[str, float] = {}
    for name in names:
        mask = fit.obs.set_name == name
        sub = ObsFit(fit.obs.subset(mask), fit.hx[:, mask])
        m = time_metrics(channels, moments, sub, heldout_noise_rng=heldout_noise_rng(seed, t_index))
        out.update({f"{name}/{k}": v for k, v in m.items() if not k.startswith("spread/")})
    return out
