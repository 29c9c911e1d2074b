"""Run configuration (DESIGN.md §7a): pydantic models loaded from YAML, `--set a.b=c` overrides.

Unknown keys are errors; every error is an `InputError` naming the key and the value.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence, TypeVar, Union

import numpy as np
import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError, field_validator,
                      model_validator)

from ensemble_da.errors import InputError

__all__ = [
    "RunConfig",
    "ReplicaSpec",
    "prior_key",
    "analysis_times",
    "GridConfig",
    "ModelConfig",
    "KernelModelConfig",
    "MODEL_KINDS",
    "model_config",
    "GaussianModelConfig",
    "GaussianMarkovModelConfig",
    "ClimatologyModelConfig",
    "CheckpointModelConfig",
    "CBottleModelConfig",
    "PythonModelConfig",
    "CBottleConfig",
    "SamplerConfig",
    "GuidanceConfig",
    "EnsembleConfig",
    "ObservationsConfig",
    "OperatorConfig",
    "OPERATOR_KINDS",
    "operator_config",
    "ClusterConfig",
    "TrackingConfig",
    "DiagnosticsConfig",
    "CycleConfig",
    "ForecastConfig",
    "MarkovForecastConfig",
    "PythonForecastConfig",
    "SpeedyForecastConfig",
    "load_config",
    "default_config_path",
    "apply_overrides",
    "load_yaml_model",
    "read_yaml_file",
    "validate_tree",
]


M = TypeVar("M", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GridConfig(_Strict):
    nside: int = 16

    @field_validator("nside")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v < 1 or v & (v - 1):
            raise ValueError(f"nside must be a positive power of 2, got {v}")
        return v


class CBottleConfig(_Strict):
    """`model.kind: cbottle` (see `ensemble_da.priors.cbottle`).

    checkpoints: one cBottle checkpoint (.checkpoint zip), or one per expert, highest σ first;
    sigma_thresholds: expert i denoises σ ≥ sigma_thresholds[i], the last expert the rest
    (cBottle's 3-expert model: [100, 10]); they must decrease, which the mixture itself checks
    (`CBottleDenoiser`), so a mixture built from Python is checked too; label: the dataset label (`era5` costs a second,
    ICON-labelled network call per step for its masked radiation channels); sst: monthly SST
    file (NetCDF/zarr, K, NaN or masked over land), or sst_constant (K) everywhere.
    """

    checkpoints: list[str]
    sigma_thresholds: list[float] = Field(default_factory=list)
    label: Literal["icon", "era5"] = "icon"
    sst: str | None = None
    sst_constant: float | None = None

    @model_validator(mode="after")
    def _check(self) -> "CBottleConfig":
        if not self.checkpoints:
            raise ValueError("cbottle.checkpoints must name at least one checkpoint")
        if len(self.checkpoints) != len(self.sigma_thresholds) + 1:
            raise ValueError(
                f"cbottle needs one checkpoint more than sigma_thresholds, got {len(self.checkpoints)} "
                f"checkpoints and {len(self.sigma_thresholds)} thresholds"
            )
        if self.sst is not None and self.sst_constant is not None:
            raise ValueError("give cbottle.sst or cbottle.sst_constant, not both")
        return self


DEFAULT_CHANNELS = ("T850", "T500", "T300")
# cycle.window when none is given (README "Time: cycling and reanalysis", table (a)).
DEFAULT_CYCLE_WINDOW = 3
DEFAULT_NUGGET = 0.05


class _ModelBase(_Strict):
    """What every prior kind has: `channels`, None for the model's own (checkpoint, cbottle,
    python)."""

    channels: list[str] | None = None


def _default_channels() -> list[str]:
    return list(DEFAULT_CHANNELS)


def _nugget_range(v: float) -> float:
    if not 0.0 < v < 1.0:
        raise ValueError(f"nugget must be in (0, 1), got {v}")
    return v


# The white share ν² of a Gaussian prior's variance (§4), in (0, 1).
Nugget = Annotated[float, AfterValidator(_nugget_range)]


def _positive_std(v: float) -> float:
    if not v > 0:
        raise ValueError("must be > 0 (a standard deviation)")
    return v


# A channel's prior std (physical units), > 0: `model.std.T850`.
PositiveStd = Annotated[float, AfterValidator(_positive_std)]


class KernelModelConfig(_ModelBase):
    """The §4 Gaussian kernel prior's settings (`ensemble_da.priors.gaussian`): per-channel `mean`
    and `std` (physical units), a Gaussian kernel of `length_scale_km`, a `channel_correlation`
    matrix, a white `nugget` share (0, 1); the covariance `approximation`: "exact" (nside ≤ 16),
    "lowrank" (the top `rank` modes + nugget), "spherical_harmonics" (whole degrees l with
    (l+1)² ≤ rank); `cache_dir` for the kernel's eigenpairs."""

    channels: list[str] = Field(default_factory=_default_channels)
    mean: dict[str, float] | None = None
    std: dict[str, PositiveStd] | None = None
    length_scale_km: float = 1500.0
    channel_correlation: list[list[float]] | None = None
    nugget: Nugget = DEFAULT_NUGGET
    approximation: Literal["exact", "lowrank", "spherical_harmonics"] = "exact"
    rank: int = Field(512, ge=1)
    cache_dir: str | None = None

    @field_validator("length_scale_km")
    @classmethod
    def _positive_length(cls, v: float) -> float:
        if not v > 0:
            raise ValueError(f"length_scale_km must be > 0, got {v}")
        return v


