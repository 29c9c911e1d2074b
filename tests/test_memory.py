"""The memory guard (`ensemble_da/memory.py`) every large allocation goes through: refused past
80 % of the memory the OS reports available, with one line naming the work and both sizes."""

from __future__ import annotations

import re

import psutil
import pytest

from ensemble_da.errors import InputError
from ensemble_da.memory import check_fits


class Custom(InputError):
    pass


def test_work_past_80_percent_of_available_memory_is_refused_with_both_sizes():
    have = psutil.virtual_memory().available
    check_fits(int(0.5 * have), "half of it")  # fits: returns quietly
    with pytest.raises(Custom) as info:
        check_fits(2 * have, "the thing", Custom)
    found = re.fullmatch(r"the thing needs ~(\d+\.\d) GiB; this machine has (\d+\.\d) GiB available", str(info.value))
    assert found is not None, str(info.value)
    # the available memory moves between the two reads: 20 % is far more than it does in a test
    assert float(found[1]) == pytest.approx(2 * have / 2**30, abs=0.06) and float(found[2]) == pytest.approx(have / 2**30, rel=0.2, abs=0.06)
