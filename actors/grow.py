"""Growing a finished run's ensemble (`ensemble-da run --out DIR --resume --set ensemble.members=N`).

A member depends only on (seed, time, member) (DESIGN.md §3), so a finished M-member run grows to
N > M members by sampling members M..N-1 only: the store's member dimension is resized (the first
M members stay byte for byte as they are), the store is marked incomplete again, and the resume
then merges the members on disk with the new ones (`Aggregator.catch_up`) and recomputes every
statistic, score, figure, the report and summary.json for the whole ensemble. The grown ensemble
gets a new MLflow run (params cannot change in MLflow; one metric history per ensemble), tagged
`grown_from` the old one and keeping its name and sweep parent (`Tracker(grown_from=...)`).

Checked before anything is touched: N < M is refused; so is a time-aware mode (its members carry
states between times) and any other config change than `ensemble.members`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ensemble_da.config import RunConfig
from ensemble_da.errors import InputError
from ensemble_da.io import STORE_NAME

__all__ = ["stored_members", "check_grow", "grow_store"]


def stored_members(out_dir: Path) -> int | None:
    """Members of the complete run in `out_dir`, or None when there is no complete run there."""
    import zarr

    path = Path(out_dir) / STORE_NAME
    if not (path / "zarr.json").is_file() or not (Path(out_dir) / "config.yaml").is_file():
        return None
    group = zarr.open_group(str(path), mode="r")
    if not group.attrs.get("complete"):
        return None
    return int(group["analysis"].shape[1])


def check_grow(config: RunConfig, out_dir: Path) -> int | None:
    """With `--resume` on a complete run: the members it has when `config` asks for more (a grow),
    else None (an ordinary resume, whose checks follow). InputError for fewer members or a
    time-aware mode."""
    have = stored_members(out_dir)
    if have is None or config.ensemble.members == have:
        return None
    want = config.ensemble.members
    if want < have:
        raise InputError(f"--resume: ensemble.members={want} is fewer than the {have} members of the run in {out_dir}; "
                         "an ensemble can only grow (its outputs are left as they are)")
    if config.mode != "analysis":
        raise InputError(f"--resume: growing an ensemble needs mode: analysis (the run in {out_dir} has mode: "
                         f"{config.mode}, whose members carry states between times)")
    return have


def _drop_consolidated(store) -> None:
    """Back to an unfinished store's metadata: the root zarr.json without `consolidated_metadata`."""
    import json

    if store.path is None:
        raise InputError(f"--resume: growing an ensemble needs a store on a local file system, not {store.url}")
    root = store.path / "zarr.json"
    meta = json.loads(root.read_text())
    meta.pop("consolidated_metadata", None)
    tmp = root.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(root)


def grow_store(store, config: RunConfig, out_dir: Path):
    """Resize the complete store to `config.ensemble.members` and mark it incomplete; the new
    members are missing (member_done False), the old ones untouched. Returns the store reopened."""
    _drop_consolidated(store)  # a finished store's consolidated metadata would pin the old shapes
    store = type(store)(store.url)
    g = store.group
    nt, _, nc, npix = g["analysis"].shape
    n = config.ensemble.members
    g["analysis"].resize((nt, n, nc, npix))
    have = g["member_done"].shape[1]
    g["member_done"].resize((nt, n))
    g["member_done"][:, have:] = False
    g["member"].resize((n,))
    g["member"][...] = np.arange(n, dtype=np.int64)
    g.attrs.update({"complete": False, "config": config.to_yaml()})
    (Path(out_dir) / "config.yaml").write_text(config.to_yaml())
    return type(store)(store.url)
