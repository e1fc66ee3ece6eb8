"""Command-line options defined once, from the config dataclasses.

``TRAIN_OPTIONS`` is the one table of the config flags, ``LLM_OPTIONS`` that of ``dprad label``'s LLM
teacher (:class:`dprad.labeling.llm.LLMConfig`). Each row names a dataclass field (section, field); the flag
is :func:`dprad.config.flag_name`'s (or the row's own name), the help is the field's own
(``metadata["help"]``, :func:`dprad.config.setting`), the type is the field's annotation (a vocabulary's
``Literal`` is typed as text: the config checks the word, with the words in its one-line error) and the
default is the dataclass's own, so neither is written twice. :func:`with_options` gives a command the
table's flags (typer reads options from a command's signature), and :func:`config_from_flags` applies the
flags the user typed on top of a ``--config`` file, and nothing else. The reader flags that other commands
share (``FormatOpt`` ...) are built from the same rows.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from dprad.config import (
    DataConfig,
    LoraConfig,
    ModelConfig,
    PrivacyConfig,
    RunConfig,
    TrainConfig,
    choices,
    flag_name,
    help_of,
)
from dprad.errors import DpradError
from dprad.labeling.llm import LLMConfig

SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "lora": LoraConfig,
    "privacy": PrivacyConfig,
    "train": TrainConfig,
}
# every dataclass whose fields are flags: a RunConfig's sections, and the LLM teacher's settings (`dprad label`)
OWNERS: dict[str, type] = {**SECTIONS, "llm": LLMConfig}

# config fields with no flag: data.path is train's DATA argument; the others are set in a --config file
CONFIG_ONLY = (
    ("data", "path"),
    ("lora", "dropout"),
    ("train", "weight_decay"),
    ("train", "checkpoint_every"),
)


@dataclass(frozen=True)
class Flag:
    """One dataclass field (``OWNERS[section]``) as a command-line option; its help is the field's."""

    section: str
    field: str
    short: str | None = None  # e.g. "-f"
    cli_type: Any = None  # the type typed, where it is not the field's (a path, a comma-separated list)
    to_config: Callable[[Any], Any] | None = None  # a typed value (not None) -> the field's value
    to_cli: Callable[[Any], Any] | None = None  # the field's default as the option shows it
    name: str | None = None  # the flag, where it is not config.flag_name's (a section outside RunConfig)

    @property
    def flag(self) -> str:
        return self.name or flag_name(self.section, self.field)

    @property
    def help(self) -> str | None:
        return help_of(OWNERS[self.section], self.field)

    @property
    def param(self) -> str:
        """The command's parameter name, under which click records where its value came from."""
        return f"{self.section}_{self.field}"

    @property
    def type(self) -> Any:
        if self.cli_type:
            return self.cli_type
        tp = _field_types(self.section)[self.field]
        if choices(tp) is not None:  # a vocabulary: typed as text, and the config checks the word
            return str | None if type(None) in typing.get_args(tp) else str
        return tp

    @property
    def default(self) -> Any:
        (spec,) = (f for f in fields(OWNERS[self.section]) if f.name == self.field)
        if spec.default is MISSING:
            if spec.default_factory is MISSING:
                return None  # a required field: the command says when it is missing
            raise TypeError(f"config {self.section}.{self.field} has no plain default to show")
        return self.to_cli(spec.default) if self.to_cli else spec.default

    def option(self) -> Any:
        """The typer option: ``--flag`` (``--flag/--no-flag`` for a switch), its short name, its help."""
        decls = [f"{self.flag}/--no-{self.flag[2:]}" if _is_switch(self.type) else self.flag]
        return typer.Option(*decls, *([self.short] if self.short else []), help=self.help)

    def parameter(self) -> inspect.Parameter:
        return inspect.Parameter(
            self.param,
            inspect.Parameter.KEYWORD_ONLY,
            default=self.default,
            annotation=Annotated[self.type, self.option()],
        )


@functools.cache
def _field_types(section: str) -> dict[str, Any]:
    return typing.get_type_hints(OWNERS[section])


def _is_switch(tp: Any) -> bool:
    return tp is bool or (typing.get_origin(tp) is not None and bool in typing.get_args(tp))


def _abs(p: Path) -> str:
    return str(p.resolve())  # absolute: the run directory must make sense from anywhere


def _fractions(split: str) -> tuple[float, ...]:
    try:
        fractions = tuple(float(x) for x in split.split(","))
    except ValueError:
        fractions = ()
    if len(fractions) != 3:
        raise DpradError(f"--split '{split}' must be three comma-separated fractions, e.g. 0.7,0.1,0.2")
    return fractions


def _comma_list(v: str) -> tuple[str, ...] | None:
    return tuple(v.split(",")) if v else None


