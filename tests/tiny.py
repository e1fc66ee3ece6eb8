"""Tiny random-init encoders with the default tokenizer, written to a local model directory (no download)."""

from __future__ import annotations

import shutil
from pathlib import Path

from dprad.local_models import resolve_model_dir

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def make_tiny_encoder(path: Path, arch: str = "bert", *, seed: int = 0) -> Path:
    import torch
    from transformers import AlbertConfig, AlbertModel, BertConfig, BertModel

    src = resolve_model_dir("minilm")
    path.mkdir(parents=True, exist_ok=True)
    common = dict(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if arch == "bert":
            model = BertModel(BertConfig(**common), add_pooling_layer=False)
        elif arch == "albert":
            model = AlbertModel(
                AlbertConfig(embedding_size=16, classifier_dropout_prob=0.0, **common),
                add_pooling_layer=False,
            )
        else:
            raise ValueError(arch)
    model.save_pretrained(str(path))
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, path / name)
    return path
