"""The run store `analysis.zarr` (DESIGN.md §7): zarr v3, written as a template once, then filled
by whole-chunk region writes, one member block (work unit) at a time, by a single writer.

Layout (dims `time`, `member`, `channel`, `cell`):

- `analysis(time, member, channel, cell)` float32, physical units, chunks
  (1, members_per_unit, channel, cells_per_chunk): one work unit is exactly one row of chunks,
  so two writers never share a chunk; the cell axis is split (in whole NEST sub-trees) so that a
  chunk stays about `CHUNK_BYTES` (8.8 MB per member at nside 64 × 45 channels would otherwise
  make 70 MB chunks). `write_block` refuses a block that is not a whole chunk row (xarray does
  not check this for numpy data, so we do).
- `member_done(time, member)` bool, chunks (1, members_per_unit): set after a unit's analysis is
  on disk; `--resume` re-runs exactly the pairs that are still False.
- `ensemble_mean`, `ensemble_spread` (std, ddof=1), and when known `truth`, `exact_mean`,
  `exact_spread` (time, channel, cell), chunks (1, channel, cells_per_chunk); with a background
  ensemble also `background_mean`, `background_spread` and `increment` (analysis − background mean).
- group `observations` (dim `obs`): time, lat, lon, channel, value, sigma, assimilated, hx_mean,
  hx_spread (and hb_mean, hb_spread: the background at the obs, with a background ensemble).
- root attrs `nside`, `guidance`, `seed`, `ensemble_da_version`, `config` (YAML), `complete`.

Strings (`channel` in the root and in `observations`) are fixed-width unicode (numpy `<U`, zarr
v3 `fixed_length_utf32`): every reader gets ordinary `str` arrays back, where variable-length
strings come back as numpy StringDType that older numpy/xarray code and exports cannot handle.

`complete` is False until `finalize`, which sets it and only then consolidates the metadata, so
an interrupted run never looks complete (`open_run` refuses it unless asked not to).

The store is opened by path or by URL (`file://…`, `s3://…`: zarr through fsspec), so model
replicas on other nodes can write their own blocks into a shared store.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from ensemble_da.errors import InputError
from ensemble_da.grid import HealpixGrid

__all__ = ["STORE_NAME", "CHUNK_BYTES", "StoreLayout", "RunStore", "unit_blocks", "cells_per_chunk", "open_run",
           "open_observations",
           "is_complete"]

STORE_NAME = "analysis.zarr"
CHUNK_BYTES = 8 * 2**20
FIELD_DIMS = ("time", "channel", "cell")
_STAT_VARS = ("ensemble_mean", "ensemble_spread")
# zarr-python < 3.2 warns that fixed_length_utf32 has no spec; it has one now (zarr-extensions
# data-types/fixed_length_utf32) and later zarr-python no longer warns. Nothing for our users.
warnings.filterwarnings("ignore", message=r"The data type \(FixedLengthUTF32")


def fixed_width_strings(values: Sequence[Any]) -> np.ndarray:
    """`values` as a fixed-width unicode array (numpy `<U`, as wide as the longest), (n,)."""
    return np.asarray([str(v) for v in values], dtype=str)

def unit_blocks(members: int, members_per_unit: int) -> list[tuple[int, int]]:
    """Member ranges [lo, hi) of the work units of one analysis time: the chunk grid of `member`."""
    if members_per_unit < 1:
        raise InputError(f"cluster.members_per_unit must be >= 1, got {members_per_unit}")
    return [(lo, min(lo + members_per_unit, members)) for lo in range(0, members, members_per_unit)]


def cells_per_chunk(npix: int, members_per_unit: int, channels: int, target_bytes: int = CHUNK_BYTES) -> int:
    """Cells per chunk of `analysis`: npix / (12 · 4^k) for the smallest k ≥ 0 whose float32 chunk
    (members_per_unit, channels, cells) fits `target_bytes` (whole NEST base pixels below that:
    npix itself when the whole field fits)."""
    cells = npix
    while cells > 1 and members_per_unit * channels * cells * 4 > target_bytes:
        cells = cells // 12 if cells == npix else cells // 4
    return max(1, cells)


@dataclass(frozen=True)
class StoreLayout:
    """Shape of a run store: analysis times (datetime64[ns]), member count, channels, grid, chunking."""

    times: np.ndarray
    members: int
    channels: tuple[str, ...]
    nside: int
    members_per_unit: int
    cells_per_chunk: int = 0  # 0: chosen by `cells_per_chunk()`

    def __post_init__(self):
        if not self.cells_per_chunk:
            object.__setattr__(self, "cells_per_chunk",
                               cells_per_chunk(self.npix, self.members_per_unit, len(self.channels)))

    @property
    def npix(self) -> int:
        return HealpixGrid(self.nside).npix

    def cell_chunks(self) -> list[slice]:
        """The cell slices of the chunk grid."""
        step = self.cells_per_chunk
        return [slice(lo, min(lo + step, self.npix)) for lo in range(0, self.npix, step)]

    @property
    def field_shape(self) -> tuple[int, int, int]:
        return (len(self.times), len(self.channels), self.npix)

    def blocks(self) -> list[tuple[int, int]]:
        return unit_blocks(self.members, self.members_per_unit)


def _observations_dataset(obs: xr.Dataset) -> xr.Dataset:
    """`ObservationSet.to_dataset()` with fixed-width strings (see the module docstring)."""
    obs = obs.copy()
    for name in ("channel", "set"):
        if name in obs:
            obs[name] = ("obs", fixed_width_strings(obs[name].values), obs[name].attrs)
    return obs


# Member fields besides `analysis` a store may hold, and their long names.
MEMBER_FIELDS = {"carried_state": "state carried to the next cycle's window (its oldest slot)"}


class RunStore:
    """A run's `analysis.zarr`, opened for writing by the one process that writes it.

    Parameters
    ----------
    path : path-like or str
        The store directory (`DIR/analysis.zarr`) or its URL (`file:///…/analysis.zarr`,
        `s3://…`: opened with zarr through fsspec).
    """

    def __init__(self, path: str | Path):
        self.url = str(path)
        self.path = Path(path) if "://" not in self.url else None
        if self.path is not None and not (self.path / "zarr.json").is_file():
            raise InputError(f"{self.path}: not a run store (no zarr.json)")
        # fsspec's local filesystem does not create a chunk's directories unless asked to.
        options = {"storage_options": {"auto_mkdir": True}} if self.url.startswith("file://") else {}
        try:
            self.group = zarr.open_group(self.url, mode="r+", zarr_format=3, **options)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            raise InputError(f"{self.url}: not a run store (no zarr.json)") from None
        a = self.group["analysis"]
        self.layout = StoreLayout(
            times=xr.open_zarr(self.url, consolidated=False)["time"].values,
            members=int(a.shape[1]),
            channels=tuple(str(c) for c in self.group["channel"][:]),
            nside=int(self.group.attrs["nside"]),
            members_per_unit=int(a.chunks[1]),
            cells_per_chunk=int(a.chunks[3]),
        )

    # --- creation -----------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        layout: StoreLayout,
        attrs: dict[str, Any],
        *,
        truth: np.ndarray | None = None,
        exact_mean: np.ndarray | None = None,
        exact_spread: np.ndarray | None = None,
        observations: xr.Dataset | None = None,
        member_fields: Sequence[str] = (),
    ) -> "RunStore":
        """Write the template: coords, attrs, empty (NaN) analysis and statistics, and the fields
        known before sampling (truth, exact posterior: float (time, channel, cell)), observations.
        `member_fields`: more (time, member, channel, cell) variables chunked like `analysis`
        (e.g. `carried_state`, the state a cycled member carries to its next window).

        Fails if `path` exists.
        """
        path = Path(path)
        grid = HealpixGrid(layout.nside)
        nt, nc, npix = layout.field_shape
        mpu = layout.members_per_unit
        coords = {
            "time": ("time", np.asarray(layout.times, dtype="datetime64[ns]")),
            "member": ("member", np.arange(layout.members, dtype=np.int64)),
            "channel": ("channel", fixed_width_strings(layout.channels)),
            "cell_ids": (
                "cell",
                grid.cell_ids,
                {"grid_name": "healpix", "level": grid.level, "indexing_scheme": "nested"},
            ),
        }
        cpc = layout.cells_per_chunk
        field_chunks = (1, nc, cpc)
        data = {
            "analysis": (
                ("time", "member", "channel", "cell"),
                da.full((nt, layout.members, nc, npix), np.nan, dtype=np.float32, chunks=(1, mpu, nc, cpc)),
                {"units": "physical (see channel)", "long_name": "posterior ensemble members"},
            ),
            **{name: (
                ("time", "member", "channel", "cell"),
                da.full((nt, layout.members, nc, npix), np.nan, dtype=np.float32, chunks=(1, mpu, nc, cpc)),
                {"units": "physical (see channel)", "long_name": MEMBER_FIELDS.get(name, name)},
            ) for name in member_fields},
            "member_done": (
                ("time", "member"),
                da.zeros((nt, layout.members), dtype=bool, chunks=(1, mpu)),
                {"long_name": "member written (resume bookkeeping)"},
            ),
        }
        for name, long_name in (("ensemble_mean", "ensemble mean"), ("ensemble_spread", "ensemble std (ddof=1)")):
            data[name] = (FIELD_DIMS, da.full((nt, nc, npix), np.nan, dtype=np.float32, chunks=field_chunks),
                          {"long_name": long_name})
        for name, arr in (("truth", truth), ("exact_mean", exact_mean), ("exact_spread", exact_spread)):
            if arr is not None:
                arr = np.asarray(arr, dtype=np.float32)
                if arr.shape != (nt, nc, npix):
                    raise ValueError(f"{name} has shape {arr.shape}, expected {(nt, nc, npix)}")
                data[name] = (FIELD_DIMS, da.from_array(arr, chunks=field_chunks))
        ds = xr.Dataset(data, coords=coords, attrs={**attrs, "nside": layout.nside, "complete": False})
        encoding: dict[str, dict] = {name: {"chunks": ds[name].data.chunksize} for name in data}
        for name in data:
            if ds[name].dtype == np.float32:
                encoding[name]["fill_value"] = np.float32(np.nan)
        ds.to_zarr(str(path), mode="w-", compute=False, zarr_format=3, consolidated=False, encoding=encoding)
        # compute=False leaves dask-backed variables unwritten; the known fields are written now.
        group = zarr.open_group(str(path), mode="r+", zarr_format=3)
        for name, arr in (("truth", truth), ("exact_mean", exact_mean), ("exact_spread", exact_spread)):
            if arr is not None:
                group[name][...] = np.asarray(arr, dtype=np.float32)
        store = cls(path)
        if observations is not None:
            store.write_observations(observations)
        return store

    # --- member blocks --------------------------------------------------------------------
    def _check_block(self, lo: int, hi: int) -> None:
        mpu, m = self.layout.members_per_unit, self.layout.members
        if lo % mpu or not (hi == min(lo + mpu, m)):
            raise ValueError(
                f"member block [{lo}, {hi}) is not one whole chunk of {mpu} members (of {m}); "
                "refusing a write that could share a chunk with another block"
            )

    def _members(self, members: Sequence[int]) -> tuple[int, int]:
        lo, hi = int(members[0]), int(members[-1]) + 1
        if list(members) != list(range(lo, hi)):
            raise ValueError(f"members of a block must be contiguous, got {list(members)}")
        self._check_block(lo, hi)
        return lo, hi

    def write_block(self, t_index: int, members: Sequence[int], analysis: np.ndarray,
                    extra: dict[str, np.ndarray] | None = None) -> None:
        """Write one work unit: members (contiguous, one whole chunk), analysis float32
        (member, channel, cell) in physical units, and `extra` member fields of the same shape
        (created with the store); then mark the pairs done."""
        lo, hi = self._members(members)
        expected = (hi - lo, len(self.layout.channels), self.layout.npix)
        for name, arr in {"analysis": analysis, **(extra or {})}.items():
            if arr.shape != expected:
                raise ValueError(f"{name} block has shape {arr.shape}, expected {expected}")
            self.group[name][t_index, lo:hi] = np.asarray(arr, dtype=np.float32)
        self.group["member_done"][t_index, lo:hi] = True

    def write_trajectories(self, members: Sequence[int], trajectories: np.ndarray) -> None:
        """Write one reanalysis unit: float32 (member, time, channel, cell) for every time; then
        mark the pairs of every time done."""
        lo, hi = self._members(members)
        expected = (hi - lo, *self.layout.field_shape)
        if trajectories.shape != expected:
            raise ValueError(f"trajectory block has shape {trajectories.shape}, expected {expected}")
        self.group["analysis"][:, lo:hi] = np.swapaxes(np.asarray(trajectories, dtype=np.float32), 0, 1)
        self.group["member_done"][:, lo:hi] = True

    def read_block(self, t_index: int, lo: int, hi: int, name: str = "analysis") -> np.ndarray:
        """Members [lo, hi) of time `t_index` of member field `name`, float32 (member, channel, cell)."""
        return np.asarray(self.group[name][t_index, lo:hi])

    def read_cells(self, t_index: int, cells: slice) -> np.ndarray:
        """All members at a slice of cells, float32 (member, channel, cell) — for scores that need
        the whole ensemble per cell (fair CRPS, ranks) without holding the whole field."""
        return np.asarray(self.group["analysis"][t_index, :, :, cells])

    def done(self) -> np.ndarray:
        """bool (time, member): which pairs are on disk."""
        return np.asarray(self.group["member_done"][...])

    # --- statistics and the end -------------------------------------------------------------
    def write_time_stats(self, t_index: int, mean: np.ndarray, spread: np.ndarray) -> None:
        """Ensemble mean and spread of one time, each (channel, cell), physical units."""
        self.group["ensemble_mean"][t_index] = np.asarray(mean, dtype=np.float32)
        self.group["ensemble_spread"][t_index] = np.asarray(spread, dtype=np.float32)

    def write_fields(self, fields: dict[str, np.ndarray], attrs: dict[str, dict] | None = None) -> None:
        """Add (or replace) float32 variables (time, channel, cell), e.g. the background mean and
        the increment of a run with a background ensemble; chunks (1, channel, cells_per_chunk)."""
        shape = self.layout.field_shape
        data = {}
        for name, arr in fields.items():
            arr = np.asarray(arr, dtype=np.float32)
            if arr.shape != shape:
                raise ValueError(f"{name} has shape {arr.shape}, expected {shape}")
            data[name] = (FIELD_DIMS, arr, (attrs or {}).get(name, {}))
        encoding = {name: {"chunks": (1, shape[1], self.layout.cells_per_chunk)} for name in data}
        xr.Dataset(data).to_zarr(self.url, mode="a", zarr_format=3, consolidated=False, encoding=encoding)

    def add_time_fields(self, names: Sequence[str], attrs: dict[str, dict] | None = None) -> None:
        """Create float32 (time, channel, cell) variables, NaN until written time by time
        (`write_time_fields`), chunked like the statistics; those that exist are left as they are
        (a resumed run). Nothing the size of all times is allocated."""
        nt, nc, npix = self.layout.field_shape
        for name in names:
            if name in self.group:
                continue
            self.group.create_array(name, shape=(nt, nc, npix), chunks=(1, nc, self.layout.cells_per_chunk),
                                    dtype="float32", fill_value=np.float32(np.nan), dimension_names=FIELD_DIMS,
                                    attributes=(attrs or {}).get(name, {}))

    def write_time_fields(self, t_index: int, fields: dict[str, np.ndarray]) -> None:
        """Time `t_index` of variables made by `add_time_fields`, each (channel, cell)."""
        shape = self.layout.field_shape[1:]
        for name, arr in fields.items():
            arr = np.asarray(arr, dtype=np.float32)
            if arr.shape != shape:
                raise ValueError(f"{name} at time {t_index} has shape {arr.shape}, expected {shape}")
            self.group[name][t_index] = arr

    def write_observations(self, observations: xr.Dataset) -> None:
        """(Re)write the `observations` group (dim `obs`)."""
        _observations_dataset(observations).to_zarr(
            self.url, group="observations", mode="w", zarr_format=3, consolidated=False
        )

    def finalize(self, attrs: dict[str, Any] | None = None) -> None:
        """Mark the store complete and consolidate its metadata; refuses if members are missing."""
        missing = int((~self.done()).sum())
        if missing:
            raise RuntimeError(f"{self.url}: {missing} (time, member) pairs are missing; not finalizing")
        self.group.attrs.update({**(attrs or {}), "complete": True})
        with warnings.catch_warnings():
            # Consolidated metadata is how xarray opens a finished store quickly; zarr warns that
            # it is not (yet) in the v3 spec, which says nothing to our users.
            warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
            zarr.consolidate_metadata(self.url, zarr_format=3)


def is_complete(path: str | Path) -> bool:
    """True when the store at `path` was finalized (every member written, statistics written)."""
    try:
        return bool(zarr.open_group(str(path), mode="r", zarr_format=3).attrs.get("complete", False))
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return False


# The groups of a run store besides its root (DESIGN.md §7).
RUN_GROUPS = ("observations",)


def open_run(path: str | Path, *, group: str | None = None, allow_incomplete: bool = False) -> xr.Dataset:
    """Open a run store with xarray; InputError if it is incomplete.

    `path`: the run directory or its `analysis.zarr`. `group="observations"` opens the store's
    observations (dim `obs`: time, lat, lon, channel, value, sigma, assimilated, hx_mean, hx_spread,
    and hb_mean, hb_spread with a background), as `open_observations(path)` does. InputError for
    any other group.
    """
    path = Path(path)
    if path.is_dir() and (path / STORE_NAME).is_dir():
        path = path / STORE_NAME
    if not (path / "zarr.json").is_file():
        raise InputError(f"{path}: no run store here")
    complete = is_complete(path)
    if not complete and not allow_incomplete:
        raise InputError(f"{path}: the run is incomplete (interrupted?); resume it with --resume")
    if group is not None and group not in RUN_GROUPS:
        raise InputError(f"{path}: no group {group!r} in a run store (groups: {', '.join(RUN_GROUPS)}; "
                         "group=None opens the run's fields)")
    if group is not None and not (path / group / "zarr.json").is_file():
        raise InputError(f"{path}: this run store has no {group!r} group (written when the run finishes)")
    return _plain_strings(xr.open_zarr(str(path), group=group, consolidated=complete))


def open_observations(path: str | Path, *, allow_incomplete: bool = False) -> xr.Dataset:
    """The `observations` group of a run store (DESIGN.md §7): `open_run(path, group="observations")`."""
    return open_run(path, group="observations", allow_incomplete=allow_incomplete)


def _plain_strings(ds: xr.Dataset) -> xr.Dataset:
    """Stores written before strings were fixed-width hold variable-length strings, which come
    back as numpy StringDType that much numpy code cannot cast; give them back as `str` arrays."""
    for name, var in ds.variables.items():
        if var.dtype.kind == "T":
            values = np.asarray(var.values.astype(object), dtype=str)
            if name in ds.coords:
                ds = ds.assign_coords({name: (var.dims, values, var.attrs)})
            else:
                ds[name] = (var.dims, values, var.attrs)
    return ds
