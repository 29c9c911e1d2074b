"""The run store layout of DESIGN.md §7 (ensemble_da/io.py): template, chunk-aligned block writes,
resume bookkeeping, and that an unfinished store never looks complete."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from ensemble_da.errors import InputError
from ensemble_da.io import RunStore, StoreLayout, is_complete, open_run, unit_blocks
from ensemble_da.obs.observation_set import ObservationSet

CHANNELS = ("T850", "T500", "T300")
NSIDE = 2  # 48 cells


def _layout(members=5, mpu=2):
    times = np.array(["2020-01-01T00", "2020-01-01T06"], dtype="datetime64[ns]")
    return StoreLayout(times, members, CHANNELS, NSIDE, mpu)


def _obs():
    return ObservationSet(
        time=np.array(["2020-01-01T00"] * 3 + ["2020-01-01T06"] * 2, dtype="datetime64[ns]"),
        lat=np.array([0.0, 10.0, -20.0, 45.0, 60.0]),
        lon=np.array([0.0, 90.0, 180.0, 270.0, 359.0]),
        channel=np.array(["T850", "T500", "T300", "T850", "T500"]),
        value=np.array([270.0, 250.0, 230.0, 280.0, 255.0]),
        sigma=np.full(5, 0.5),
        assimilated=np.array([True, True, False, True, False]),
    )


def _create(tmp_path, **kw):
    layout = _layout(**kw)
    truth = np.random.default_rng(0).normal(size=layout.field_shape).astype(np.float32)
    attrs = {"guidance": "mmps", "seed": 3, "ensemble_da_version": "0.1.0", "config": "seed: 3\n"}
    obs = _obs().to_dataset()
    return RunStore.create(tmp_path / "analysis.zarr", layout, attrs, truth=truth, observations=obs), truth


def _fill(store):
    rng = np.random.default_rng(1)
    for t in range(len(store.layout.times)):
        for lo, hi in store.layout.blocks():
            store.write_block(t, range(lo, hi), rng.normal(size=(hi - lo, 3, 48)).astype(np.float32))


def test_unit_blocks_tile_the_members():
    assert unit_blocks(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert unit_blocks(4, 4) == [(0, 4)]
    with pytest.raises(InputError):
        unit_blocks(4, 0)


def test_template_layout(tmp_path):
    store, truth = _create(tmp_path)
    ds = open_run(tmp_path / "analysis.zarr", allow_incomplete=True)
    assert ds.analysis.dims == ("time", "member", "channel", "cell")
    assert ds.analysis.dtype == np.float32 and ds.analysis.shape == (2, 5, 3, 48)
    assert ds.ensemble_mean.dims == ds.ensemble_spread.dims == ("time", "channel", "cell")
    assert ds.time.dtype.kind == "M" and list(ds.member.values) == [0, 1, 2, 3, 4]
    assert [str(c) for c in ds.channel.values] == list(CHANNELS)
    assert ds.cell_ids.dims == ("cell",) and list(ds.cell_ids.values) == list(range(48))
    assert ds.cell_ids.attrs == {"grid_name": "healpix", "level": 1, "indexing_scheme": "nested"}
    assert ds.attrs["nside"] == NSIDE and ds.attrs["seed"] == 3 and ds.attrs["guidance"] == "mmps"
    assert ds.attrs["complete"] is False
    # One chunk per work unit: members_per_unit along `member`, whole fields otherwise.
    assert store.group["analysis"].chunks == (1, 2, 3, 48)
    assert store.group["ensemble_mean"].chunks == (1, 3, 48)
    np.testing.assert_array_equal(ds.truth.values, truth)
    assert np.isnan(ds.analysis.values).all()
    assert not store.done().any()
    obs = open_run(tmp_path / "analysis.zarr", group="observations", allow_incomplete=True)
    back = ObservationSet.from_dataset(obs.compute())
    np.testing.assert_array_equal(back.value, _obs().value)
    np.testing.assert_array_equal(back.assimilated, _obs().assimilated)
    assert list(back.channel) == list(_obs().channel)


def test_existing_store_is_not_overwritten(tmp_path):
    _create(tmp_path)
    with pytest.raises(Exception):
        _create(tmp_path)


def test_block_writes_must_be_whole_chunks(tmp_path):
    store, _ = _create(tmp_path)
    block = np.zeros((2, 3, 48), np.float32)
    with pytest.raises(ValueError, match="whole chunk"):
        store.write_block(0, [1, 2], block)  # straddles two chunks
    with pytest.raises(ValueError, match="whole chunk"):
        store.write_block(0, [0], block[:1])  # part of a chunk
    with pytest.raises(ValueError, match="contiguous"):
        store.write_block(0, [0, 2], block)
    with pytest.raises(ValueError, match="shape"):
        store.write_block(0, [0, 1], np.zeros((2, 3, 47), np.float32))
    store.write_block(1, [4], np.ones((1, 3, 48), np.float32))  # the short last chunk
    assert not store.done().any() or store.done()[1, 4]
    assert store.done().sum() == 1


def test_blocks_round_trip_and_done_mask(tmp_path):
    store, _ = _create(tmp_path)
    block = np.arange(2 * 3 * 48, dtype=np.float32).reshape(2, 3, 48)
    store.write_block(1, (2, 3), block)
    np.testing.assert_array_equal(store.read_block(1, 2, 4), block)
    np.testing.assert_array_equal(store.read_cells(1, slice(5, 9))[2:4], block[:, :, 5:9])
    done = RunStore(tmp_path / "analysis.zarr").done()  # as a resumed run sees it
    assert done.tolist() == [[False] * 5, [False, False, True, True, False]]


def test_incomplete_store_never_looks_complete(tmp_path):
    store, _ = _create(tmp_path)
    _fill(store)
    store.done()  # all written, but not finalized yet
    assert not is_complete(tmp_path / "analysis.zarr")
    with pytest.raises(InputError, match="incomplete"):
        open_run(tmp_path)
    store.group["member_done"][0, 0:2] = False  # a unit missing
    with pytest.raises(RuntimeError, match="missing"):
        store.finalize()
    assert not is_complete(tmp_path / "analysis.zarr")


def test_finalize_consolidates_and_marks_complete(tmp_path):
    store, _ = _create(tmp_path)
    _fill(store)
    for t in range(2):
        store.write_time_stats(t, np.zeros((3, 48)), np.ones((3, 48)))
    store.finalize({"members_done": 10})
    assert is_complete(tmp_path / "analysis.zarr")
    assert (tmp_path / "analysis.zarr" / "zarr.json").read_text().count("consolidated_metadata") >= 1
    ds = xr.open_zarr(tmp_path / "analysis.zarr", consolidated=True)
    assert ds.attrs["complete"] is True and ds.attrs["members_done"] == 10
    assert np.isfinite(ds.analysis.values).all()
    np.testing.assert_array_equal(ds.ensemble_spread.values, 1.0)
    assert open_run(tmp_path).sizes["member"] == 5


def test_the_cell_axis_is_chunked_so_a_chunk_stays_a_few_megabytes(tmp_path):
    from ensemble_da.io import CHUNK_BYTES, RunStore, StoreLayout, cells_per_chunk

    # nside 64 x 45 channels, 8 members per unit: 70 MB per unit, split into whole NEST sub-trees.
    cells = cells_per_chunk(12 * 64**2, 8, 45)
    assert 8 * 45 * cells * 4 <= CHUNK_BYTES and (12 * 64**2) % cells == 0 and cells >= 1024
    assert cells_per_chunk(192, 2, 3) == 192  # small fields stay one chunk
    layout = StoreLayout(np.array(["2020-01-01"], dtype="datetime64[ns]"), 4, ("T850", "T500"), 4, 2,
                         cells_per_chunk=48)
    store = RunStore.create(tmp_path / "a.zarr", layout, {})
    block = np.random.default_rng(0).normal(size=(2, 2, 192)).astype(np.float32)
    store.write_block(0, [2, 3], block)
    reopened = RunStore(tmp_path / "a.zarr")
    assert reopened.group["analysis"].chunks == (1, 2, 2, 48) and reopened.layout.cells_per_chunk == 48
    np.testing.assert_array_equal(reopened.read_block(0, 2, 4), block)
    np.testing.assert_array_equal(reopened.read_cells(0, slice(40, 100))[2:], block[:, :, 40:100])


def test_strings_are_fixed_width_for_every_reader(tmp_path):
    """Channel names read back as plain `<U` arrays with xarray and with zarr alone (no numpy
    StringDType, which older numpy/xarray code and exports cannot handle), and equal what was written."""
    import zarr

    store, _ = _create(tmp_path)
    _fill(store)
    store.finalize({})
    path = tmp_path / "analysis.zarr"
    root, obs = xr.open_zarr(path), xr.open_zarr(path, group="observations")
    raw_root, raw_obs = zarr.open_group(str(path), mode="r")["channel"][:], zarr.open_group(str(path / "observations"), mode="r")["channel"][:]
    for got, want in ((root["channel"].values, CHANNELS), (raw_root, CHANNELS),
                      (obs["channel"].values, _obs().channel), (raw_obs, _obs().channel)):
        assert got.dtype.kind == "U", got.dtype
        assert list(got) == list(want)


def test_open_run_names_an_unknown_or_missing_group(tmp_path):
    store, _ = _create(tmp_path)
    _fill(store)
    store.finalize({"members_done": 10})
    with pytest.raises(InputError, match="no group 'nope' in a run store \\(groups: observations"):
        open_run(tmp_path, group="nope")
    assert open_run(tmp_path, group="observations").sizes["obs"] > 0
    bare = RunStore.create(tmp_path / "bare" / "analysis.zarr", _layout(), {"config": ""})
    _fill(bare)
    bare.finalize({})
    with pytest.raises(InputError, match="has no 'observations' group"):
        open_run(tmp_path / "bare", group="observations")
