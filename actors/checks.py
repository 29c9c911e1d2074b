"""Checks made before a run touches its directory (DESIGN.md §7: bad input leaves earlier outputs
intact): the `cluster:` values pydantic cannot pin down, the run directory, and that a `--resume`
uses the config its run was started with.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from ensemble_da.config import RunConfig, config_from_tree
from ensemble_da.errors import InputError
from ensemble_da.io import STORE_NAME

__all__ = ["RESUME_FREE_KEYS", "NothingToResume", "check_time_mode", "check_cluster", "check_out_dir", "check_resume_config",
           "config_differences", "describe_differences", "input_identity", "check_resume_inputs"]

# Config keys that may change between a run and its `--resume`: where it runs and where it is
# tracked. Everything else decides the members (and the store's chunking) and must match.
RESUME_FREE_KEYS = tuple(f"cluster.{k}" for k in (
    "address", "replicas", "gpus_per_replica", "cpus_per_replica", "placement", "device", "store", "units_in_flight",
    "straggler_factor", "aggregators", "placement_timeout_s")) + ("tracking.",)

_ADDRESS = re.compile(r"^(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d+$")


def check_cluster(config: RunConfig) -> None:
    """The `cluster:` values that pydantic's types do not pin down (InputError naming the key)."""
    cl = config.cluster
    if cl.address not in ("local", "inprocess", "auto") and not _ADDRESS.match(cl.address):
        raise InputError(
            f"cluster.address {cl.address!r} is not one of local, inprocess, auto, host:port, ray://host:port"
        )
    for key, value, low in (("replicas", cl.replicas, 1), ("cpus_per_replica", cl.cpus_per_replica, 1),
                            ("members_per_unit", cl.members_per_unit, 1), ("units_in_flight", cl.units_in_flight, 1),
                            ("aggregators", cl.aggregators, 1), ("gpus_per_replica", cl.gpus_per_replica, 0),
                            ("straggler_factor", cl.straggler_factor, 0), ("placement_timeout_s", cl.placement_timeout_s, 0)):
        if value < low:
            raise InputError(f"cluster.{key} must be >= {low}, got {value}")
    if 0 < cl.straggler_factor < 1.5:
        raise InputError(f"cluster.straggler_factor must be 0 (off) or >= 1.5, got {cl.straggler_factor}")
    if cl.device == "cuda" and cl.gpus_per_replica <= 0:
        raise InputError("cluster.device=cuda needs cluster.gpus_per_replica > 0")
    if cl.address == "inprocess" and cl.gpus_per_replica > 0:
        # The in-process replica would fail the same way, but only after the run directory exists.
        import torch

        from actors.replica import select_device

        select_device(cl.device, cl.gpus_per_replica, torch.cuda.is_available())


def check_time_mode(config: RunConfig, prior: object, resume: bool) -> None:
    """A time-aware mode (DESIGN.md §10) needs a prior over time windows; what it cannot do yet
    (`--resume` of a reanalysis) is refused here, before the run directory is touched, and so is a
    `python` forecast plug-in that fails its first two forecasts of member 0, and a `speedy` forecast
    outside one in-process replica (it keeps the members' model states in that process). A window
    checkpoint serves only the time-aware modes, with its own window length (`cycle.window`) and,
    when carried, only if it was trained on the state before its window."""
    from ensemble_da.cycling import fixed_window, is_time_prior

    if config.mode == "analysis":
        if fixed_window(prior):
            raise InputError(f"the checkpoint is a window prior of {prior.window_slots} times: use mode cycle or "
                             "reanalysis, or a single-time checkpoint for mode analysis")
        return
    if not is_time_prior(prior):
        raise InputError(f"mode {config.mode} needs a prior over time windows (model.kind gaussian_markov or a "
                         f"window checkpoint); model.kind {config.model.kind} has none: use mode analysis")
    if fixed_window(prior):
        length = config.window_length()
        prior.window(length, conditioned=config.mode == "cycle" and config.cycle.carry and len(config.times) > length)
    if config.mode == "cycle" and config.cycle.forecast.kind in ("markov", "window"):
        from ensemble_da.dynamics import build_forecast

        build_forecast(config, prior)  # cheap for these kinds: its InputError names what fits
    if config.mode == "cycle" and config.cycle.forecast.kind == "python":
        from ensemble_da.dynamics.plugin import check_forecast_plugin

        check_forecast_plugin(config.cycle.forecast.object, config.cycle.forecast.options, prior, config.seed,
                              len(config.times))
    if config.mode == "cycle" and config.cycle.forecast.kind == "speedy":
        # SPEEDY keeps each member's full model state in the process that forecast it last.
        if config.cluster.address != "inprocess" or config.cluster.replicas != 1:
            raise InputError("cycle.forecast speedy keeps each member's SPEEDY state in one process: set "
                             "cluster.address inprocess and cluster.replicas 1")
        if resume:
            raise InputError("--resume of a run with cycle.forecast speedy is not supported: the members' SPEEDY "
                             "states are not in the store; start the run again")
    if config.mode == "reanalysis" and config.diagnostics.background:
        raise InputError("diagnostics.background is for mode analysis (a cycled run always has its background); "
                         "a reanalysis has none: set diagnostics.background false")
    if resume and config.mode == "reanalysis":
        raise InputError("--resume of a mode reanalysis run is not supported yet; start the run again "
                         "(its members are the same: they depend only on seed and member)")


