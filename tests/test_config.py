import pytest

from ensemble_da.config import load_config
from ensemble_da.errors import InputError


def test_packaged_demo_loads_and_overrides_parse_yaml():
    cfg = load_config(None, ["guidance.method=regression", "sampler.steps=8", "observations.sigma={T850: 1.0}"])
    assert cfg.guidance.method == "regression" and cfg.sampler.steps == 8
    assert cfg.observations.sigma == {"T850": 1.0}


@pytest.mark.parametrize(
    "override, message",
    [
        ("guidance.methd=mmps", "unknown config key 'guidance.methd'"),
        ("guidance.method=magic", "guidance.method"),
        ("grid.nside=12", "grid.nside"),
        ("model.nugget=1.5", "model.nugget"),
        ("times=[not-a-time]", "times"),
        ("nosection", "key=value"),
    ],
)
def test_bad_keys_and_values_name_the_problem(override, message):
    with pytest.raises(InputError, match=message):
        load_config(None, [override])


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_set_errors_name_the_override_not_the_file():
    """A bad value given with --set is blamed on that --set, not on the config file."""
    with pytest.raises(InputError, match=r"^--set observations.sigma: bad value"):
        load_config(None, ["observations.sigma=null"])
    with pytest.raises(InputError, match=r"^--set guidance.bogus: unknown config key"):
        load_config(None, ["guidance.bogus=1"])


def test_unparsable_set_value_is_one_line_with_the_fix():
    with pytest.raises(InputError) as exc:
        load_config(None, ["observations.time_format=%m/%d/%Y %H:%M"])
    text = str(exc.value)
    assert "\n" not in text and "not valid YAML" in text and "quote" in text
    cfg = load_config(None, ['observations.time_format="%m/%d/%Y %H:%M"'])
    assert cfg.observations.time_format == "%m/%d/%Y %H:%M"