class GaussianModelConfig(KernelModelConfig):
    """`model.kind: gaussian`, DESIGN.md §4: the exact Gaussian prior (`KernelModelConfig`'s keys)."""

    kind: Literal["gaussian"] = "gaussian"


class GaussianMarkovModelConfig(KernelModelConfig):
    """`model.kind: gaussian_markov`, DESIGN.md §10: the §4 Gaussian as the stationary covariance
    of an AR(1) process, z_{k+1} = ρ z_k + √(1 − ρ²) ξ_k, with `rho` (0 < ρ < 1, required)."""

    kind: Literal["gaussian_markov"] = "gaussian_markov"
    rho: float

    @field_validator("rho")
    @classmethod
    def _rho_range(cls, v: float) -> float:
        if not 0.0 < v < 1.0:
            raise ValueError(f"rho must be in (0, 1) (an AR(1) coefficient of a stationary process), got {v}")
        return v


class ClimatologyModelConfig(_ModelBase):
    """`model.kind: gaussian_climatology`: a Gaussian fitted from the dataset at `path`
    (`ensemble_da.priors.climatology`), the top `rank` modes plus a `nugget` (None: fitted from
    the data's trailing variance); the last `holdout_days` states are left out of the fit."""

    kind: Literal["gaussian_climatology"] = "gaussian_climatology"
    channels: list[str] = Field(default_factory=_default_channels)
    path: str | None = None
    holdout_days: int = 0
    nugget: Nugget | None = None
    rank: int = Field(512, ge=1)


class CheckpointModelConfig(_ModelBase):
    """`model.kind: checkpoint`: a learned HEALPix denoiser (safetensors + JSON) at `path`
    (None: the shipped one; "shipped-window": the shipped window prior)."""

    kind: Literal["checkpoint"] = "checkpoint"
    path: str | None = None


class CBottleModelConfig(_ModelBase):
    """`model.kind: cbottle`: the cBottle adapter, its settings under `cbottle:` (`CBottleConfig`)."""

    kind: Literal["cbottle"] = "cbottle"
    cbottle: CBottleConfig


class PythonModelConfig(_ModelBase):
    """`model.kind: python`: a plug-in; `factory` ("package.module:function") called with
    `options` as keywords returns a `Denoiser`."""

    kind: Literal["python"] = "python"
    factory: str
    options: dict[str, Any] = Field(default_factory=dict)


# Each kind's section, by `model.kind` (gaussian when none is given): a key another kind reads is
# an unknown key here, not a silently ignored one.
MODEL_KINDS: dict[str, type[_ModelBase]] = {
    "gaussian": GaussianModelConfig,
    "gaussian_markov": GaussianMarkovModelConfig,
    "gaussian_climatology": ClimatologyModelConfig,
    "checkpoint": CheckpointModelConfig,
    "cbottle": CBottleModelConfig,
    "python": PythonModelConfig,
}


def _model_kind(v: Any) -> str | None:
    kind = v.get("kind", "gaussian") if isinstance(v, dict) else getattr(v, "kind", None)
    return kind if kind in MODEL_KINDS else None


ModelConfig = Annotated[
    Union[tuple(Annotated[cls, Tag(kind)] for kind, cls in MODEL_KINDS.items())],  # type: ignore[misc]
    Discriminator(_model_kind, custom_error_type="model_kind",
                  custom_error_message=f"model.kind must be one of {', '.join(MODEL_KINDS)}"),
]
"""The prior section, a union discriminated by `kind` (the classes of `MODEL_KINDS`)."""


def model_config(**settings: Any) -> _ModelBase:
    """The model section of `settings` (a `kind`, gaussian when none, and that kind's keys),
    validated: the `MODEL_KINDS` class of that kind. InputError with the CLI's one-line message
    for a key of another kind, a missing required key or a bad value."""
    return validate_tree(RunConfig, {"model": settings}, "model_config").model


class SamplerConfig(_Strict):
    steps: int = 32
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    solver: Literal["heun", "euler"] = "heun"
    churn: float = 0.0
    batch_size: int = 16
    # bf16 autocast of the denoiser forward on CUDA; guidance math stays float32/float64.
    autocast: Literal["bf16", "none"] = "bf16"

    @model_validator(mode="after")
    def _check(self) -> "SamplerConfig":
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        return self


class GuidanceConfig(_Strict):
    """Likelihood guidance. Default MMPS with 3 GMRES iterations: the only method that converges
    to the exact posterior on the Gaussian prior and stays calibrated on a learned one, where
    CG's residual grows without bound at high σ and regression (γ = 1e-2) diverges at 16 steps
    (README, "Guidance on a learned prior")."""

    method: Literal["none", "regression", "dps", "mmps"] = "mmps"
    scale: float = 1.0
    gamma: float = 1e-2
    zeta: float = 1.0
    # MMPS: linear solver of (diag(s²) + σ² H Jᵀ Hᵀ) v = y − H D and its iteration count.
    # gmres is exact for a non-symmetric J (a learned network); cg assumes J symmetric.
    solver: Literal["cg", "gmres"] = "gmres"
    cg_iters: int = 3

    @field_validator("cg_iters")
    @classmethod
    def _iters(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"cg_iters must be >= 0, got {v}")
        return v


