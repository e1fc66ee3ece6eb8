"""The guards that matter: per-sample gradients, clipping, noise-free equivalence, Poisson sampling."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus import GradSampleModule

from dprad import CHEXPERT14, SynthConfig, generate_reports
from dprad.data.dataset import (
    PoissonSampler,
    ShuffleSampler,
    collate,
    encode,
    inference_batches,
    micro_batches,
)
from dprad.errors import DpradError
from dprad.local_models import load_tokenizer
from dprad.nn.loss import loss_per_example
from dprad.nn.model import ReportClassifier, attach_lora, encoder_type, freeze_for_dp_full, load_encoder
from dprad.privacy.dp_step import per_sample_norms, plain_step, private_step
from dprad.privacy.noise import NoiseSource
from dprad.stages.train import check_sampler


def build(model_dir: Path, *, lora: bool = True, seed: int = 0) -> ReportClassifier:
    torch.manual_seed(seed)
    enc = load_encoder(model_dir)
    if lora:
        enc = attach_lora(enc, kind=encoder_type(model_dir), r=4, alpha=8, dropout=0.0, target_modules=None)
        # LoRA's B starts at zero, which would make the A gradients vanish: start from a generic point
        for name, p in enc.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
    else:
        freeze_for_dp_full(enc)
    model = ReportClassifier(enc, len(CHEXPERT14), pooling="mean")
    model.train()  # the tiny encoders have dropout 0: train mode is deterministic (opacus hooks need it)
    return model


def batch(model_dir: Path, n: int = 6):
    reports = generate_reports(SynthConfig(n_patients=n, mean_reports_per_patient=1.0, seed=5))[:n]
    enc = encode(reports, load_tokenizer(str(model_dir)), CHEXPERT14, max_length=64)
    return enc, np.arange(len(enc))


@pytest.mark.parametrize(("arch", "lora"), [("tiny_bert", True), ("tiny_albert", True), ("tiny_bert", False)])
def test_per_sample_gradients_match_a_per_example_loop(
    arch: str, lora: bool, request: pytest.FixtureRequest
) -> None:
    model_dir = request.getfixturevalue(arch)
    model = build(model_dir, lora=lora)
    reference = copy.deepcopy(model)  # no opacus hooks on this one
    enc, idx = batch(model_dir)
    assert len(set(enc.lengths.tolist())) > 1  # padding is exercised
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    params = [p for p in gsm.parameters() if p.requires_grad]
    input_ids, attention, _, _ = collate(enc, idx)
    loss_per_example(gsm(input_ids, attention), enc.targets[idx], enc.mask[idx]).sum().backward()
    fast = [p.grad_sample.detach().clone() for p in params]
    for p in params:
        p.grad_sample = None
        p.grad = None
    ref_params = [p for p in reference.parameters() if p.requires_grad]
    assert len(ref_params) == len(params)
    for i in idx:  # brute force: one example at a time, unpadded
        reference.zero_grad(set_to_none=True)
        ids, att, _, _ = collate(enc, np.array([i]))
        loss_per_example(reference(ids, att), enc.targets[[i]], enc.mask[[i]]).sum().backward()
        refs = [p.grad if p.grad is not None else torch.zeros_like(p) for p in ref_params]
        whole = torch.cat([r.flatten() for r in refs]).norm()
        got = torch.cat([g[i].flatten() for g in fast])
        assert float((got - torch.cat([r.flatten() for r in refs])).norm() / whole) < 1e-5, (arch, lora)
        for g, r in zip(fast, refs, strict=True):
            # each parameter to 1e-5 relative error; parameters whose true gradient is ~0 (BERT's key bias:
            # softmax is shift-invariant) are held to 1e-7 of the example's whole gradient instead
            assert float((g[i] - r).norm()) <= 1e-5 * max(float(r.norm()), 1e-2 * float(whole)), (arch, lora)
    assert any("lora_A" in n for n, p in gsm.named_parameters() if p.requires_grad) == lora


def test_noise_free_unclipped_dp_step_equals_plain_step(tiny_bert: Path) -> None:
    a = build(tiny_bert)
    b = copy.deepcopy(a)
    enc, idx = batch(tiny_bert)
    gsm = GradSampleModule(a, batch_first=True, loss_reduction="sum")
    pa = [p for p in gsm.parameters() if p.requires_grad]
    pb = [p for p in b.parameters() if p.requires_grad]
    oa, ob = torch.optim.SGD(pa, lr=0.5), torch.optim.SGD(pb, lr=0.5)

    def loss(model: torch.nn.Module):
        return lambda i: loss_per_example(model(*collate(enc, i)[:2]), enc.targets[i], enc.mask[i])

    mbs = micro_batches(idx, enc.lengths, max_tokens=64)  # several micro-batches: accumulation is exercised
    assert len(mbs) > 1
    private_step(
        pa,
        oa,
        mbs,
        loss(gsm),
        max_grad_norm=1e12,
        noise_multiplier=0.0,
        expected_batch_size=len(idx),
        noise=NoiseSource.from_seed(0).stream("test"),
    )
    plain_step(pb, ob, [idx], loss(b), batch_size=len(idx))
    for x, y in zip(pa, pb, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


def test_clipping_bounds_every_per_sample_gradient(tiny_bert: Path) -> None:
    model = build(tiny_bert)
    enc, idx = batch(tiny_bert)
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    params = [p for p in gsm.parameters() if p.requires_grad]
    raw = []
    for i in idx:
        loss_per_example(
            gsm(*collate(enc, np.array([i]))[:2]), enc.targets[[i]], enc.mask[[i]]
        ).sum().backward()
        raw.append(float(per_sample_norms([p.grad_sample for p in params])[0]))
        for p in params:
            p.grad_sample = None
            p.grad = None
    clip = float(np.median(raw))  # half the examples are clipped, half are not
    for i, norm in zip(idx, raw, strict=True):
        before = [p.detach().clone() for p in params]
        opt = torch.optim.SGD(params, lr=1.0)
        private_step(
            params,
            opt,
            [np.array([i])],
            lambda j: loss_per_example(gsm(*collate(enc, j)[:2]), enc.targets[j], enc.mask[j]),
            max_grad_norm=clip,
            noise_multiplier=0.0,
            expected_batch_size=1.0,
            noise=NoiseSource.from_seed(0).stream("test"),
        )
        step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, params, strict=True)]).norm()
        assert float(step) <= clip * (1 + 1e-5)
        assert float(step) == pytest.approx(min(norm, clip), rel=1e-4)
        with torch.no_grad():  # back to the same point for the next example
            for b, p in zip(before, params, strict=True):
                p.copy_(b)


def test_empty_poisson_batch_still_adds_noise(tiny_bert: Path) -> None:
    model = build(tiny_bert)
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    params = [p for p in gsm.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    private_step(
        params,
        torch.optim.SGD(params, lr=1.0),
        [],
        lambda i: torch.zeros(0),
        max_grad_norm=1.0,
        noise_multiplier=1.0,
        expected_batch_size=4.0,
        noise=NoiseSource.from_seed(0).stream("test"),
    )
    moved = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, params, strict=True)])
    assert moved.abs().sum() > 0  # noise only, scaled by 1 / expected batch size
    assert float(moved.std()) == pytest.approx(1.0 / 4.0, rel=0.1)


def test_poisson_inclusion_rate_and_refusal_of_other_samplers() -> None:
    rng = np.random.default_rng(0)
    n, q, steps = 500, 0.05, 400
    sampler = PoissonSampler(n, q, rng)
    counts = np.zeros(n)
    sizes = []
    for _ in range(steps):
        b = sampler.sample()
        counts[b] += 1
        sizes.append(len(b))
    rate = counts.sum() / (n * steps)
    assert abs(rate - q) < 3 * np.sqrt(q * (1 - q) / (n * steps))
    assert np.std(sizes) > 0  # batch sizes vary
    assert min(PoissonSampler(50, 0.01, np.random.default_rng(1)).sample().size for _ in range(50)) == 0
    check_sampler(sampler, private=True)
    with pytest.raises(DpradError, match="Poisson"):
        check_sampler(ShuffleSampler(n, 25, rng), private=True)


def test_micro_batches_cover_the_batch_and_respect_the_token_budget() -> None:
    lengths = np.array([5, 50, 7, 30, 200, 9, 12, 64])
    idx = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    mbs = micro_batches(idx, lengths, max_tokens=128)
    assert sorted(np.concatenate(mbs).tolist()) == idx.tolist()
    for mb in mbs:
        assert len(mb) == 1 or len(mb) * lengths[mb].max() <= 128
    assert micro_batches(np.array([], dtype=int), lengths, max_tokens=128) == []


def padded_tokens(batches: list[np.ndarray], lengths: np.ndarray) -> int:
    return sum(len(b) * int(lengths[b].max()) for b in batches)


def test_inference_batches_cut_padding_and_keep_every_report_once() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(17, 137, size=256)  # a server's micro-batch of report lengths
    idx = rng.permutation(256)[:200]
    max_tokens, floor = 2048, 2048 // 8
    batches = inference_batches(idx, lengths, max_tokens=max_tokens, max_padding=0.05)
    assert sorted(np.concatenate(batches).tolist()) == sorted(idx.tolist())
    for b in batches:
        assert len(b) == 1 or len(b) * lengths[b].max() <= max_tokens
        waste = 1 - lengths[b].sum() / (len(b) * lengths[b].max())
        # a batch pads more than 5% only when it was still under the floor before its longest report
        assert waste <= 0.05 or lengths[b].sum() - lengths[b].max() < floor
    plain = micro_batches(idx, lengths, max_tokens=max_tokens)
    real = int(lengths[idx].sum())
    assert padded_tokens(batches, lengths) / real < 1.06 < padded_tokens(plain, lengths) / real
    assert inference_batches(np.array([], dtype=int), lengths, max_tokens=128) == []
