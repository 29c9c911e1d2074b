"""Opening gridded observation files by what they contain, not by their name (the "backend" step
before the ERA5 layout normalisation in `era5.py`, as xarray keeps backends apart from its data model).

A path is one of:
- a zarr store (a directory with zarr metadata, `*.zarr`, or a remote URL not named `.nc`);
- NetCDF 3 or 4 (first bytes `CDF\\x01`/`CDF\\x02`/`CDF\\x05` or the HDF5 signature `\\x89HDF`);
- GRIB 1 or 2 (first bytes `GRIB`, what the CDS sends by default, often saved as `.nc`), read with
  cfgrib/ecCodes (the optional extra `ensemble-da[grib]`); a file with several kinds of fields
  (levels, step types) gives one dataset per kind (`cfgrib.open_datasets`);
- a zip archive (first bytes `PK\\x03\\x04`, what the new CDS sends for several NetCDF files, e.g.
  instant and accumulated variables, also when named `.nc`): each member is opened by its content.

`open_datasets(path, stack)` returns `(name, dataset)` pairs, `name` being the path or
`archive.zip:member.nc`; everything it opens or extracts is released when `stack` closes.
Unreadable input raises InputError naming the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3  # noqa: F401 - see below
import tempfile
import warnings
import zipfile
from typing import Literal

import xarray as xr

from ensemble_da.errors import InputError

__all__ = ["FileKind", "file_kind", "open_datasets", "GRIB_EXTRA_HINT"]

# The ecCodes wheels bundle an old SQLite (3.26) and load it with global symbols: Python's sqlite3,
# when first imported after a GRIB file was read, would bind to it and MLflow's SQLite store then
# refuses to start (it needs >= 3.31). Importing sqlite3 above, before ecCodes can load, keeps
# Python on the system SQLite.

FileKind = Literal["zarr", "netcdf", "grib", "zip"]
GRIB_EXTRA_HINT = "pip install 'ensemble-da[grib]'"
_NETCDF_MAGIC = (b"CDF\x01", b"CDF\x02", b"CDF\x05", b"\x89HDF")


def _is_zarr(path: str) -> bool:
    p = path.rstrip("/")
    if "://" in p:  # remote stores (e.g. gs://.../ARCO-ERA5 ...zarr-v3) are zarr unless named .nc
        return not p.lower().endswith((".nc", ".nc4", ".netcdf"))
    return p.endswith(".zarr") or (os.path.isdir(p) and any(
        os.path.exists(os.path.join(p, m)) for m in ("zarr.json", ".zgroup", ".zmetadata", ".zattrs")
    ))


def file_kind(path: str) -> FileKind:
    """What `path` holds, from its first bytes (zarr: from the directory layout).

    Unknown content is taken as NetCDF, so the NetCDF library names what is wrong with it.
    """
    if _is_zarr(path):
        return "zarr"
    if os.path.isdir(path):
        raise InputError(f"{path}: a directory that is not a zarr store")
    if "://" in path:
        return "netcdf"
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"GRIB"):
        return "grib"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    return "netcdf"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _open_xarray(path: str, name: str, engine: str) -> xr.Dataset:
    try:
        with warnings.catch_warnings():
            # ARCO stores are consolidated, ours may not be: either way is fine here.
            warnings.filterwarnings("ignore", message=".*consolidated metadata.*", category=RuntimeWarning)
            return xr.open_dataset(path, engine=engine, decode_timedelta=False)
    except Exception as exc:  # noqa: BLE001 - any backend failure is a bad input file
        kind = "a zarr store" if engine == "zarr" else "NetCDF"
        raise InputError(f"{name}: cannot read as {kind}: {_first_line(exc).replace(path, name)}") from None


def _open_grib(path: str, name: str) -> list[xr.Dataset]:
    try:
        import cfgrib
    except Exception as exc:  # noqa: BLE001 - missing package or missing ecCodes library
        raise InputError(
            f"{name}: is a GRIB file; reading GRIB needs cfgrib and ecCodes ({_first_line(exc)}): {GRIB_EXTRA_HINT}"
        ) from None
    quiet = logging.getLogger("cfgrib")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # cfgrib logs a traceback per corrupted message; we raise one line
    try:
        # indexpath "": no `.idx` files written beside the user's data.
        datasets = cfgrib.open_datasets(path, backend_kwargs={"indexpath": ""})
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad input file
        raise InputError(f"{name}: cannot read as GRIB: {_first_line(exc).replace(path, name)}") from None
    finally:
        quiet.setLevel(level)
    if not datasets:
        raise InputError(f"{name}: a GRIB file without any field cfgrib can read")
    return list(datasets)


def _open_zip(path: str, stack: contextlib.ExitStack) -> list[tuple[str, xr.Dataset]]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path}: cannot read as a zip archive: {_first_line(exc)}") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if not members:
            raise InputError(f"{path}: an empty zip archive")
        tmp = tempfile.mkdtemp(prefix="ensemble_da_zip_")
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        out = []
        for k, member in enumerate(members):
            name = f"{path}:{member.filename}"
            target = os.path.join(tmp, f"{k}_{os.path.basename(member.filename)}")
            with archive.open(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            kind = file_kind(target)
            if kind == "zip":
                raise InputError(f"{name}: a zip archive inside a zip archive is not read; unpack it first")
            out.extend(_open_one(target, name, kind, stack))
    return out


def _open_one(path: str, name: str, kind: FileKind, stack: contextlib.ExitStack) -> list[tuple[str, xr.Dataset]]:
    if kind == "grib":
        datasets = _open_grib(path, name)
    else:
        datasets = [_open_xarray(path, name, "zarr" if kind == "zarr" else "netcdf4")]
    for ds in datasets:
        stack.callback(ds.close)
    return [(name, ds) for ds in datasets]


def open_datasets(path: str, stack: contextlib.ExitStack) -> list[tuple[str, xr.Dataset]]:
    """Open `path` lazily by its content: one (name, dataset) per NetCDF/zarr file, GRIB field
    kind or zip member. Closing `stack` closes the datasets and removes extracted members.

    Raises InputError for a file that is none of the kinds above or cannot be read, and for
    GRIB when cfgrib/ecCodes are not installed (naming the extra to install).
    """
    kind = file_kind(path)
    if kind == "zip":
        return _open_zip(path, stack)
    return _open_one(path, path, kind, stack)
