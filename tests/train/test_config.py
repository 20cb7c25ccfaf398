from pathlib import Path

import pytest

from train.config import ConfigError, PairRules, TrainConfig, load_config, parse_override

CONFIGS = Path(__file__).resolve().parents[2] / "train" / "configs"


def test_overrides_reach_nested_keys_and_read_yaml_values():
    config = load_config(None, ["train.max_steps=12", "train.lr=1e-4", "validation.steps=[1, 4]",
                                "model.init=null", "stage2.pairs.slow=0.25"])
    assert config.train.max_steps == 12
    assert config.train.lr == pytest.approx(1e-4)   # YAML 1.1 alone would read "1e-4" as a string
    assert config.validation.steps == [1, 4]
    assert config.model.init is None
    assert config.stage2.pairs == PairRules(slow=0.25)   # the other rules keep their defaults
    assert TrainConfig().train.max_steps != 12   # the defaults are never modified


def test_yaml_11_yes_no_words_stay_words():
    config = load_config(None, ["train.mixed_precision=no", "train.cpu=true", "data.cache=false"])
    assert config.train.mixed_precision == "no"   # YAML 1.1 alone would read False
    assert config.train.cpu is True and config.data.cache is False


def test_unknown_keys_are_errors_with_a_suggestion():
    with pytest.raises(ConfigError, match="'train.max_step'; did you mean 'train.max_steps'"):
        load_config(None, ["train.max_step=5"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.max_steps")


def test_free_form_sections_take_any_keys():
    config = load_config(None, ["model.config={latent_factor: 2, unet: {layers_per_block: 1}}"])
    assert config.model.config == {"latent_factor": 2, "unet": {"layers_per_block": 1}}


@pytest.mark.parametrize("name", ["tiny_stage1", "tiny_stage2", "sd21_stage1", "sd21_stage2"])
def test_shipped_configs_load(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.stage == (1 if name.endswith("1") else 2)
    assert config.model.type == ("tiny" if name.startswith("tiny") else "sd")


def test_values_are_checked_against_the_types(tmp_path):
    config = load_config(None, ["train.grad_clip=1", "stage1.t_one_prob=1"])
    assert isinstance(config.train.grad_clip, float) and config.stage1.t_one_prob == 1.0   # ints widen to float
    with pytest.raises(ConfigError, match="train.max_steps must be a int, got 'many'"):
        load_config(None, ["train.max_steps=many"])
    with pytest.raises(ConfigError, match="data.cache must be a bool"):
        load_config(None, ["data.cache=3"])
    unquoted = tmp_path / "unquoted.yaml"
    unquoted.write_text("train:\n  mixed_precision: no\n")   # a YAML file reads this no as False
    with pytest.raises(ConfigError, match="train.mixed_precision must be a str.*quote"):
        load_config(unquoted)
    with pytest.raises(ConfigError, match="stage2.weights must be a mapping"):
        load_config(None, ["stage2.weights=0"])
