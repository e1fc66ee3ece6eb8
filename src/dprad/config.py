"""Typed, frozen configuration: one dataclass per concern, combined into a RunConfig.

``None`` means "let dprad choose"; :func:`dprad.stages.plan.plan_run` replaces every ``None`` by the value
it chose, and that resolved config is what a run directory's ``config.json`` holds. ``config.json`` loads
back (its informational ``derived`` section is recomputed and checked, not read), so
``dprad train --config RUN/config.json`` reproduces the run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar, TypeVar

from dprad.errors import DpradError, ParameterError

# Privacy is a switch (--epsilon or --noise-multiplier), not a mode; "dp-<mode>" stays accepted as an
# alias that also demands one of them.
MODE_ALIASES = {"dp-head": "head", "dp-lora": "lora", "dp-full": "full"}
SECTIONS = ("data", "model", "lora", "privacy", "train")
INFORMATIONAL = ("derived",)  # written by runs into config.json; recomputed on load, never an input


# Numeric fields and the range each must lie in: (kind, low, low_inclusive, high, high_inclusive). Checked
# whenever a config is built (from flags, a file or ``replace``), so bad numbers stop before any work with
# one line naming the flag; a NaN learning rate or clipping norm would otherwise train every weight to NaN
# and write a ledger "clipped to norm nan".
Range = tuple[str, float, bool, float, bool]
POSITIVE: Range = ("float", 0.0, False, math.inf, False)
NON_NEGATIVE: Range = ("float", 0.0, True, math.inf, False)
UNIT_OPEN: Range = ("float", 0.0, False, 1.0, False)
COUNT: Range = ("int", 1, True, math.inf, False)
NON_NEGATIVE_INT: Range = ("int", 0, True, math.inf, False)
ANY_INT: Range = ("int", -math.inf, False, math.inf, False)

# (section, field) -> the flag a user types, where it is not "--" + field with dashes
FLAG_NAMES = {
    ("data", "fractions"): "--split",
    ("data", "labels_path"): "--labels",
    ("lora", "r"): "--lora-r",
    ("lora", "alpha"): "--lora-alpha",
    ("lora", "dropout"): "--lora-dropout",
    ("lora", "layers"): "--lora-layers",
    ("privacy", "unit"): "--privacy-unit",
    ("model", "name"): "--model",
    ("data", "uncertain_policy"): "--uncertain",
    ("lora", "target_modules"): "--lora-targets",
}


def flag_name(section: str, name: str) -> str:
    return FLAG_NAMES.get((section, name), "--" + name.replace("_", "-"))


def flag_message(err: ParameterError) -> str:
    """A mechanism's :class:`ParameterError` in the user's words, its parameter named by the flag that sets
    it: "epsilon 0 must be a positive number" -> "--epsilon 0 must be a positive number". The layers that
    face the user (planning, the CLI's one-line exit) say it so; the mechanisms know no flags."""
    sections = (
        ("privacy", PrivacyConfig),
        ("train", TrainConfig),
        ("data", DataConfig),
        ("model", ModelConfig),
        ("lora", LoraConfig),
    )
    # a parameter no section holds (``dprad epsilon --steps``) is its own name as a flag
    section = next((s for s, cls in sections if err.parameter in {f.name for f in fields(cls)}), "privacy")
    return err.worded(flag_name(section, err.parameter))


def _check_value(value: Any, rule: Range, *, where: tuple[str, str]) -> None:
    kind, low, low_in, high, high_in = rule
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DpradError(
            f"{where[0]} must be a number, not {type(value).__name__} {value!r:.40} ({where[1]})"
        )
    if kind == "int" and not (isinstance(value, int) or (math.isfinite(value) and value == int(value))):
        raise DpradError(f"{where[0]} {value} must be a whole number ({where[1]})")
    ok_low = value >= low if low_in else value > low
    ok_high = value <= high if high_in else value < high
    if not (math.isfinite(value) and ok_low and ok_high):
        if rule == POSITIVE:
            want = "a positive number"
        elif (low, low_in, high, high_in) == (0.0, False, 1.0, False):
            want = "in (0, 1)"
        else:
            lo = f"{'>=' if low_in else '>'} {low:g}" if math.isfinite(low) else ""
            hi = f"{'<=' if high_in else '<'} {high:g}" if math.isfinite(high) else ""
            want = " ".join(("a finite number", " and ".join(b for b in (lo, hi) if b))).strip()
        raise DpradError(f"{where[0]} {value} must be {want} ({where[1]})")


def check_numbers(cfg: Any, section: str) -> None:
    """Every numeric field of a config section is a finite number in its range (None: dprad chooses)."""
    for name, rule in type(cfg).RANGES.items():
        value = getattr(cfg, name)
        if value is None:
            continue
        where = (flag_name(section, name), f"config {section}.{name}")
        for item in value if isinstance(value, tuple) else (value,):
            _check_value(item, rule, where=where)


@dataclass(frozen=True)
class DataConfig:
    path: str = ""
    format: str = "auto"
    schema: str | None = None
    text_col: str = "text"
    id_col: str = "id"
    patient_col: str | None = None
    split_col: str | None = None
    labels_path: str | None = None
    uncertain_policy: str = "ones"
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    split_seed: int = 0
    # who wrote the training labels; None: read from the `dprad label` sidecar beside the table, if any
    teacher: str | None = None

    RANGES: ClassVar[dict[str, Range]] = {"fractions": ("float", 0.0, True, 1.0, True), "split_seed": ANY_INT}

    def __post_init__(self) -> None:
        check_numbers(self, "data")
        if self.teacher is not None and not self.teacher.strip():
            raise DpradError(
                "--teacher is empty: say who wrote the labels, or leave it out (config data.teacher)"
            )


@dataclass(frozen=True)
class ModelConfig:
    name: str = "minilm"  # "minilm" (packaged MiniLM-L6) or a local Hugging Face model directory
    pooling: str = "auto"  # auto (what the checkpoint was trained for), mean or cls
    max_length: int = 256
    # the frozen encoder's runtime in head modes (features, predict, serve): torch (fp32), int8 (torch
    # dynamic quantisation), onnx or onnx-int8 (ONNX Runtime); see dprad.encoder_runtime and
    # bench/encoder_paths.py. auto: onnx-int8 for a head on the CPU (the fastest path within 0.003 weighted
    # F1 of fp32 on every measured cell), torch for a GPU and for the modes that train the encoder. A
    # public, fixed map either way: the privacy accounting does not change
    encoder_runtime: str = "auto"

    RANGES: ClassVar[dict[str, Range]] = {"max_length": ("int", 2, True, math.inf, False)}
    RUNTIMES: ClassVar[tuple[str, ...]] = ("torch", "int8", "onnx", "onnx-int8")  # what a run records
    AUTO_CPU_RUNTIME: ClassVar[str] = "onnx-int8"  # what auto means for a head on the CPU

    def __post_init__(self) -> None:
        check_numbers(self, "model")
        if self.encoder_runtime not in ("auto", *self.RUNTIMES):
            raise DpradError(
                f"--encoder-runtime '{self.encoder_runtime}' must be one of auto, {', '.join(self.RUNTIMES)}"
            )


@dataclass(frozen=True)
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None  # None: per-architecture default (BERT: query, value)
    # LoRA in the top K layers only: the frozen bottom runs once per report (cached hidden states) and
    # each step runs only the top K layers. None: LoRA in every layer
    layers: int | None = None

    RANGES: ClassVar[dict[str, Range]] = {
        "r": COUNT,
        "alpha": POSITIVE,
        "dropout": ("float", 0.0, True, 1.0, False),
        "layers": COUNT,
    }

    def __post_init__(self) -> None:
        check_numbers(self, "lora")


@dataclass(frozen=True)
class PrivacyConfig:
    epsilon: float | None = None  # target epsilon: the noise multiplier is calibrated to spend at most this
    noise_multiplier: float | None = None  # or a fixed noise multiplier: epsilon is the output
    delta: float | None = None  # None: the largest power of ten <= 1/(10 n)
    max_grad_norm: float | None = None
    accountant: str = "pld"
    force_delta: bool = False  # allow delta >= 1/n (not recommended)
    # per-label decision thresholds: "dp" (chosen on the validation split under DP, inside epsilon),
    # "val" (validation split WITHOUT DP: an explicit opt-in the ledger flags), "0.5"; auto: dp when private
    thresholds: str = "auto"
    # the unit of privacy: "patient" (all of a patient's reports together) or "report"; auto: patient
    # whenever the training split has patients with several reports, else report
    unit: str = "auto"
    threshold_share: float = 0.1  # share of the target epsilon spent on DP thresholds
    # the threshold a label keeps when the DP (or exact) validation counts do not move it; fixed in advance
    # (privacy/thresholds.py:FALLBACK says how 0.3 was chosen)
    threshold_default: float = 0.3
    # None (the default, and the only setting for a model that will be shared): every DP draw (Poisson
    # batches, gradient noise, threshold histograms) comes from a generator keyed with 256 bits of OS
    # entropy that is never written down (privacy/noise.py). A number: draw them from this stated seed,
    # reproducible bit for bit (tests, research); the guarantee then holds only while the seed stays
    # secret, the ledger and card say so, and export / serve refuse the run without --force.
    noise_seed: int | None = None

    RANGES: ClassVar[dict[str, Range]] = {
        "noise_seed": NON_NEGATIVE_INT,
        "epsilon": POSITIVE,
        "noise_multiplier": POSITIVE,
        "delta": UNIT_OPEN,
        "max_grad_norm": POSITIVE,
        "threshold_share": UNIT_OPEN,
        "threshold_default": UNIT_OPEN,
    }

    def __post_init__(self) -> None:
        check_numbers(self, "privacy")
        # always checked, private run or not: a misspelt accountant must not wait for --epsilon to surface.
        # The names are privacy/accounting.py:ACCOUNTANTS (a layer above; tests/privacy keeps them equal)
        if self.accountant not in ("pld", "rdp", "prv"):
            raise DpradError(
                f"--accountant '{self.accountant}' is not one of pld, rdp, prv (config privacy.accountant)"
            )


@dataclass(frozen=True)
class TrainConfig:
    mode: str = "auto"
    epochs: float | None = None
    lr: float | None = None
    batch_size: int | None = None  # expected logical batch size (Poisson: q = batch_size / n)
    max_tokens: int = (
        8192  # tokens per physical micro-batch (memory; scoring on a CPU caps it at 2,048); not the maths
    )
    weight_decay: float = 0.0
    # public randomness only: initialisation, the canary draw, the order of non-private batches. Never a
    # DP draw (those come from privacy/noise.py; see privacy.noise_seed)
    seed: int = 0
    threads: int | None = None
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda[:i]
    checkpoint_every: int = 25  # steps
    # head modes and LP-FT probes: start the head from a fit on dprad's public synthetic corpus (no
    # privacy cost). None: on for private runs with a built-in schema (the only ones with public labels).
    public_warm_start: bool | None = None
    # head modes: the rule teacher's reading of each report (a public function of its text) as extra
    # inputs; None: on where the schema has rule vocabulary
    rule_prior: bool | None = None
    # head modes: keep encoder features in this folder and reuse them across runs (sweeps); they are
    # derived from the reports, so as sensitive as the reports. None: no cache.
    feature_cache: str | None = None
    # one-run privacy audit (Steinke, Nasr & Jagielski 2023): M canaries, each in the training split with
    # probability 1/2, scored after training into audit.json; never in the reported metrics
    audit_canaries: int = 0
    audit_rare_tokens: bool = False  # append rare random tokens to canaries (easier to memorise)
    # lora / full modes: linear probe, then fine-tune (LP-FT; Ke, Hou, Fanti & Oh, arXiv 2402.18905).
    # Phase 1 trains exactly what --mode head trains (frozen features, rule prior, public warm start, DP);
    # phase 2 fine-tunes the encoder starting from that head. None: on for lora and full
    probe: bool | None = None
    # private LP-FT: the share of the training budget (the target epsilon less the thresholds' share)
    # that phase 1 is calibrated to; phase 2 is calibrated so that both phases and the thresholds together
    # spend the target. 0.9: chosen on validation splits with LoraMode's defaults (see modes/lora.py)
    probe_share: float = 0.9
    # non-private lora / full: ship the epoch (epoch 0: LP-FT's probe, before any fine-tuning) whose
    # validation loss is lowest, rather than the last. None: on for non-private runs of those modes; refused
    # for private runs (choosing on the validation reports would be a release the ledger does not account)
    select_epoch: bool | None = None

    RANGES: ClassVar[dict[str, Range]] = {
        "epochs": POSITIVE,
        "lr": POSITIVE,
        "batch_size": COUNT,
        "max_tokens": COUNT,
        "weight_decay": NON_NEGATIVE,
        "seed": ANY_INT,
        "threads": COUNT,
        "checkpoint_every": COUNT,
        "audit_canaries": NON_NEGATIVE_INT,
        "probe_share": UNIT_OPEN,
    }

    def __post_init__(self) -> None:
        check_numbers(self, "train")


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def private(self) -> bool:
        """A run is private when it has a privacy target: an epsilon or a fixed noise multiplier."""
        return self.privacy.epsilon is not None or self.privacy.noise_multiplier is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "config") -> RunConfig:
        unknown = set(d) - set(SECTIONS) - set(INFORMATIONAL)
        if unknown:
            raise DpradError(
                f"{source}: unknown section(s) {sorted(unknown)} (expected {', '.join(SECTIONS)})"
            )
        parts = {f.name: f.type for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for name, sub in (
            ("data", DataConfig),
            ("model", ModelConfig),
            ("lora", LoraConfig),
            ("privacy", PrivacyConfig),
            ("train", TrainConfig),
        ):
            kwargs[name] = _build(sub, d.get(name) or {}, section=name, source=source)
        assert set(kwargs) == set(parts)
        return cls(**kwargs)

    def with_(self, **sections: Any) -> RunConfig:
        return replace(self, **sections)


T = TypeVar("T")


def _build(cls: type[T], d: dict[str, Any], *, section: str, source: str = "config") -> T:
    if not isinstance(d, dict):
        raise DpradError(f"{source}: section '{section}' must be a mapping, not {type(d).__name__}")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(d) - known
    if unknown:
        raise DpradError(f"{source}: section '{section}': unknown key(s) {sorted(unknown)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return cls(**values)
