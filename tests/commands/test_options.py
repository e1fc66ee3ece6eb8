"""The train command's flags come from the config dataclasses: one definition, one default."""

from __future__ import annotations

from dataclasses import fields

from dprad.commands.options import CONFIG_ONLY, TRAIN_OPTIONS, unflagged_fields
from dprad.config import DataConfig, LoraConfig, ModelConfig, PrivacyConfig, TrainConfig, flag_name


def test_every_config_field_has_a_flag_or_is_config_only() -> None:
    assert unflagged_fields() == set()


def test_flag_defaults_are_the_dataclasses_own() -> None:
    sections = {"data": DataConfig(), "model": ModelConfig(), "lora": LoraConfig()}
    sections |= {"privacy": PrivacyConfig(), "train": TrainConfig()}
    flags = [f for f in TRAIN_OPTIONS if not isinstance(f, str)]
    assert flags, "the options table is empty"
    for flag in flags:
        assert flag.flag == flag_name(flag.section, flag.field)
        assert flag.field in {f.name for f in fields(sections[flag.section])}, (flag.section, flag.field)
        assert (flag.section, flag.field) not in CONFIG_ONLY
        own = getattr(sections[flag.section], flag.field)
        assert flag.default == (flag.to_cli(own) if flag.to_cli else own), flag.flag