class EnsembleConfig(_Strict):
    members: int = 16

    @field_validator("members")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"members must be >= 1, got {v}")
        return v


OPERATOR_KINDS = ("nearest", "bilinear", "column", "footprint", "wind_speed", "python")


class _OperatorConfig(_Strict):
    def __str__(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), default_flow_style=True, sort_keys=False).strip()


class PointOperatorConfig(_OperatorConfig):
    """`operator: {kind: nearest | bilinear}` (or the bare name): the observation's own channel at its location."""

    kind: Literal["nearest", "bilinear"]


class ColumnOperatorConfig(_OperatorConfig):
    """`operator: {kind: column, weights: {channel: w}}`: y = Σ_c w_c · bilinear(x_c), physical units."""

    kind: Literal["column"]
    weights: dict[str, float]

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        if not v or not any(w != 0 for w in v.values()) or not all(np.isfinite(w) for w in v.values()):
            raise ValueError(f"column weights must map channels to finite numbers, not all zero; got {v}")
        return v


class FootprintOperatorConfig(_OperatorConfig):
    """`operator: {kind: footprint, radius_km: r}`: the observation's channel averaged over the
    cells whose centres lie within r km (healpy.query_disc)."""

    kind: Literal["footprint"]
    radius_km: float

    @field_validator("radius_km")
    @classmethod
    def _radius(cls, v: float) -> float:
        if not 0 < v < 20000:
            raise ValueError(f"radius_km must be in (0, 20000), got {v}")
        return v


class WindSpeedOperatorConfig(_OperatorConfig):
    """`operator: {kind: wind_speed, level: 850}`: √(U² + V²) of the bilinear U850, V850 (nonlinear);
    `level: surface` reads uas, vas."""

    kind: Literal["wind_speed"]
    level: int | Literal["surface"]


class PythonOperatorConfig(_OperatorConfig):
    """`operator: {kind: python, object: "module:callable"}`: a torch function h(x, locations,
    **options) of the member batch in physical units (ensemble_da/obs/operators/plugin.py);
    `scale` is the unit of its observations in guidance (y_n = y / scale)."""

    kind: Literal["python"]
    object: str
    options: dict[str, Any] = Field(default_factory=dict)
    scale: float = 1.0

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: float) -> float:
        if not v > 0:
            raise ValueError(f"scale must be > 0, got {v}")
        return v


OperatorConfig = Annotated[
    PointOperatorConfig | ColumnOperatorConfig | FootprintOperatorConfig | WindSpeedOperatorConfig | PythonOperatorConfig,
    Field(discriminator="kind"),
]
_NEEDS = {"column": "weights: {channel: w}", "footprint": "radius_km", "wind_speed": "level", "python": 'object: "module:callable"'}


def _operator_shape(v: Any) -> Any:
    """The checks before a kind is known: a bare name must be a point kind, a mapping needs a known kind."""
    kinds = " | ".join(OPERATOR_KINDS)
    if isinstance(v, str):
        if v in ("nearest", "bilinear"):
            return v
        if v in _NEEDS:
            raise ValueError(f"operator {v} needs settings: write operator: {{kind: {v}, {_NEEDS[v]}}}")
        raise ValueError(f"unknown operator kind {v!r} ({kinds})")
    if isinstance(v, dict) and v.get("kind") not in OPERATOR_KINDS:
        raise ValueError(f"operator needs kind: one of {kinds} (got {v.get('kind')!r})")
    return v


def operator_config(spec: str | dict | BaseModel) -> BaseModel:
    """`observations.operator` (a kind name, a mapping or a config model) as its config model;
    InputError (one line) when it is not a valid operator."""
    if isinstance(spec, BaseModel):
        return spec
    try:
        spec = _operator_shape(spec)
        return TypeAdapter(OperatorConfig).validate_python({"kind": spec} if isinstance(spec, str) else spec)
    except (ValueError, ValidationError) as exc:
        if isinstance(exc, ValidationError):
            err = exc.errors()[0]
            msg = f"{'.'.join(str(p) for p in err['loc'][1:])}: {err['msg']}"
        else:
            msg = str(exc)
        raise InputError(f"observations.operator: {msg.removeprefix('Value error, ')}") from None


class BiasConfig(_Strict):
    """`observations.bias`: a bias of the observations estimated jointly with the state, VarBC-like
    (DESIGN.md §5, `ensemble_da.obs.bias`): one parameter per observed channel and predictor.

    kind: `constant` (one bias per channel) or `linear` (a constant plus `predictors`:
    `latitude`, latitude / 90°; `value`, the observed value standardised per channel).
    prior_sigma: prior std of each parameter, physical units of the channel (per unit predictor).
    truth: OSSE only, the constant bias per channel added to the synthetic observations
    (physical units), e.g. `{T850: 1.5}`.
    """

    kind: Literal["constant", "linear"] = "constant"
    prior_sigma: float = 1.0
    predictors: list[Literal["latitude", "value"]] = Field(default_factory=list)
    truth: dict[str, float] | None = None

    @field_validator("prior_sigma")
    @classmethod
    def _prior_sigma(cls, v: float) -> float:
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"prior_sigma must be a finite number > 0, got {v}")
        return v

    @model_validator(mode="after")
    def _kind(self) -> "BiasConfig":
        if self.kind == "constant" and self.predictors:
            raise ValueError("predictors are for kind linear (kind constant has one constant per channel)")
        if self.kind == "linear" and not self.predictors:
            self.predictors = ["latitude"]
        if self.truth is not None:
            for name, b in self.truth.items():
                if not np.isfinite(b):
                    raise ValueError(f"truth for {name} must be finite, got {b}")
        return self

    def predictor_names(self) -> tuple[str, ...]:
        """The predictors of each channel's parameters, `constant` first."""
        return ("constant", *self.predictors)