def _none(_default: Any) -> None:
    return None  # the option shows no default (typer: a repeated option's default is None, not ())


def _joined(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


# ---------------------------------------------------------------------------------------- reader flags

FORMAT = Flag("data", "format", short="-f")
SCHEMA = Flag("data", "schema")
TEXT_COL = Flag("data", "text_col")
ID_COL = Flag("data", "id_col")
PATIENT_COL = Flag("data", "patient_col")
SPLIT_COL = Flag("data", "split_col")
LABELS = Flag("data", "labels_path", cli_type=Path | None, to_config=_abs)

# the reader flags as other commands declare them; their defaults are DATA's (DataConfig's own)
DATA = DataConfig()
FormatOpt = Annotated[str, FORMAT.option()]
SchemaOpt = Annotated[str | None, SCHEMA.option()]
TextColOpt = Annotated[str, TEXT_COL.option()]
IdColOpt = Annotated[str, ID_COL.option()]
PatientColOpt = Annotated[str | None, PATIENT_COL.option()]
SplitColOpt = Annotated[str | None, SPLIT_COL.option()]
LabelsOpt = Annotated[Path | None, LABELS.option()]

# ---------------------------------------------------------------------------------------- train flags

# In the order `dprad train --help` lists them; a string places the command's own parameter of that name.
TRAIN_OPTIONS: tuple[Flag | str, ...] = (
    FORMAT,
    SCHEMA,
    TEXT_COL,
    ID_COL,
    PATIENT_COL,
    SPLIT_COL,
    LABELS,
    "config",
    Flag("train", "mode"),
    Flag("privacy", "epsilon"),
    Flag("privacy", "delta"),
    Flag("privacy", "noise_multiplier"),
    Flag("privacy", "max_grad_norm"),
    Flag("privacy", "accountant"),
    Flag("privacy", "force_delta"),
    Flag("privacy", "thresholds"),
    Flag("privacy", "unit"),
    Flag("privacy", "threshold_share"),
    Flag("privacy", "threshold_default"),
    Flag("model", "name"),
    Flag("model", "pooling"),
    Flag("model", "max_length"),
    Flag("model", "encoder_runtime"),
    Flag("train", "epochs"),
    Flag("train", "lr"),
    Flag("train", "batch_size"),
    Flag("train", "max_tokens"),
    Flag("lora", "r"),
    Flag("lora", "alpha"),
    Flag("lora", "layers"),
    Flag("lora", "target_modules", cli_type=str | None, to_config=_comma_list),
    Flag("data", "uncertain_policy"),
    Flag("data", "fractions", cli_type=str, to_config=_fractions, to_cli=_joined),
    Flag("data", "split_seed"),
    Flag("data", "teacher"),
    Flag("train", "seed"),
    Flag("privacy", "noise_seed"),
    Flag("train", "threads"),
    Flag("train", "device"),
    "overwrite",
    Flag("train", "public_warm_start"),
    Flag("train", "rule_prior"),
    Flag("train", "probe"),
    Flag("train", "probe_share"),
    Flag("train", "select_epoch"),
    Flag("train", "audit_canaries"),
    Flag("train", "audit_rare_tokens"),
    Flag("train", "feature_cache", cli_type=Path | None, to_config=_abs),
)

# ---------------------------------------------------------------------------------------- label flags

# `dprad label --teacher llm`: the LLM teacher's settings (LLMConfig), in the order `dprad label --help`
# lists them; the API key is never a flag (shell history), and backoff_s is the library's own
LLM_OPTIONS: tuple[Flag | str, ...] = (
    Flag("llm", "url", cli_type=str | None, name="--llm-url"),
    Flag("llm", "model", cli_type=str | None, name="--llm-model"),
    Flag(
        "llm",
        "allow_hosts",
        cli_type=list[str] | None,
        to_config=tuple,
        to_cli=_none,
        name="--llm-allow-host",
    ),
    Flag("llm", "cache_dir", cli_type=Path | None, name="--llm-cache"),
    Flag("llm", "concurrency", name="--llm-concurrency"),
    Flag("llm", "timeout_s", name="--llm-timeout"),
    Flag("llm", "max_retries", name="--llm-retries"),
    Flag("llm", "structured", name="--llm-structured"),
    Flag("llm", "max_tokens", name="--llm-max-tokens"),
)


def flags_of(rows: Sequence[Flag | str]) -> list[Flag]:
    return [row for row in rows if isinstance(row, Flag)]


def flag_values(rows: Sequence[Flag | str], values: Mapping[str, Any], section: str) -> dict[str, Any]:
    """The values of ``section``'s flags in ``rows``, by field, as the field takes them (typed or default)."""
    out: dict[str, Any] = {}
    for row in flags_of(rows):
        if row.section == section:
            v = values[row.param]
            out[row.field] = row.to_config(v) if row.to_config and v is not None else v
    return out


def unflagged_fields(rows: Sequence[Flag | str] = TRAIN_OPTIONS) -> set[tuple[str, str]]:
    """Config fields that neither have a flag in ``rows`` nor are listed in CONFIG_ONLY (should be none)."""
    every = {(sec, f.name) for sec, cls in SECTIONS.items() for f in fields(cls)}
    return every - {(f.section, f.field) for f in flags_of(rows)} - set(CONFIG_ONLY)


F = TypeVar("F", bound=Callable[..., Any])


def with_options(rows: Sequence[Flag | str]) -> Callable[[F], F]:
    """Give a command the options of ``rows``, in that order; a string row places the command's own parameter
    of that name there (the others come first). The command receives the flags as ``**flags``, by
    :attr:`Flag.param`."""

    def wrap(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)
        own = {n: p for n, p in sig.parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
        placed = {row for row in rows if isinstance(row, str)}
        params = [p for n, p in own.items() if n not in placed]
        params += [own[row] if isinstance(row, str) else row.parameter() for row in rows]
        kw = inspect.Parameter.KEYWORD_ONLY
        fn.__signature__ = sig.replace(parameters=[p.replace(kind=kw) for p in params])  # type: ignore[attr-defined]
        return fn

    return wrap


TYPED = ("COMMANDLINE", "ENVIRONMENT", "PROMPT")  # click's ParameterSource names (typer may vendor click)


def typed_by_user(ctx: typer.Context, param: str) -> bool:
    source = ctx.get_parameter_source(param)
    return source is not None and source.name in TYPED


def config_from_flags(
    ctx: typer.Context,
    base: RunConfig,
    values: Mapping[str, Any],
    rows: Sequence[Flag | str] = TRAIN_OPTIONS,
) -> RunConfig:
    """``base`` with every flag the user typed applied on top, whatever its value, and nothing else: a flag
    left out never overrides ``--config`` (click records where each value came from)."""
    sections: dict[str, dict[str, Any]] = {}
    for row in flags_of(rows):
        if typed_by_user(ctx, row.param):
            v = values[row.param]
            convert = row.to_config
            sections.setdefault(row.section, {})[row.field] = convert(v) if convert and v is not None else v
    return base.with_(**{sec: replace(getattr(base, sec), **kv) for sec, kv in sections.items()})


def load_config(path: Path) -> RunConfig:
    """A YAML/JSON RunConfig file (a run's config.json too: its ``derived`` section is informational)."""
    if not path.is_file():
        raise DpradError(f"--config {path}: no such file")
    try:
        import yaml

        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception as err:  # noqa: BLE001
        raise DpradError(f"--config {path}: not valid YAML/JSON: {err}") from None
    if not isinstance(raw, dict):
        raise DpradError(
            f"--config {path}: expected a mapping of sections (data, model, lora, privacy, train)"
        )
    return RunConfig.from_dict(raw, source=f"--config {path}")


def read_input(
    path: Path,
    fmt: str,
    schema: str | None,
    text_col: str = DATA.text_col,
    id_col: str = DATA.id_col,
    patient_col: str | None = DATA.patient_col,
    split_col: str | None = DATA.split_col,
    labels: Path | None = None,
) -> Any:
    """Read reports as the reader flags say: (ReadResult, schema used, format used)."""
    from dprad.data.read import read_reports
    from dprad.data.schemas import load_schema

    return read_reports(
        path,
        format=fmt,
        schema=load_schema(schema) if schema else None,
        text_col=text_col,
        id_col=id_col,
        patient_col=patient_col,
        split_col=split_col,
        labels_path=labels,
    )


def check_out_file(path: Path, flag: str = "--out") -> None:
    """Refuse an output file that cannot be written, before any work: a folder in its place, or a folder
    it would go in that cannot be written (or created: dprad's writers create missing folders). Probes
    with a temporary file or folder, as the atomic writer will (``dprad.io``), and removes it at once."""
    import tempfile

    if path.is_dir():
        raise DpradError(f"{flag} {path}: is a folder; give a file name")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the nearest folder that exists: the writer creates the rest
    if not folder.is_dir():
        raise DpradError(f"{flag} {path}: {folder} is not a folder")
    try:
        if folder == path.parent:
            with tempfile.NamedTemporaryFile(prefix=f".{path.name}.", suffix=".probe", dir=folder):
                pass  # deleted on close
        else:
            Path(tempfile.mkdtemp(prefix=".dprad-", suffix=".probe", dir=folder)).rmdir()
    except OSError as err:
        raise DpradError(f"{flag} {path}: cannot write in {folder} ({err.strerror or err})") from None
