import numpy as np
import pytest

from ensemble_da.errors import InputError
from ensemble_da.obs.observation_set import ObservationSet


def make(**kw):
    base = dict(time=np.datetime64("2020-01-01T00"), lat=[10.0, 20.0], lon=[0.0, -10.0], channel=["T850", "T500"],
                value=[270.0, 250.0], sigma=[0.5, 0.5])
    base.update(kw)
    return ObservationSet(**base)


def test_valid_set_normalises_fields():
    obs = make()
    assert len(obs) == 2 and obs.assimilated.all()
    assert obs.lon.tolist() == [0.0, 350.0]
    assert obs.channels == ["T850", "T500"]
    back = ObservationSet.from_dataset(obs.to_dataset())
    np.testing.assert_array_equal(back.value, obs.value)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(value=[np.nan, 1.0]), "not finite"),
        (dict(lat=[91.0, 0.0]), r"latitude 91 is outside \[-90, 90\]"),
        (dict(sigma=[0.0, 0.5]), "sigma must be > 0"),
        (dict(channel=["T850", "X1"]), "unknown channel 'X1'"),
        (dict(lat=[], lon=[], channel=[], value=[], sigma=[]), "empty"),
        (dict(value=[1.0, 2.0, 3.0]), "shape"),
    ],
)
def test_bad_inputs_raise_one_clear_error(kw, message):
    with pytest.raises(InputError, match=message):
        make(**kw)


def test_heldout_split_keeps_one_assimilated(rng):
    obs = make().with_heldout(0.9, rng)
    assert obs.assimilated.sum() == 1
    assert len(obs.assimilated_only()) == 1 and len(obs.heldout()) == 1
