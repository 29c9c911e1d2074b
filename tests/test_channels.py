import numpy as np
import pytest

from ensemble_da.channels import Normalization, channel_info
from ensemble_da.errors import InputError


def test_channel_names_parse_like_cbottle():
    assert channel_info("T850").level == 850 and channel_info("T850").units == "K"
    assert channel_info("Z500").units == "m2 s-2"
    assert channel_info("tas").level is None
    with pytest.raises(InputError, match="unknown channel 'X850'"):
        channel_info("X850")


def test_normalisation_round_trip_and_index():
    norm = Normalization(("T850", "Z500"), [275.0, 55000.0], [6.0, 3000.0])
    x = np.random.default_rng(0).normal(size=(4, 2, 10)) * 5 + 270
    np.testing.assert_allclose(norm.denormalize(norm.normalize(x)), x)
    assert norm.index(["Z500"]).tolist() == [1]
    with pytest.raises(InputError, match="not a channel of the prior"):
        norm.index(["U500"])
    with pytest.raises(InputError, match="scale"):
        Normalization(("T850",), [1.0], [0.0])
