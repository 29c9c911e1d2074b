"""Who may write a member block (actors.writer): the claim ledger's first-wins rule, abandoned
attempts, writer mode writing once, and a replica given a GPU without CUDA (no Ray needed)."""

from __future__ import annotations

import numpy as np
import pytest

from actors.replica import select_device
from actors.writer import DirectSink, StoreWriter
from ensemble_da.assimilation import WorkUnit
from ensemble_da.errors import InputError
from ensemble_da.io import RunStore, StoreLayout

UNIT = WorkUnit(0, (2, 3))


@pytest.fixture
def store(tmp_path):
    layout = StoreLayout(np.array(["2020-01-01"], dtype="datetime64[ns]"), 4, ("T850",), 1, 2)
    return RunStore.create(tmp_path / "analysis.zarr", layout, {})


def test_first_attempt_to_claim_writes_and_a_second_copy_does_not(store):
    ledger = StoreWriter(str(store.path))
    assert ledger.claim(UNIT, 7) and ledger.claim(UNIT, 7)  # Ray re-running the same attempt
    assert not ledger.claim(UNIT, 8)  # a straggler's second copy
    assert ledger.claim(WorkUnit(0, (0, 1)), 8)


def test_an_abandoned_attempt_frees_its_claim_and_may_not_write(store):
    ledger = StoreWriter(str(store.path))
    assert ledger.claim(UNIT, 1)
    ledger.abandon([1])
    assert not ledger.claim(UNIT, 1)
    assert ledger.claim(UNIT, 2) and not ledger.claim(UNIT, 3)


def test_writer_mode_writes_only_the_claim_holders_block(store):
    writer = StoreWriter(str(store.path))
    first = np.full((2, 1, 12), 1.0, np.float32)
    assert writer.write(UNIT, 1, first)
    assert not writer.write(UNIT, 2, np.full((2, 1, 12), 9.0, np.float32))
    np.testing.assert_array_equal(store.read_block(0, 2, 4), first)
    assert store.done().tolist() == [[False, False, True, True]]


def test_a_replica_writes_through_an_fsspec_url(store):
    sink = DirectSink(f"file://{store.path}", StoreWriter(str(store.path)))
    sink.check()
    block = np.arange(24, dtype=np.float32).reshape(2, 1, 12)
    assert sink.write(UNIT, 0, block)
    np.testing.assert_array_equal(RunStore(store.path).read_block(0, 2, 4), block)


def test_a_store_the_replica_cannot_see_is_one_clear_error(tmp_path):
    sink = DirectSink(str(tmp_path / "elsewhere.zarr"), None)
    with pytest.raises(InputError, match="cluster.store=writer"):
        sink.check()


def test_a_replica_given_a_gpu_without_cuda_fails_instead_of_using_the_cpu():
    with pytest.raises(InputError, match="sees no CUDA") as err:
        select_device("auto", 1, cuda_available=False)
    assert "\n" not in str(err.value)
    assert select_device("cpu", 1, cuda_available=False) == "cpu"
    assert select_device("auto", 0, cuda_available=False) == "cpu"
    assert select_device("auto", 0.5, cuda_available=True) == "cuda:0"


def test_named_actor_travels_as_its_name_only():
    """Replicas get the writer by name: what is pickled holds no Ray handle (a handle among an
    actor's constructor arguments makes Ray log an error line on every run), and private lookups
    (pickle's own) never reach Ray."""
    import pickle

    from actors.writer import NamedActor

    ref = NamedActor("ensemble-da-writer-x")
    ref._handle = object()  # as after a lookup in the driver
    again = pickle.loads(pickle.dumps(ref))
    assert again.name == "ensemble-da-writer-x" and again._handle is None
    with pytest.raises(AttributeError):
        again._anything