class ObservationsConfig(_Strict):
    # The set's name (a run may list several sets: per-set QC counts, metrics and bias).
    name: str = "obs"
    source: Literal["synthetic", "era5", "stations"] = "synthetic"
    path: str | list[str] | None = None
    channels: list[str] = Field(default_factory=lambda: ["T850", "T500", "T300"])
    num_obs: int = 200
    # A point kind by name, or a mapping {kind: ..., ...} (DESIGN.md §5; `OPERATOR_KINDS`).
    operator: Literal["nearest", "bilinear"] | OperatorConfig = "bilinear"
    strategy: Literal["random", "uniform", "land_only", "ocean_only"] = "random"
    heldout_fraction: float = 0.1
    sigma: dict[str, float] = Field(default_factory=dict)
    # Largest |observation time - analysis time| accepted, in hours.
    time_tolerance_hours: float = 3.0
    # Verifying truth for era5 runs: a gridded file regridded to HEALPix (null: no truth).
    truth_path: str | None = None
    # Repeated reports (same time, place, channel): merge (mean value, largest sigma) | first | reject.
    duplicate_policy: Literal["merge", "first", "reject"] = "merge"
    # Add N(0, sigma²) noise to values read from files (null: yes for synthetic, no otherwise).
    add_noise: bool | None = None
    # Lat/lon spacing of the OSSE's ERA5-layout file in degrees (null: the coarsest of
    # 2/1/0.5/0.25 that is at most a quarter of the HEALPix cell size, else 0.25).
    osse_grid_deg: float | None = None
    # Station-table times: null (ISO 8601 text, or epoch numbers with the unit detected),
    # epoch_s | epoch_ms | epoch_us | epoch_ns, or a strftime format such as "%d/%m/%Y %H:%M".
    time_format: str | None = None
    # Station-table times written day first (13/01/2020) when no time_format is given.
    dayfirst: bool = False
    # A bias estimated jointly with the state (null: unbiased observations). BiasConfig.
    bias: BiasConfig | None = None

    @field_validator("operator", mode="before")
    @classmethod
    def _operator(cls, v: Any) -> Any:
        return _operator_shape(v)

    @field_validator("sigma")
    @classmethod
    def _sigma_positive(cls, v: dict[str, float]) -> dict[str, float]:
        for name, s in v.items():
            if not s > 0:
                raise ValueError(f"sigma for {name} must be > 0, got {s}")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,31}", v):
            raise ValueError(f"name must be a letter then up to 31 letters, digits, _ or -, got {v!r}")
        return v

    @model_validator(mode="after")
    def _bias_truth(self) -> "ObservationsConfig":
        if self.bias is not None and self.bias.truth is not None:
            if self.source != "synthetic":
                raise ValueError("bias.truth is for synthetic observations (an OSSE); real observations bring their own bias")
            unknown = sorted(set(self.bias.truth) - set(self.channels))
            if unknown:
                raise ValueError(f"bias.truth names {unknown}, not among the observed channels {self.channels}")
        return self

    @field_validator("osse_grid_deg")
    @classmethod
    def _grid_deg(cls, v: float | None) -> float | None:
        if v is not None and not 0 < v <= 10:
            raise ValueError(f"osse_grid_deg must be in (0, 10], got {v}")
        return v

    @field_validator("time_tolerance_hours")
    @classmethod
    def _tolerance(cls, v: float) -> float:
        if not v >= 0:
            raise ValueError(f"time_tolerance_hours must be >= 0, got {v}")
        return v

    @field_validator("heldout_fraction")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {v}")
        return v

    @field_validator("num_obs")
    @classmethod
    def _num(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"num_obs must be >= 1, got {v}")
        return v


# `observations:` is one set (a mapping) or a list of sets; the tag tells pydantic which, so an
# error names the key once (`_loc` drops the tag) instead of once per union member.
_ONE_SET, _SET_LIST = "one set", "list of sets"
ObservationSets = Annotated[
    Union[Annotated[ObservationsConfig, Tag(_ONE_SET)], Annotated[list[ObservationsConfig], Tag(_SET_LIST)]],
    Discriminator(lambda v: _SET_LIST if isinstance(v, list) else _ONE_SET),
]


