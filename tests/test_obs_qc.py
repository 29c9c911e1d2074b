"""Quality control (obs/qc.py): non-finite, out-of-bounds and repeated reports, with counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ensemble_da.obs.qc import QCCounts, quality_control


def frame() -> pd.DataFrame:
    t = np.datetime64("2020-01-01T00:00", "ns")
    return pd.DataFrame(
        dict(
            time=[t] * 7,
            lat=[10.0, 10.0, 20.0, 30.0, 40.0, 50.0, 10.0],
            lon=[5.0, 5.0 + 360.0, 5.0, 5.0, 5.0, np.nan, 5.0],  # row 1 repeats row 0 (lon +360)
            channel=["T850", "T850", "T850", "T850", "T850", "T850", "T500"],
            value=[250.0, 252.0, np.inf, 400.0, np.nan, 250.0, 240.0],
            sigma=[0.5, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5],
        )
    )


def test_counts_and_merge_policy():
    out, c = quality_control(frame(), "merge")
    assert (c.read, c.nonfinite, c.out_of_bounds, c.duplicate_dropped, c.kept) == (7, 3, 1, 1, 2)
    merged = out[out["channel"] == "T850"].iloc[0]
    assert merged["value"] == 251.0 and merged["sigma"] == 1.0  # mean value, largest sigma
    assert c.metrics()["qc/nonfinite"] == 3.0


@pytest.mark.parametrize("policy, values", [("first", [250.0, 240.0]), ("reject", [240.0])])
def test_first_and_reject_policies(policy, values):
    out, c = quality_control(frame(), policy)
    assert sorted(out["value"].tolist(), reverse=True) == values
    assert c.duplicate_dropped == (1 if policy == "first" else 2)


def test_same_place_other_channel_or_time_is_not_a_repeat():
    df = frame().iloc[[0, 6]].copy()
    out, c = quality_control(df, "reject")
    assert len(out) == 2 and c.duplicate_dropped == 0
    df = frame().iloc[[0, 1]].copy()
    df.loc[df.index[1], "time"] = np.datetime64("2020-01-01T01:00", "ns")
    assert len(quality_control(df, "reject")[0]) == 2


def test_counts_add_up_over_times():
    a = QCCounts(read=3, nonfinite=1, kept=2)
    assert (a + a).as_dict() == dict(read=6, other_variable=0, outside_domain=0, nonfinite=2, out_of_bounds=0,
                                    duplicate_dropped=0, not_selected=0, kept=4)
