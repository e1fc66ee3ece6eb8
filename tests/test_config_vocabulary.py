"""The config owns its vocabulary: every enum-like field is a ``Literal`` whose words are written once in
``dprad.config``, checked when a config is built (flags, a file, ``replace``) with one line naming the flag,
the config key and the words; its help text sits beside it, and the commands' flags read it from there."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path

import pytest

from dprad import config
from dprad.cli import main
from dprad.commands.options import LLM_OPTIONS, OWNERS, TRAIN_OPTIONS, flags_of
from dprad.config import RunConfig, choices, flag_name, help_of, vocabulary
from dprad.errors import DpradError

# fields whose values come from a fixed list of words: each must be a Literal, never a bare str
ENUM_LIKE = {
    "format",
    "uncertain_policy",
    "pooling",
    "encoder_runtime",
    "accountant",
    "thresholds",
    "unit",
    "mode",
    "sampler",
    "policy",
    "runtime",
    "rule",
}
# bare-str fields (str or str | None) that are free text, and why: a new str field is a Literal or is
# added here
FREE_TEXT = {
    ("DataConfig", "path"): "a file or folder",
    ("DataConfig", "schema"): "chexpert14, ctrate18 or a schema file",
    ("DataConfig", "text_col"): "a column name",
    ("DataConfig", "id_col"): "a column name",
    ("DataConfig", "patient_col"): "a column name",
    ("DataConfig", "split_col"): "a column name",
    ("DataConfig", "labels_path"): "a file",
    ("DataConfig", "teacher"): "who wrote the labels, in words, for the model card",
    ("ModelConfig", "name"): "minilm or a local model directory",
    (
        "TrainConfig",
        "device",
    ): "auto | cpu | cuda[:i]: an open set (cuda:0, cuda:1 ...), features.resolve_device",
    ("TrainConfig", "feature_cache"): "a folder",
}

SECTION_OF = {cls: name for name, cls in OWNERS.items() if name in config.SECTIONS}


def config_dataclasses() -> list[type]:
    return [
        cls
        for _, cls in inspect.getmembers(config, inspect.isclass)
        if dataclasses.is_dataclass(cls) and cls.__module__ == config.__name__
    ]


def test_no_enum_like_config_field_is_a_bare_str() -> None:
    enum_like, bare = 0, set()
    for cls in config_dataclasses():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if f.name in ENUM_LIKE:
                assert choices(tp) is not None, (
                    f"{cls.__name__}.{f.name} is enum-like: give it a Literal type"
                )
                enum_like += 1
            if tp in (str, str | None):
                bare.add((cls.__name__, f.name))
    assert (
        enum_like == 8
    )  # format, uncertain_policy, pooling, encoder_runtime, accountant, thresholds, unit, mode
    assert bare == set(FREE_TEXT), "a bare-str config field is a Literal, or free text listed in FREE_TEXT"


def _vocabulary_fields() -> list[tuple[str, type, str, tuple[str, ...]]]:
    return [
        (SECTION_OF[cls], cls, name, words) for cls in SECTION_OF for name, words in vocabulary(cls).items()
    ]


@pytest.mark.parametrize(("section", "cls", "name", "words"), _vocabulary_fields())
def test_every_vocabulary_field_takes_its_words_and_refuses_others_in_one_line(
    section: str, cls: type, name: str, words: tuple[str, ...]
) -> None:
    for word in words:
        assert getattr(cls(**{name: word}), name) == word
    flag = flag_name(section, name)
    for bad in ("no-such-word", words[0].upper() + "x"):
        with pytest.raises(DpradError) as err:
            cls(**{name: bad})
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith(f"{flag} '{bad}' ")
        assert ", ".join(words) in message and f"config {section}.{name}" in message
    # a word of another type (YAML's `thresholds: 0.5` is a float) is refused too, naming what it is
    with pytest.raises(DpradError, match=f"{flag} must be one of .*, not float 0.5"):
        cls(**{name: 0.5})
    # a config file is checked as flags are
    with pytest.raises(DpradError, match=f"{flag} 'nope' .* \\(config {section}.{name}\\)"):
        RunConfig.from_dict({section: {name: "nope"}}, source="c.yaml")


def test_the_vocabularies_are_the_implementations() -> None:
    """The words are written once, in config.py; the layers above implement each word, and no other."""
    from dprad.data.schemas import UncertainPolicy
    from dprad.modes import REGISTRY
    from dprad.privacy.accounting import ACCOUNTANTS, DP_ACCOUNTANTS

    assert tuple(REGISTRY) == config.MODE_NAMES
    assert set(config.MODES) == {"auto", *config.MODE_NAMES, *config.MODE_ALIASES}
    assert ACCOUNTANTS is config.ACCOUNTANTS and set(ACCOUNTANTS) == {*DP_ACCOUNTANTS, "prv"}
    assert tuple(p.value for p in UncertainPolicy) == config.UNCERTAIN_POLICIES
    assert config.ModelConfig.AUTO_CPU_RUNTIME in config.RUNTIMES
    assert set(config.RUNTIMES) < set(vocabulary(config.ModelConfig)["encoder_runtime"])


def test_every_flag_reads_its_help_from_its_field() -> None:
    rows = flags_of(TRAIN_OPTIONS) + flags_of(LLM_OPTIONS)
    assert {r.section for r in flags_of(LLM_OPTIONS)} == {"llm"}
    for row in rows:
        assert row.help == help_of(OWNERS[row.section], row.field), row.flag
        assert row.option().help == row.help
    without = {(r.section, r.field) for r in rows if not r.help}
    # these flags had no help text before their help moved beside the fields; any new flag needs one
    assert without <= {
        ("lora", "r"),
        ("lora", "alpha"),
        ("data", "split_seed"),
        ("llm", "concurrency"),
        ("llm", "max_retries"),
    }


def test_label_llm_flags_are_generated_and_checked_by_the_llm_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "r.csv"
    table.write_text("id,text\n1,no acute findings\n", encoding="utf-8")
    argv = ["label", str(table), "--out", str(tmp_path / "o.csv"), "--teacher", "llm"]
    argv += ["--llm-url", "http://127.0.0.1:9/v1", "--llm-model", "m", "--llm-structured", "grammar"]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "dprad: error: --llm-structured 'grammar' must be auto, json_schema, json_object, none"
