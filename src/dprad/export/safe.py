"""The safe list: every file an export may hold and why it is safe to share, and what a run holds that an
export leaves out, and why. The export writes nothing that is not named here (it checks before it
publishes), and ``MANIFEST.json`` quotes these reasons file by file."""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatch

from dprad.run import files

# the weights in an export's model/ (safetensors: a run's model/ holds the same tensors as torch pickles)
HEAD_FILE = f"{files.MODEL}/{files.HEAD_WEIGHTS}.safetensors"
CENTER_FILE = f"{files.MODEL}/{files.CENTER_WEIGHTS}.safetensors"

MANIFEST_WHY = "this list: every file of the export, its SHA-256 and why it is safe to share"

# every export, whatever the mode. "{trained}" is how the run trained its weights, read from its ledger
# (``trained``); thresholds.json's reason is read from the run's thresholds and config (``thresholds_why``)
COMMON: dict[str, str] = {
    files.CONFIG: "the run's resolved settings (no report text or ids), needed to load the model: local "
    "paths replaced by their names (derived.data_sha256: the training file's SHA-256 where it could be read), "
    "no noise seed; derived.model_dir names the bundled encoder/",
    files.PRIVACY: "the privacy ledger as the run wrote it, every number of the guarantee unchanged (its "
    "epsilon recomputed from its own accounting event), with local paths replaced by names and no size of "
    "the validation or test split",
    files.SCHEMA: "the label schema (label names, critical labels, rule vocabulary): definitions, no data",
    files.THRESHOLDS: "the shipped per-label thresholds",
    files.MODEL_CARD: "the model card, quoting only what this export holds",
    HEAD_FILE: "the classification head (with the public feature centre its inputs are centred on), {trained}",
}
DP_SGD = "trained with DP-SGD"
NO_DP = "trained WITHOUT differential privacy: no privacy guarantee (exported with --force)"
LEDGER_NO_DP = (
    "the run's ledger as it wrote it, with local paths replaced by names: it records that the model was "
    "trained WITHOUT differential privacy"
)
CENTER: dict[str, str] = {
    CENTER_FILE: "LP-FT: the mean feature of dprad's public synthetic corpus (public data, no privacy cost)",
}
MODE_FILES: dict[str, dict[str, str]] = {
    "head": {},
    "lora": {
        f"{files.MODEL}/adapter/adapter_model.safetensors": "the LoRA adapters, {trained}",
        f"{files.MODEL}/adapter/adapter_config.json": "the LoRA settings (rank, alpha, target modules)",
    },
    "full": {
        f"{files.MODEL}/encoder/model.safetensors": "the fine-tuned encoder, {trained} (under DP its "
        "embeddings stay frozen at the base model's)",
        f"{files.MODEL}/encoder/config.json": "the fine-tuned encoder's architecture",
    },
}

# encoder/: the base encoder the run started from, as published by others (config, weights, tokenizer)
PUBLIC_BASE = "the public base encoder, pre-trained by others and never trained on these reports"
ENCODER_FILES: dict[str, str] = {
    "config.json": f"{PUBLIC_BASE}: its architecture",
    "model.safetensors": f"{PUBLIC_BASE}: its weights",
    "model-*-of-*.safetensors": f"{PUBLIC_BASE}: its weights (one shard)",
    "model.safetensors.index.json": f"{PUBLIC_BASE}: the index of its weight shards",
    **{
        name: f"{PUBLIC_BASE}: its tokenizer"
        for name in (
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "added_tokens.json",
            "vocab.txt",
            "vocab.json",
            "merges.txt",
            "spiece.model",
            "sentencepiece.bpe.model",
            "spm.model",
        )
    },
    "1_Pooling/config.json": f"{PUBLIC_BASE}: the pooling it declares",
    "README.md": f"{PUBLIC_BASE}: its own model card (its licence)",
    "LICENSE": f"{PUBLIC_BASE}: its licence",
}
ENCODER_DIR = files.ENCODER