class ClusterConfig(_Strict):
    address: str = "local"
    replicas: int = 2
    gpus_per_replica: float = 0.0
    cpus_per_replica: int = 1
    placement: Literal["SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK"] = "SPREAD"
    members_per_unit: int = 8
    # Where replicas run the prior: auto = cuda when gpus_per_replica > 0 (an error if the
    # replica sees no CUDA), else cpu; cpu = GPUs only reserve scheduling slots.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # shared: replicas write their member blocks into the store themselves (a path every node
    # sees, or an fsspec URL); writer: one writer actor on the driver's node writes them.
    store: Literal["shared", "writer"] = "shared"
    # Units queued on each replica, so it never waits for the driver between units.
    units_in_flight: int = 2
    # A unit running longer than this multiple of the median unit time is re-issued to an idle
    # replica (first result wins); 0 turns re-issue off.
    straggler_factor: float = 4.0
    # Aggregator actors (Ray only); analysis time t goes to actor t mod aggregators.
    aggregators: int = 2
    # How long to wait for the cluster to place every replica before failing.
    placement_timeout_s: float = 300.0


class TrackingConfig(_Strict):
    uri: str | None = None
    experiment: str = "ensemble-da"


class DiagnosticsConfig(_Strict):
    """Operational diagnostics (DESIGN.md §7 "Diagnostics"): `background: true` also draws the
    unguided prior ensemble with the same seeds (O−B, Desroziers, χ²/n, increment) and checks each
    observation against it before assimilation, rejecting |O−B| > qc_sigma_k·√(σ_o² + σ_b²).
    `exact: false` skips the exact reference of a Gaussian prior (exact_mean, exact_spread, the
    exact_* metrics; the Kalman filter or RTS smoother in time modes): it judges the analysis and
    is not part of it, and its cost grows with the observations (README "The Gaussian prior beyond
    nside 16": 132 s at 20,000 observations, nside 16)."""

    background: bool = False
    qc_sigma_k: float = 5.0
    exact: bool = True

    @field_validator("qc_sigma_k")
    @classmethod
    def _k_positive(cls, v: float) -> float:
        if not v > 0:
            raise ValueError(f"qc_sigma_k must be > 0, got {v}")
        return v


class MarkovForecastConfig(_Strict):
    """`cycle.forecast: markov` (or `{kind: markov}`): the exact AR(1) transition of model.kind
    gaussian_markov (`ensemble_da.dynamics.markov`)."""

    kind: Literal["markov"] = "markov"


class PythonForecastConfig(_Strict):
    """`cycle.forecast: {kind: python, object: "package.module:factory", options: {...}}`: a user
    forecast model (`ensemble_da.dynamics.plugin`): `factory(prior, **options)` returns an object
    with `forecast(x, t_index, members, seed)`."""

    kind: Literal["python"]
    object: str
    options: dict[str, Any] = Field(default_factory=dict)


class SpeedyForecastConfig(_Strict):
    """`cycle.forecast: {kind: speedy}`: SPEEDY (jcm, T30L8) carries each member's full model state
    from one analysis time to the next (`ensemble_da.dynamics.speedy`; needs `ensemble-da[speedy]`).

    spinup_days: days integrated from jcm's rest state (seeded by the run's seed) to the climate
    state the members start from; perturbation_k: std (K) of the white temperature perturbation
    added per member, at every sigma level, to that state before the first time. The interval
    integrated per call is the run's spacing of `times` (6 h for six-hourly times); the seasonal
    forcing follows jcm's own clock (2000-01-01 + spin-up), not the dates in `times`.
    """

    kind: Literal["speedy"]
    spinup_days: float = Field(30.0, ge=0.0)
    perturbation_k: float = Field(0.5, ge=0.0)


class WindowForecastConfig(_Strict):
    """`cycle.forecast: window`: the learned window prior's own transition (a window checkpoint
    trained with `previous: true`): slot 0 of its window given the member's analysis, drawn by
    unguided EDM sampling with the run's `sampler` settings (`ensemble_da.dynamics.window`)."""

    kind: Literal["window"]


ForecastConfig = Annotated[Union[MarkovForecastConfig, PythonForecastConfig, SpeedyForecastConfig,
                                 WindowForecastConfig],
                           Field(discriminator="kind")]


class CycleConfig(_Strict):
    """Settings of the time-aware modes (DESIGN.md §10; README "Time: cycling and reanalysis").

    window: slots L of the window prior (consecutive analysis times). `cycle` samples, at time k,
    the window k−L+1..k given the observations in it and (with `carry`) the member's own state
    just before the window; null is 3 for `cycle` (README "Time" table (a): its mean error beyond
    Monte-Carlo error against the Kalman filter is 0.06 filter std, 2: 0.10, 1: 0.19) and the whole run for `reanalysis` (one window: exact for gaussian_markov).
    A reanalysis window shorter than the run composes window scores (SDA, Rozet & Louppe 2023).
    carry: condition the window on the member's earlier state (false: every window starts from the
    stationary prior and forgets the observations before it, as appa's filter does).
    forecast: the model that carries members to the next time for the background (O−B
    diagnostics), a section discriminated by `kind`: `markov` (the string alone works too), the
    exact transition of model.kind gaussian_markov; `python`, a plug-in (`object`, `options`);
    `speedy`, SPEEDY in the loop; `window`, a learned window prior's own transition
    (`ensemble_da.dynamics.build_forecast`).
    first_guess_check: screen each time's observations against the whole background ensemble
    (`diagnostics.qc_sigma_k`) before its analysis, so every block waits for the slowest block's
    forecast at each time; false: no such screen, and each member block flows through the cycles
    on its own (its forecast and analysis one unit, DESIGN.md §10 "Scheduling").
    max_lead: with first_guess_check off, how many analysis times a block may run ahead of the
    slowest one (the per-time reductions held open).
    """

    window: int | None = None
    carry: bool = True
    forecast: ForecastConfig = Field(default_factory=MarkovForecastConfig)
    first_guess_check: bool = True
    max_lead: int = 4

    @field_validator("forecast", mode="before")
    @classmethod
    def _forecast_name(cls, v: Any) -> Any:
        # `forecast: markov` is `{kind: markov}`; a kind that needs settings says which are missing.
        return {"kind": v} if isinstance(v, str) else v

    @field_validator("window")
    @classmethod
    def _window(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"window must be >= 1 analysis time, got {v}")
        return v

    @field_validator("max_lead")
    @classmethod
    def _max_lead(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"max_lead must be >= 1 analysis time, got {v}")
        return v


