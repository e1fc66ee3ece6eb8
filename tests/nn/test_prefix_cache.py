"""Frozen-prefix caching: the cached-prefix model is the full model (logits and per-sample gradients)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus import GradSampleModule

from dprad import CHEXPERT14, SynthConfig, generate_reports
from dprad.data.dataset import Encoded, collate, encode
from dprad.errors import DpradError
from dprad.local_models import load_tokenizer
from dprad.nn.loss import loss_per_example
from dprad.nn.model import attach_lora, load_encoder
from dprad.nn.prefix_cache import PrefixLoraClassifier, attach_top_lora, cache_hidden_states, split_encoder


def encoded(model_dir: Path, n: int = 7) -> Encoded:
    reports = generate_reports(SynthConfig(n_patients=n, mean_reports_per_patient=1.0, seed=3))[:n]
    enc = encode(reports, load_tokenizer(str(model_dir)), CHEXPERT14, max_length=64)
    assert len(set(enc.lengths.tolist())) > 2  # padding is exercised
    return enc


def lora_encoder(model_dir: Path, k: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return attach_top_lora(load_encoder(model_dir), k=k, r=4, alpha=8, dropout=0.0)


def randomise_lora_b(encoder: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


@pytest.mark.parametrize("k", [1, 2])
def test_prefix_logits_equal_the_full_model(tiny_bert: Path, k: int) -> None:
    encoder = lora_encoder(tiny_bert, k)
    lora_layers = {
        int(n.split(".layer.")[1].split(".")[0]) for n, _ in encoder.named_parameters() if "lora_" in n
    }
    assert lora_layers == set(range(2 - k, 2))  # LoRA in the top k layers only
    bottom, top = split_encoder(encoder, k)
    assert len(top.layers) == k and len(bottom.layers) == 2 - k
    enc = encoded(tiny_bert)
    cache = cache_hidden_states(bottom, enc, max_tokens=100)  # several micro-batches
    assert len(cache) == len(enc) and [cache[i].shape[0] for i in range(len(enc))] == enc.lengths.tolist()
    model = PrefixLoraClassifier(top, len(CHEXPERT14), pooling="mean")
    full = model.full_classifier(encoder)
    model.eval()
    full.eval()
    idx = np.arange(len(enc))
    ids, att, _, _ = collate(enc, idx)
    hidden, att_cached = cache.batch(idx)
    assert torch.equal(att, att_cached)
    with torch.no_grad():
        zero_lora = model(hidden, att)  # (B, L)
        torch.testing.assert_close(zero_lora, full(ids, att), rtol=1e-5, atol=1e-5)
        randomise_lora_b(encoder)  # a live adapter: the top layers must apply it exactly as the full model
        live = model(hidden, att)
        torch.testing.assert_close(live, full(ids, att), rtol=1e-5, atol=1e-5)
    assert float((live - zero_lora).abs().max()) > 1e-2  # the adapter changed the logits


def test_per_sample_gradients_of_the_top_equal_a_per_example_loop_through_the_full_model(
    tiny_bert: Path,
) -> None:
    encoder = lora_encoder(tiny_bert, 1)
    randomise_lora_b(encoder)
    bottom, top = split_encoder(encoder, 1)
    enc = encoded(tiny_bert)
    cache = cache_hidden_states(bottom, enc, max_tokens=4096)
    model = PrefixLoraClassifier(top, len(CHEXPERT14), pooling="mean")
    model.train()  # dropout is 0 in the tiny encoder
    reference = copy.deepcopy(model.full_classifier(encoder))  # no opacus hooks; whole model over token ids
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    params = [p for p in gsm.parameters() if p.requires_grad]
    assert sum("lora_A" in n for n, p in gsm.named_parameters() if p.requires_grad) == 2  # query, value
    idx = np.arange(len(enc))
    hidden, att = cache.batch(idx)
    loss_per_example(gsm(hidden, att), enc.targets[idx], enc.mask[idx]).sum().backward()
    fast = [p.grad_sample.detach().clone() for p in params]
    ref_params = [p for p in reference.parameters() if p.requires_grad]
    assert [p.shape for p in ref_params] == [p.shape for p in params]
    for i in idx:
        reference.zero_grad(set_to_none=True)
        ids, a, _, _ = collate(enc, np.array([i]))
        loss_per_example(reference(ids, a), enc.targets[[i]], enc.mask[[i]]).sum().backward()
        want = torch.cat([p.grad.flatten() for p in ref_params])  # type: ignore[union-attr]
        got = torch.cat([g[i].flatten() for g in fast])
        assert float(want.norm()) > 0
        assert float((got - want).norm() / want.norm()) < 1e-5


def test_refusals(tiny_bert: Path, tiny_albert: Path) -> None:
    with pytest.raises(DpradError, match="ALBERT"):
        split_encoder(load_encoder(tiny_albert), 1)
    everywhere = attach_lora(
        load_encoder(tiny_bert), kind="bert", r=4, alpha=8, dropout=0.0, target_modules=None
    )
    with pytest.raises(DpradError, match="below the top"):
        split_encoder(everywhere, 1)
    with pytest.raises(DpradError, match="has 2 layers"):
        split_encoder(load_encoder(tiny_bert), 3)