# --include evaluation: outside the guarantee, and the card says so in its first lines
EVALUATION: dict[str, str] = {
    files.EVALUATION: "INCLUDED ON REQUEST (--include evaluation): computed on private data WITHOUT DP",
    files.OTHER_EVALUATIONS: "INCLUDED ON REQUEST (--include evaluation): computed on private data WITHOUT DP",
}
INCLUDES = ("evaluation",)

# what a run holds that an export leaves out
LEFT_OUT: dict[str, str] = {
    files.SPLITS: "names the reports, and so the patients, in each split",
    files.HISTORY: "per-step training losses computed without noise",
    files.METRICS: "validation and test metrics computed on private data without DP",
    files.REFERENCE: "test-split score statistics computed without DP (the monitor's baseline)",
    files.EVALUATIONS: "evaluations on private data without DP (--include evaluation adds them)",
    files.AUDIT: "attack and canary results computed on private data",
    files.NOTES: "training notes, which can hold counts of the private data",
    files.CHECKPOINT: "a training checkpoint (optimizer and sampler state)",
    files.MODEL_CARD: "the run's own card quotes non-DP metrics: the export writes its own",
    f"{files.MODEL}/*.pt": "torch pickles: the export holds the same weights as safetensors",
    f"{files.MODEL}/adapter/README.md": "peft's boilerplate card, naming a local path",
}
NOT_ON_LIST = "not on the safe list"


def safe_files(mode: str, *, lp_ft: bool, private: bool) -> dict[str, str]:
    """The files an export of a run in ``mode`` holds outside ``encoder/`` (and MANIFEST.json), with why;
    ``private``: whether the run's ledger says its weights were trained with DP-SGD."""
    listed = {**COMMON, **(CENTER if lp_ft else {}), **MODE_FILES[mode]}
    if not private:
        listed[files.PRIVACY] = LEDGER_NO_DP
    return {name: why.replace("{trained}", DP_SGD if private else NO_DP) for name, why in listed.items()}


def thresholds_why(fitted_on: str | None, rule: str, *, epsilon: float | None, default: float) -> str:
    """Why thresholds.json may be shared, from how the run chose its thresholds (``Thresholds``) and its
    ``privacy.threshold_default``."""
    if fitted_on is None:
        return f"the shipped per-label thresholds: {rule}, fixed before training (no data, no privacy cost)"
    if "(DP)" in fitted_on:
        cost = f" (ε = {epsilon:.3g})" if epsilon is not None else ""
        return (
            "the shipped per-label thresholds: chosen on the validation split under DP (noisy score "
            f"histograms), inside the ledger's epsilon{cost}; a label whose noisy counts did not move it keeps "
            f"the default {default:g} (privacy.threshold_default)"
        )
    if "NOT private" in fitted_on:
        return (
            "the shipped per-label thresholds: fitted on the private validation split WITHOUT DP, outside the "
            "guarantee (exported with --force; the card says so first)"
        )
    return (
        "the shipped per-label thresholds: fitted on the validation split of a run trained without DP "
        "(exported with --force)"
    )


def encoder_why(name: str) -> str | None:
    """Why a file of the base encoder (a path inside its folder) is safe, or None: not on the list."""
    return next((why for pattern, why in ENCODER_FILES.items() if fnmatch(name, pattern)), None)


def left_out_why(name: str) -> str:
    """Why a run's file (a path inside the run) is not in the export."""
    return next((why for pattern, why in LEFT_OUT.items() if fnmatch(name, pattern)), NOT_ON_LIST)


def evaluation_why(name: str) -> str | None:
    return next((why for pattern, why in EVALUATION.items() if fnmatch(name, pattern)), None)


def unknown_includes(include: Iterable[str]) -> list[str]:
    return [i for i in include if i not in INCLUDES]
