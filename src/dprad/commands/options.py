"""Command-line options defined once, from the config dataclasses.

``TRAIN_OPTIONS`` is the one table of the config flags. Each row names a config field (section, field) and
carries its help text; the flag is :func:`dprad.config.flag_name`'s, the type is the field's annotation and
the default is the dataclass's own, so no default is written twice. :func:`with_options` gives a command the
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
    flag_name,
)
from dprad.errors import DpradError

SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "lora": LoraConfig,
    "privacy": PrivacyConfig,
    "train": TrainConfig,
}

# flags whose name config.FLAG_NAMES does not give: the command line's own, shorter names
# config fields with no flag: data.path is train's DATA argument; the others are set in a --config file
CONFIG_ONLY = (
    ("data", "path"),
    ("lora", "dropout"),
    ("train", "weight_decay"),
    ("train", "checkpoint_every"),
)


@dataclass(frozen=True)
class Flag:
    """One config field as a command-line option."""

    section: str
    field: str
    help: str | None = None
    short: str | None = None  # e.g. "-f"
    cli_type: Any = None  # the type typed, where it is not the field's (a path, a comma-separated list)
    to_config: Callable[[Any], Any] | None = None  # a typed value (not None) -> the field's value
    to_cli: Callable[[Any], Any] | None = None  # the field's default as the option shows it

    @property
    def flag(self) -> str:
        return flag_name(self.section, self.field)

    @property
    def param(self) -> str:
        """The command's parameter name, under which click records where its value came from."""
        return f"{self.section}_{self.field}"

    @property
    def type(self) -> Any:
        return self.cli_type or _field_types(self.section)[self.field]

    @property
    def default(self) -> Any:
        (spec,) = (f for f in fields(SECTIONS[self.section]) if f.name == self.field)
        if spec.default is MISSING:
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
    return typing.get_type_hints(SECTIONS[section])


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


