"""Typed, frozen configuration: one dataclass per concern, combined into a RunConfig.

``None`` means "let dprad choose"; :func:`dprad.train.resolve` replaces every ``None`` by the value it
chose, and that resolved config is what a run directory's ``config.json`` holds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, TypeVar

from dprad.errors import DpradError

MODES = ("auto", "dp-head", "dp-lora", "dp-full", "head", "lora", "full")
PRIVATE_MODES = ("dp-head", "dp-lora", "dp-full")


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


@dataclass(frozen=True)
class ModelConfig:
    name: str = "minilm"  # "minilm" (packaged MiniLM-L6) or a local Hugging Face model directory
    pooling: str = "auto"  # auto (what the checkpoint was trained for), mean or cls
    max_length: int = 256


@dataclass(frozen=True)
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None  # None: per-architecture default (BERT: query, value)


@dataclass(frozen=True)
class PrivacyConfig:
    epsilon: float | None = None  # target epsilon: the noise multiplier is calibrated to spend at most this
    noise_multiplier: float | None = None  # or a fixed noise multiplier: epsilon is the output
    delta: float | None = None  # None: the largest power of ten <= 1/(10 n)
    max_grad_norm: float | None = None
    accountant: str = "pld"
    force_delta: bool = False  # allow delta >= 1/n (not recommended)


@dataclass(frozen=True)
class TrainConfig:
    mode: str = "auto"
    epochs: float | None = None
    lr: float | None = None
    batch_size: int | None = None  # expected logical batch size (Poisson: q = batch_size / n)
    max_tokens: int = 8192  # tokens per physical micro-batch (memory); does not change the maths
    weight_decay: float = 0.0
    seed: int = 0
    threads: int | None = None
    checkpoint_every: int = 25  # steps
    # head modes: start the head from a fit on dprad's public synthetic corpus (no privacy cost).
    # None: on for dp-head with a built-in schema at eps < 4, where it was measured to help.
    public_warm_start: bool | None = None


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def private(self) -> bool:
        return self.train.mode in PRIVATE_MODES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        parts = {f.name: f.type for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for name, sub in (
            ("data", DataConfig),
            ("model", ModelConfig),
            ("lora", LoraConfig),
            ("privacy", PrivacyConfig),
            ("train", TrainConfig),
        ):
            kwargs[name] = _build(sub, d.get(name) or {}, section=name)
        assert set(kwargs) == set(parts)
        return cls(**kwargs)

    def with_(self, **sections: Any) -> RunConfig:
        return replace(self, **sections)


T = TypeVar("T")


def _build(cls: type[T], d: dict[str, Any], *, section: str) -> T:
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(d) - known
    if unknown:
        raise DpradError(f"config section '{section}': unknown key(s) {sorted(unknown)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return cls(**values)