class RunConfig(_Strict):
    run_name: str = "demo"
    seed: int = 0
    # analysis: each time alone; cycle: filter (time k sees observations up to k); reanalysis:
    # smoother (every time sees all observations; member m is one trajectory). DESIGN.md §10.
    mode: Literal["analysis", "cycle", "reanalysis"] = "analysis"
    cycle: CycleConfig = Field(default_factory=CycleConfig)
    times: list[str] = Field(default_factory=lambda: ["2020-01-01T00:00"])
    grid: GridConfig = Field(default_factory=GridConfig)
    model: ModelConfig = Field(default_factory=GaussianModelConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    guidance: GuidanceConfig = Field(default_factory=GuidanceConfig)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    # One observation set, or a list of named sets assimilated together (DESIGN.md §5).
    observations: ObservationSets = Field(default_factory=ObservationsConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig)

    @field_validator("times")
    @classmethod
    def _times(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("times must list at least one analysis time")
        for t in v:
            try:
                np.datetime64(t, "s")
            except ValueError:
                raise ValueError(f"not an ISO time of the standard calendar: {t!r} (analysis times are standard-calendar "
                                 "dates; a noleap or 360_day file is read on the same dates, those the standard "
                                 "calendar lacks left out)") from None
        return v

    @model_validator(mode="after")
    def _sets(self) -> "RunConfig":
        if not isinstance(self.observations, list):
            return self
        if not self.observations:
            raise ValueError("observations: an empty list; give one set or a list of named sets")
        names = [s.name for s in self.observations]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"observations: set names must differ, {repeated} repeated (give each set a name)")
        synthetic = {s.source == "synthetic" for s in self.observations}
        if len(synthetic) > 1:
            raise ValueError("observations: synthetic sets (an OSSE) cannot be mixed with sets read from files")
        truths = {s.truth_path for s in self.observations} - {None}
        if len(truths) > 1:
            raise ValueError(f"observations: the sets name different truth_path files {sorted(truths)}; give it once")
        return self

    def observation_sets(self) -> list[ObservationsConfig]:
        """The run's observation sets, one or more."""
        return list(self.observations) if isinstance(self.observations, list) else [self.observations]

    @model_validator(mode="after")
    def _bias(self) -> "RunConfig":
        if all(s.bias is None for s in self.observation_sets()):
            return self
        if self.mode != "analysis":
            raise ValueError(f"observations.bias is for mode analysis; in mode {self.mode} the bias estimate "
                             "does not yet carry from one time to the next")
        if self.guidance.method == "dps":
            raise ValueError("observations.bias needs guidance.method mmps or regression: dps ignores the "
                             "observation error covariance, so it cannot account for the bias")
        return self

    @model_validator(mode="after")
    def _time_aware(self) -> "RunConfig":
        if self.mode == "analysis":
            return self
        times = self.analysis_times()
        steps = np.diff(times)
        if len(steps) and (np.any(steps <= np.timedelta64(0, "ns")) or np.any(steps != steps[0])):
            hours = [float(d / np.timedelta64(1, "h")) for d in steps]
            raise ValueError(f"mode {self.mode} needs equally spaced, increasing times; the spacings are {hours} hours")
        if self.cycle.window is not None and self.cycle.window > len(times):
            raise ValueError(f"cycle.window {self.cycle.window} is longer than the run ({len(times)} analysis times)")
        return self

    def window_length(self) -> int:
        """The window L of a time-aware mode (`cycle.window`, or its mode's default)."""
        if self.cycle.window is not None:
            return self.cycle.window
        return min(DEFAULT_CYCLE_WINDOW, len(self.times)) if self.mode == "cycle" else len(self.times)

    def analysis_times(self) -> np.ndarray:
        """Analysis times as datetime64[ns] (UTC)."""
        return analysis_times(self.times)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def replica_spec(self) -> "ReplicaSpec":
        """What a model replica needs of this run (`ReplicaSpec`)."""
        cl = self.cluster
        return ReplicaSpec(seed=self.seed, mode=self.mode, times=list(self.times), grid=self.grid, model=self.model,
                           sampler=self.sampler, guidance=self.guidance, observations=self.observation_sets(),
                           cycle=self.cycle, window=self.window_length(), threads=max(1, int(cl.cpus_per_replica)),
                           device=cl.device, gpus=cl.gpus_per_replica)


def prior_key(model: "ModelConfig", grid: GridConfig) -> str:
    """The identity of a prior: its model and grid config as canonical JSON. Two runs with the
    same key can share a built prior (a sweep's driver cache, a kept replica)."""
    return json.dumps([model.model_dump(mode="json"), grid.model_dump(mode="json")], sort_keys=True)


class ReplicaSpec(_Strict):
    """What a model replica needs of a run (DESIGN.md §2), built once by the driver
    (`RunConfig.replica_spec`) from the validated run config: the prior (model on grid), how it
    samples (sampler, guidance), the sets' operators and bias models (observations), the seed
    and analysis times (member streams, time conditions), the mode and cycle with its resolved
    window L, and the replica's threads, device and GPUs. Not the run's outputs, ensemble size,
    tracking or diagnostics; the run-level checks are not repeated here."""

    seed: int
    mode: Literal["analysis", "cycle", "reanalysis"]
    times: list[str]
    grid: GridConfig
    model: ModelConfig
    sampler: SamplerConfig
    guidance: GuidanceConfig
    observations: list[ObservationsConfig]
    cycle: CycleConfig
    window: int
    threads: int = 1
    device: str = "auto"
    gpus: float = 0.0

    def observation_sets(self) -> list[ObservationsConfig]:
        return list(self.observations)

    def window_length(self) -> int:
        return self.window

    def analysis_times(self) -> np.ndarray:
        """Analysis times as datetime64[ns] (UTC)."""
        return analysis_times(self.times)


def analysis_times(times: Sequence[str]) -> np.ndarray:
    """ISO analysis times as datetime64[ns] (UTC)."""
    return np.array([np.datetime64(t, "ns") for t in times])


def default_config_path() -> Path:
    """The packaged demo config (the embedded default of DESIGN.md §8)."""
    return Path(str(resources.files("ensemble_da") / "configs" / "demo.yaml"))


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    """Set `a.b.c` in a raw tree; in a list of sections (observation sets) the next key is a
    section's `name` or its index: `observations.sondes.sigma.T850`."""
    keys = dotted.split(".")
    node: Any = tree
    for i, k in enumerate(keys[:-1]):
        if isinstance(node, list):
            names = [str(item.get("name", j)) if isinstance(item, dict) else str(j) for j, item in enumerate(node)]
            if k not in names and not (k.isdigit() and int(k) < len(node)):
                raise InputError(f"--set {dotted}: {keys[i - 1]!r} is a list of sets; name one of {names} "
                                 f"(or its index) after it, e.g. {keys[i - 1]}.{names[0]}.{'.'.join(keys[i:])}")
            node = node[names.index(k) if k in names else int(k)]
            continue
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, (dict, list)):
            raise InputError(f"--set {dotted}: {k!r} is not a section")
        node = child
    if isinstance(node, list):
        raise InputError(f"--set {dotted}: {keys[-2]!r} is a list of sets; name one and a key of it")
    node[keys[-1]] = value


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply `a.b=value` overrides (value parsed as YAML) to a raw config tree."""
    for item in overrides:
        if "=" not in item:
            raise InputError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            reason = str(exc).splitlines()[0]
            raise InputError(
                f"--set {key}: value {text!r} is not valid YAML ({reason}); quote a string: {key}='\"...\"'"
            ) from None
        _set_path(tree, key.strip(), value)
    return tree


def _override_source(loc: str, overrides: list[str], source: str) -> str:
    """`--set key` when the failing key came from an override, else the config file."""
    for item in reversed(overrides):
        key = item.split("=", 1)[0].strip()
        if loc == key or loc.startswith(key + ".") or key.startswith(loc + "."):
            return f"--set {key}"
    return source


def _loc(parts: tuple) -> str:
    """An error location as a dotted key: union tags left out, list items as `[i]`."""
    out = ""
    for i, p in enumerate(parts):
        if p in (_ONE_SET, _SET_LIST) or str(p).startswith("function-"):
            continue
        if i > 0 and parts[i - 1] == "model" and p in MODEL_KINDS:  # the model section's kind tag
            continue
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _format_validation(exc: ValidationError, source: str, overrides: list[str] | None = None) -> str:
    err = exc.errors()[0]
    loc = _loc(err["loc"])
    source = _override_source(loc, overrides or [], source)
    if err["type"] == "extra_forbidden" and loc == "sweep":
        return (f"{source}: a sweep: section is for `ensemble-da sweep {source}` (every combination of its "
                "values); `ensemble-da run` takes one configuration")
    if err["type"] == "extra_forbidden" and loc.startswith("model.") and len(err["loc"]) > 1:
        kind = err["loc"][1]
        keys = [_loc(e["loc"]) for e in exc.errors() if e["type"] == "extra_forbidden" and _loc(e["loc"]).startswith("model.")]
        readers = [k for k, cls in MODEL_KINDS.items() if loc.split(".")[1] in cls.model_fields]
        also = f" (it is a key of model.kind {', '.join(readers)})" if readers else ""
        default = "; model.kind is gaussian when none is given" if kind == "gaussian" else ""
        if len(keys) > 1:
            return (f"{source}: {', '.join(repr(k) for k in keys)} are not keys of model.kind {kind}; "
                    f"remove them or choose the kind that has them{default}")
        return f"{source}: {loc!r} is not a key of model.kind {kind}{also}{default}"
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown config key {loc!r}"
    if err["type"] == "missing" and loc.startswith("model.") and len(err["loc"]) > 1:
        source = _override_source("model.kind", overrides or [], source)
        return f"{source}: model.kind {err['loc'][1]} needs {loc!r}"
    if err["type"] == "missing":
        return f"{source}: missing key {loc!r}"
    if err["type"] == "model_kind":
        return f"{source}: bad value for 'model.kind' ({err['input'].get('kind')!r}): {err['msg']}"
    if not loc:  # a check across sections (RunConfig's own validator): its message names the keys
        return f"{source}: {err['msg'].removeprefix('Value error, ')}"
    value = err.get("input")
    if isinstance(value, (dict, BaseModel)):  # a section's own check: its message names the keys
        return f"{source}: {loc}: {err['msg'].removeprefix('Value error, ')}"
    return f"{source}: bad value for {loc!r} ({value!r}): {err['msg'].removeprefix('Value error, ')}"


def validate_tree(model: type[M], tree: dict, source: str = "config", overrides: list[str] | None = None) -> M:
    """Validate a raw tree into `model`; errors become one-line InputErrors naming key and value,
    and the `--set` override the key came from (else `source`)."""
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        raise InputError(_format_validation(exc, source, overrides)) from None


def config_from_tree(tree: dict, source: str = "config") -> RunConfig:
    """Validate a raw tree into a RunConfig; errors become one-line InputErrors."""
    return validate_tree(RunConfig, tree, source)



class _DuplicateKey(Exception):
    def __init__(self, key: str, first: int, second: int):
        self.key, self.first, self.second = key, first, second


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently),
    naming the key's dotted path (`sampler.steps`, `observations[1].name`)."""

    def construct_document(self, node: yaml.Node):
        self._refuse_duplicates(node, "", set())
        return super().construct_document(node)

    def _refuse_duplicates(self, node: yaml.Node, path: str, visited: set[int]) -> None:
        if id(node) in visited:  # an alias: checked where its anchor is
            return
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._refuse_duplicates(item, f"{path}[{i}]", visited)
        elif isinstance(node, yaml.MappingNode):
            seen: dict[object, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                dotted = f"{path}.{key}" if path else str(key)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise _DuplicateKey(dotted, seen[key], line)
                    seen[key] = line
                except TypeError:  # an unhashable key: construct_mapping says so
                    pass
                self._refuse_duplicates(value_node, dotted, visited)


def read_yaml_file(path: str | Path, what: str = "config file") -> dict:
    """The mapping of keys in the YAML file at `path`; one-line InputErrors for what a hand-edited
    file meets: a key given twice (both lines named), a tab in the indentation (line named), other
    YAML errors (line named), an empty or comments-only file, a top level that is not a mapping."""
    path = Path(path)
    text = path.read_text()
    try:
        tree = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as dup:
        raise InputError(f"{path}: duplicate key {dup.key!r} at line {dup.first} and line {dup.second} "
                         "(YAML would keep the last one silently); keep one") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        upto = mark.line + 1 if mark is not None else len(text.splitlines())
        for n, line in enumerate(text.splitlines()[:upto], start=1):
            indent = line[: len(line) - len(line.lstrip(" \t"))]
            if "\t" in indent:
                raise InputError(f"{path}: line {n} is indented with a tab character (YAML indents with spaces "
                                 f"only): {line.strip()!r}") from None
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{path}: not valid YAML{where}: {problem}") from None
    if tree is None:
        raise InputError(f"{path}: the {what} is empty (no keys, only blank lines or comments)")
    if not isinstance(tree, dict):
        raise InputError(f"{path}: top level must be a mapping of config keys")
    return tree

def load_yaml_model(model: type[M], path: str | Path, overrides: list[str] | None = None, what: str = "config file") -> M:
    """Read YAML at `path`, apply `a.b=value` overrides and validate into `model` (InputError on bad input)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    tree = read_yaml_file(path, what)
    apply_overrides(tree, overrides or [])
    return validate_tree(model, tree, str(path), overrides)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a run config from YAML (None: the packaged demo) and apply `--set` overrides.

    On the demo, a `--set model.kind=K` of another kind keeps only the demo's model keys that K
    has: the demo's Gaussian settings are not the user's, and K would refuse the others."""
    if path is not None:
        return load_yaml_model(RunConfig, path, overrides)
    demo = default_config_path()
    tree = read_yaml_file(demo, "config file")
    demo_keys = set(tree.get("model", {}))
    apply_overrides(tree, overrides or [])
    model = tree.get("model")
    if isinstance(model, dict) and model.get("kind", "gaussian") in MODEL_KINDS:
        fields = MODEL_KINDS[model.get("kind", "gaussian")].model_fields
        users = {item.split("=", 1)[0].strip().split(".")[1] for item in overrides or []
                 if item.split("=", 1)[0].strip().startswith("model.")}
        for key in demo_keys - users - set(fields):
            model.pop(key, None)
    return validate_tree(RunConfig, tree, str(demo), overrides)