def _joined(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


# ---------------------------------------------------------------------------------------- reader flags

FORMAT = Flag(
    "data", "format", "auto, csv, jsonl, parquet, iu-xray, ct-rate, ct-rate-manual, mimic-cxr", short="-f"
)
SCHEMA = Flag("data", "schema", "chexpert14, ctrate18 or a YAML/JSON schema file (default: the format's)")
TEXT_COL = Flag("data", "text_col", "text column of a plain table")
ID_COL = Flag("data", "id_col", "report id column of a plain table")
PATIENT_COL = Flag("data", "patient_col", "patient id column (default: patient_id if present)")
SPLIT_COL = Flag("data", "split_col", "column holding fixed train/val/test splits")
LABELS = Flag(
    "data",
    "labels_path",
    "CT-RATE labels CSV / MIMIC-CXR chexpert CSV if not in the usual place",
    cli_type=Path | None,
    to_config=_abs,
)

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
    Flag(
        "train",
        "mode",
        "auto | head | lora | full (auto: head, the measured winner at every size measured; docs/how-to/choosing.md). "
        "--epsilon or --noise-multiplier makes any mode private; dp-head / dp-lora / dp-full are accepted aliases",
    ),
    Flag("privacy", "epsilon", "target epsilon; the noise multiplier is calibrated to spend at most this"),
    Flag(
        "privacy",
        "delta",
        "delta; default: the largest power of ten <= 1/(10 n), n = training units (patients or reports: "
        "--privacy-unit). delta >= 1/n is refused unless --force-delta",
    ),
    Flag("privacy", "noise_multiplier", "fixed sigma instead of --epsilon; epsilon is then the output"),
    Flag(
        "privacy",
        "max_grad_norm",
        "per-unit clipping norm C (a patient's reports together, or one report: --privacy-unit)",
    ),
    Flag("privacy", "accountant", "pld (default), rdp or prv"),
    Flag("privacy", "force_delta", "allow delta >= 1/n"),
    Flag(
        "privacy",
        "thresholds",
        "auto | dp | val | 0.5: per-label thresholds chosen on the validation split under DP (inside epsilon; "
        "auto when private), without DP (val: the ledger flags it), or 0.5",
    ),
    Flag(
        "privacy",
        "unit",
        "auto | patient | report: what one unit of privacy is (auto: patient when patients have several reports)",
    ),
    Flag("privacy", "threshold_share", "share of --epsilon spent on DP thresholds"),
    Flag(
        "privacy",
        "threshold_default",
        "threshold a label keeps unless the (DP) validation counts move it (default 0.3)",
    ),
    Flag("model", "name", "minilm (packaged default) or a local HF model directory"),
    Flag("model", "pooling", "auto | mean | cls"),
    Flag("model", "max_length", "tokens per report (truncation)"),
    Flag(
        "model",
        "encoder_runtime",
        "head modes: the frozen encoder's runtime, auto | torch | int8 | onnx | onnx-int8 (auto: onnx-int8 "
        "for a head on the CPU, else torch); predict and serve use the run's own",
    ),
    Flag("train", "epochs", "epochs (expected passes over the data)"),
    Flag("train", "lr", "learning rate"),
    Flag("train", "batch_size", "expected logical batch size (q = batch / n)"),
    Flag("train", "max_tokens", "tokens per physical micro-batch (memory only)"),
    Flag("lora", "r"),
    Flag("lora", "alpha"),
    Flag(
        "lora",
        "layers",
        "LoRA in the top K layers only; the frozen bottom runs once per report (cached hidden states)",
    ),
    Flag(
        "lora", "target_modules", "comma-separated module names", cli_type=str | None, to_config=_comma_list
    ),
    Flag("data", "uncertain_policy", "ones (U-Ones, default) | zeros | ignore"),
    Flag(
        "data",
        "fractions",
        "train,val,test fractions, e.g. 0.7,0.1,0.2 (1,0,0: train on everything)",
        cli_type=str,
        to_config=_fractions,
        to_cli=_joined,
    ),
    Flag("data", "split_seed"),
    Flag(
        "data",
        "teacher",
        "who wrote the training labels, for the model card (default: what `dprad label` recorded beside the table)",
    ),
    Flag("train", "seed", "public randomness only: initialisation, canaries, non-private batch order"),
    Flag(
        "privacy",
        "noise_seed",
        "draw the DP noise and Poisson batches from this stated seed (tests, research): reproducible, and "
        "private only while the seed stays secret; the ledger and card say so, export and serve refuse it "
        "without --force. Default: a secret key from OS entropy, written nowhere that is shipped",
    ),
    Flag("train", "threads", "torch CPU threads"),
    Flag("train", "device", "auto (CUDA when present) | cpu | cuda[:i]; bf16 autocast on a GPU"),
    "overwrite",
    Flag(
        "train",
        "public_warm_start",
        "head modes and LP-FT probes: start from a fit on dprad's public synthetic corpus (default: on for "
        "private runs with a built-in schema)",
    ),
    Flag(
        "train",
        "rule_prior",
        "head modes: the rule teacher's reading of each report as extra, privacy-free inputs (default: on "
        "where the schema has rule vocabulary)",
    ),
    Flag(
        "train",
        "probe",
        "lora / full: LP-FT, a private linear probe (the head mode) first, then fine-tuning from it (default: on)",
    ),
    Flag(
        "train",
        "probe_share",
        "private LP-FT: share of the training budget (epsilon less the thresholds' share) for the probe",
    ),
    Flag(
        "train",
        "select_epoch",
        "non-private lora / full: ship the epoch (0: the probe) with the lowest validation loss (default: on "
        "when not private; refused when private)",
    ),
    Flag(
        "train",
        "audit_canaries",
        "one-run privacy audit: M canaries (random labels), each trained on with probability 1/2; writes audit.json",
    ),
    Flag("train", "audit_rare_tokens", "append rare random tokens to canaries"),
    Flag(
        "train",
        "feature_cache",
        "head modes: reuse encoder features from this folder across runs (as sensitive as the reports)",
        cli_type=Path | None,
        to_config=_abs,
    ),
)


def flags_of(rows: Sequence[Flag | str]) -> list[Flag]:
    return [row for row in rows if isinstance(row, Flag)]


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
