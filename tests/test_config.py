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


def test_gaussian_keys_a_user_set_for_another_kind_are_named_once_each(tmp_path):
    """Rule (README, Configuration): warn for a Gaussian-prior key the kind does not read when this
    run's input changed it from where the run starts (the demo without CONFIG, else the defaults)."""
    from ensemble_da.config import ignored_model_warnings

    # The demo's own Gaussian settings are not the user's: switching kind alone is quiet.
    demo = load_config(None, ["model.kind=checkpoint"])
    assert demo.model.std is not None and ignored_model_warnings(demo.model, from_demo=True) == []
    # ... but a --set of such a key is the user's, on the demo too.
    demo = load_config(None, ["model.kind=checkpoint", "model.length_scale_km=800", "model.rank=64"])
    assert ignored_model_warnings(demo.model, from_demo=True) == [
        "warning: model.length_scale_km is ignored for model.kind 'checkpoint'",
        "warning: model.rank is ignored for model.kind 'checkpoint'",
    ]
    # A user's file: keys it sets to non-default values; a default value written out is not an error.
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  kind: python\n  factory: 'm:f'\n  std: {T850: 2.0}\n  nugget: 0.05\n")
    cfg = load_config(path)
    assert ignored_model_warnings(cfg.model, from_demo=False) == ["warning: model.std is ignored for model.kind 'python'"]
    # gaussian_climatology reads nugget and rank, not the kernel's keys.
    cfg = load_config(path, ["model.kind=gaussian_climatology", "model.factory=null", "model.rank=16", "model.nugget=0.1",
                             "model.mean={T850: 1.0}"])
    assert ignored_model_warnings(cfg.model, from_demo=False) == [
        "warning: model.mean is ignored for model.kind 'gaussian_climatology'",
        "warning: model.std is ignored for model.kind 'gaussian_climatology'",
    ]
    # The Gaussian prior reads them all. A resolved config.yaml reused as CONFIG names the Gaussian
    # values it carries (the file sets them), never its defaults (nugget, rank, ...).
    assert ignored_model_warnings(load_config(None).model, from_demo=False) == []
    path.write_text(load_config(None, ["model.kind=checkpoint"]).to_yaml())
    assert ignored_model_warnings(load_config(path).model, from_demo=False) == [
        f"warning: model.{k} is ignored for model.kind 'checkpoint'" for k in ("mean", "std", "channel_correlation")]


def test_validation_messages_carry_no_pydantic_prefix():
    with pytest.raises(InputError) as exc:
        load_config(None, ['times=["2020-02-30T00:00"]'])
    assert "Value error" not in str(exc.value) and "not an ISO time of the standard calendar" in str(exc.value)


def test_a_sweep_section_in_a_run_config_points_to_the_sweep_command(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("sweep: {seed: [0, 1]}\n")
    with pytest.raises(InputError, match=r"a sweep: section is for `ensemble-da sweep .*study.yaml`"):
        load_config(path)


def test_a_sigma_for_a_channel_the_prior_lacks_is_said(caplog):
    """A typo (T580 for T500) would leave T500 at its default error without a word."""
    from types import SimpleNamespace

    from ensemble_da.obs.inputs import check_channels

    cfg = load_config(None, ["observations.sigma.T580=2"])
    layout = SimpleNamespace(normalization=SimpleNamespace(channels=("T850", "T500", "T300")))
    with caplog.at_level("WARNING", logger="ensemble_da.obs"):
        assert check_channels(cfg, layout) == ["T850", "T500", "T300"]
    assert "observations.sigma names ['T580'], not channels of the prior" in caplog.text