class NothingToResume(InputError):
    """`--resume` of a complete run with its own config: nothing to do (the CLI says so and exits
    0, as `sweep --resume` of a finished sweep does); an InputError for API callers."""


def check_out_dir(out_dir: Path, resume: bool, grow: bool = False) -> None:
    """A new run needs a new (or empty) directory; a resumed one an existing run directory
    (complete only when it `grow`s: more members for a finished run)."""
    if resume:
        if not (out_dir / "config.yaml").is_file() or not (out_dir / STORE_NAME / "zarr.json").is_file():
            raise InputError(f"--resume: {out_dir} is not a run directory (no config.yaml / {STORE_NAME})")
        import zarr

        if not grow and zarr.open_group(str(out_dir / STORE_NAME), mode="r").attrs.get("complete"):
            raise NothingToResume(f"--resume: the run in {out_dir} is complete, nothing to resume "
                                  "(its outputs are left as they are)")
    elif out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"output directory {out_dir} already exists; choose another --out or add --resume")


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _stored_config(out_dir: Path) -> RunConfig:
    path = out_dir / "config.yaml"
    try:
        tree = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"--resume: cannot read {path}: {exc}") from None
    return config_from_tree(tree or {}, str(path))


def config_differences(then: dict, now: dict, skip: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """Every dotted key (sorted) whose value differs between two config trees, with its value in
    `then` and in `now` (None where absent); keys starting with one of `skip` are left out."""
    a, b = _flat(then), _flat(now)
    return [(key, a.get(key), b.get(key)) for key in sorted(set(a) | set(b))
            if not key.startswith(skip) and a.get(key) != b.get(key)]


def describe_differences(differences: Sequence[tuple[str, Any, Any]], where: str, shown: int = 6) -> str:
    """`config key 'seed' is 3 but the run in DIR used 7; 'x' is 2 (was 1)` for the first `shown`
    keys (then how many more), for one `--resume` error line."""
    parts = [f"config key {key!r} is {now!r} but {where} used {then!r}" if i == 0 else f"{key!r} is {now!r} (was {then!r})"
             for i, (key, then, now) in enumerate(differences[:shown])]
    more = len(differences) - shown
    return "; ".join(parts) + (f"; and {more} more key{'s' if more > 1 else ''}" if more > 0 else "")


def check_resume_config(given: RunConfig, out_dir: Path, free: tuple[str, ...] = ()) -> None:
    """`--resume` must use the config of the run in `out_dir`, except RESUME_FREE_KEYS (and `free`)."""
    diffs = config_differences(_stored_config(out_dir).model_dump(mode="json"), given.model_dump(mode="json"),
                               RESUME_FREE_KEYS + tuple(free))
    if diffs:
        raise InputError(f"--resume: {describe_differences(diffs, f'the run in {out_dir}')}; resume with the same config")


# What a prior's `meta` says about where its numbers come from (weights file, training or fitting data).
_PRIOR_IDENTITY_KEYS = ("weights_sha256", "training_data_hash", "data_hash", "fit_states", "rank", "nugget")


def input_identity(prior, observations: Sequence) -> dict[str, Any]:
    """What the config's text does not pin down but a run's members depend on: the prior's weights
    or fitting data (its `meta`, e.g. a checkpoint's weights hash, a climatology's data hash) and
    each time's observations (SHA-256 of lat, lon, channel, value, sigma, assimilated)."""
    meta = getattr(prior, "meta", None) or {}
    obs = []
    for o in observations:
        h = hashlib.sha256()
        for a in (o.lat, o.lon, o.value, o.sigma, o.assimilated):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update("\0".join(map(str, o.channel)).encode())
        obs.append(h.hexdigest()[:16])
    return {"prior": {k: meta[k] for k in _PRIOR_IDENTITY_KEYS if k in meta}, "observations": obs}


def check_resume_inputs(stored: dict[str, Any] | None, now: dict[str, Any], out_dir: Path) -> None:
    """`--resume` must see the prior and observations its run started with (a regenerated dataset
    or checkpoint behind the same `model.path`, or changed observation files, would mix members
    of two posteriors in one store). Stores written before this check (no record) pass."""
    if not stored:
        return
    stored = json.loads(json.dumps(stored))
    now = json.loads(json.dumps(now))
    if stored.get("prior") != now["prior"]:
        raise InputError(f"--resume: the prior differs from the one the run in {out_dir} started with "
                         f"({stored.get('prior')} then, {now['prior']} now: model.path points at other weights or "
                         "data); resume with the same prior or start a new run")
    then = stored.get("observations", [])
    changed = [t for t, (a, b) in enumerate(zip(then, now["observations"])) if a != b]
    if changed or len(then) != len(now["observations"]):
        raise InputError(f"--resume: the observations of analysis time(s) {changed or 'count'} differ from those the run in "
                         f"{out_dir} started with (the observation files changed); resume with the same inputs or start a new run")
