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


def test_model_is_a_section_per_kind_and_a_key_of_another_kind_is_refused(tmp_path):
    """Rule (README, Configuration): `model` is discriminated by `kind`; a key the kind does not
    have is one error naming the kinds that have it, never silently ignored."""
    from ensemble_da.config import CheckpointModelConfig, GaussianMarkovModelConfig, PythonModelConfig

    # The demo's own Gaussian settings are not the user's: switching kind alone starts afresh.
    demo = load_config(None, ["model.kind=checkpoint"])
    assert isinstance(demo.model, CheckpointModelConfig) and demo.model.path is None
    assert load_config(None, ["model.kind=gaussian_markov", "model.rho=0.8"]).model.length_scale_km == 1500.0
    # ... but a --set of a key the new kind lacks is the user's, on the demo too.
    with pytest.raises(InputError) as exc:
        load_config(None, ["model.kind=checkpoint", "model.length_scale_km=800"])
    assert str(exc.value) == ("--set model.length_scale_km: 'model.length_scale_km' is not a key of model.kind "
                              "checkpoint (it is a key of model.kind gaussian, gaussian_markov)")
    # A user's file: a key of another kind, a missing required key, an unknown kind.
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  kind: python\n  factory: 'm:f'\n  std: {T850: 2.0}\n")
    with pytest.raises(InputError, match=r"run.yaml: 'model.std' is not a key of model.kind python \(it is a key"):
        load_config(path)
    path.write_text("model:\n  kind: python\n")
    with pytest.raises(InputError, match=r"run.yaml: model.kind python needs 'model.factory'$"):
        load_config(path)
    with pytest.raises(InputError, match=r"--set model.kind: model.kind gaussian_markov needs 'model.rho'$"):
        load_config(None, ["model.kind=gaussian_markov"])
    with pytest.raises(InputError, match=r"bad value for 'model.kind' \('gauss'\): model.kind must be one of gaussian, "):
        load_config(None, ["model.kind=gauss"])
    # No kind given: the Gaussian prior, as before. A resolved config.yaml reused as CONFIG holds
    # only its kind's keys, so it loads again unchanged.
    path.write_text("model:\n  factory: 'm:f'\n")
    with pytest.raises(InputError, match="'model.factory' is not a key of model.kind gaussian"):
        load_config(path)
    for kind in (["model.kind=checkpoint"], ["model.kind=python", "model.factory=m:f"]):
        cfg = load_config(None, kind)
        path.write_text(cfg.to_yaml())
        assert load_config(path).model == cfg.model
    assert isinstance(load_config(None, ["model.kind=python", "model.factory=m:f"]).model, PythonModelConfig)
    # Several keys of other kinds are named at once; the Python builder says what the CLI says.
    from ensemble_da.config import model_config

    path.write_text("model: {kind: checkpoint, mean: {T850: 1.0}, std: {T850: 1.0}}\n")
    with pytest.raises(InputError, match=r"'model.mean', 'model.std' are not keys of model.kind checkpoint; remove them"):
        load_config(path)
    with pytest.raises(InputError, match=r"^model_config: 'model.rank' is not a key of model.kind checkpoint"):
        model_config(kind="checkpoint", rank=3)
    assert isinstance(model_config(kind="gaussian_markov", rho=0.8), GaussianMarkovModelConfig)
    assert not isinstance(load_config(None).model, GaussianMarkovModelConfig)


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
