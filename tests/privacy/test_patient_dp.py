"""Patient-level DP-SGD: per-patient sums clipped to C, checked against a brute-force loop, and the
report-level path held bit for bit to the step as it was before patient-level DP existed."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus import GradSampleModule

from dprad import CHEXPERT14, SynthConfig, generate_reports
from dprad.data.dataset import Encoded, collate, encode, micro_batches
from dprad.data.sampling import PatientPoissonSampler, patient_groups
from dprad.errors import DpradError
from dprad.local_models import load_tokenizer
from dprad.nn.loss import loss_per_example
from dprad.nn.model import ReportClassifier, attach_lora, load_encoder
from dprad.privacy.dp_step import clip_and_accumulate, per_sample_norms, private_step
from dprad.privacy.noise import NoiseSource, NoiseStream


def build(model_dir: Path, seed: int = 0) -> ReportClassifier:
    torch.manual_seed(seed)
    enc = attach_lora(load_encoder(model_dir), kind="bert", r=4, alpha=8, dropout=0.0, target_modules=None)
    for name, p in enc.named_parameters():
        if "lora_B" in name:  # B = 0 would make the A gradients vanish: start from a generic point
            torch.nn.init.normal_(p, std=0.02)
    model = ReportClassifier(enc, len(CHEXPERT14), pooling="mean")
    model.train()  # the tiny encoders have dropout 0: train mode is deterministic
    return model


def encoded(model_dir: Path, n: int) -> Encoded:
    reports = generate_reports(SynthConfig(n_patients=n, mean_reports_per_patient=1.0, seed=7))[:n]
    assert len(reports) == n
    return encode(reports, load_tokenizer(str(model_dir)), CHEXPERT14, max_length=64)


def loss_of(model: torch.nn.Module, enc: Encoded) -> Callable[[np.ndarray], torch.Tensor]:
    return lambda i: loss_per_example(model(*collate(enc, i)[:2]), enc.targets[i], enc.mask[i])


def flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
            for p in model.parameters()
            if p.requires_grad
        ]
    )


def brute_force_patient_grads(
    reference: torch.nn.Module, enc: Encoded, groups: np.ndarray
) -> dict[int, torch.Tensor]:
    """Each patient's gradient: plain backward over its reports one at a time (unpadded), summed."""
    out = {}
    for patient in np.unique(groups):
        reference.zero_grad(set_to_none=True)
        for i in np.flatnonzero(groups == patient):
            loss_of(reference, enc)(np.array([i])).sum().backward()
        out[int(patient)] = flat_grad(reference).clone()
    reference.zero_grad(set_to_none=True)
    return out


def step_delta(params: Sequence[torch.nn.Parameter], run: Callable[[], object]) -> torch.Tensor:
    """Run one step with SGD lr = 1 and expected batch size 1: the parameter change is minus the gradient."""
    before = [p.detach().clone() for p in params]
    run()
    delta = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, params, strict=True)])
    with torch.no_grad():
        for b, p in zip(before, params, strict=True):
            p.copy_(b)
    return delta


def test_patient_clipped_sum_equals_a_brute_force_loop(tiny_bert: Path) -> None:
    model = build(tiny_bert)
    reference = copy.deepcopy(model)
    enc = encoded(tiny_bert, 10)
    idx = np.arange(len(enc))
    mbs = micro_batches(idx, enc.lengths, max_tokens=150)
    assert len(mbs) >= 4 and all(len(mb) >= 2 for mb in mbs[:4])
    groups = np.full(len(enc), -1)
    groups[mbs[0]] = 0  # a patient whose reports share one micro-batch
    groups[[mbs[1][0], mbs[2][0]]] = 1  # one split across two micro-batches
    groups[mbs[1][1:]] = 2
    groups[np.concatenate([mbs[2][1:], mbs[3]])] = 3  # another split one, with 3+ reports
    rest = groups < 0
    groups[rest] = 4 + np.arange(rest.sum())  # single-report patients
    per_patient = brute_force_patient_grads(reference, enc, groups)
    norms = {g: float(v.norm()) for g, v in per_patient.items()}
    clip = float(np.median(list(norms.values())))  # some patients clipped, some not
    expected = sum(v * min(1.0, clip / (norms[g] + 1e-6)) for g, v in per_patient.items())
    assert isinstance(expected, torch.Tensor)

    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    params = [p for p in gsm.parameters() if p.requires_grad]
    delta = step_delta(
        params,
        lambda: private_step(
            params,
            torch.optim.SGD(params, lr=1.0),
            mbs,
            loss_of(gsm, enc),
            max_grad_norm=clip,
            noise_multiplier=0.0,
            expected_batch_size=1.0,
            noise=NoiseSource.from_seed(0).stream("test"),
            groups=groups,
        ),
    )
    assert float((delta - expected).norm() / expected.norm()) < 1e-5
    # and the report-level clipped sum differs: the test tells the two units apart
    report_level = sum(v * min(1.0, clip / (float(v.norm()) + 1e-6)) for v in per_report(reference, enc))
    assert isinstance(report_level, torch.Tensor)
    assert float((report_level - expected).norm() / expected.norm()) > 1e-2


def per_report(reference: torch.nn.Module, enc: Encoded) -> list[torch.Tensor]:
    return list(brute_force_patient_grads(reference, enc, np.arange(len(enc))).values())


def test_a_patient_with_20_reports_moves_the_model_no_more_than_one_with_1(tiny_bert: Path) -> None:
    model = build(tiny_bert)
    reference = copy.deepcopy(model)
    enc = encoded(tiny_bert, 21)
    groups = np.array([0] * 20 + [1])
    grads = brute_force_patient_grads(reference, enc, groups)
    clip = 0.5 * min(float(g.norm()) for g in grads.values())  # both patients are clipped
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    params = [p for p in gsm.parameters() if p.requires_grad]

    def move(idx: np.ndarray, unit_groups: np.ndarray | None) -> float:
        mbs = micro_batches(idx, enc.lengths, max_tokens=200)
        return float(
            step_delta(
                params,
                lambda: private_step(
                    params,
                    torch.optim.SGD(params, lr=1.0),
                    mbs,
                    loss_of(gsm, enc),
                    max_grad_norm=clip,
                    noise_multiplier=0.0,
                    expected_batch_size=1.0,
                    noise=NoiseSource.from_seed(0).stream("test"),
                    groups=unit_groups,
                ),
            ).norm()
        )

    heavy, light = move(np.arange(20), groups), move(np.array([20]), groups)
    assert heavy <= clip * (1 + 1e-5) and light <= clip * (1 + 1e-5)
    assert heavy == pytest.approx(clip, rel=1e-4) and light == pytest.approx(clip, rel=1e-4)
    # at report level the same 20 reports move the model by far more than C: what patient level prevents
    assert move(np.arange(20), None) > 5 * clip


def test_singleton_patients_equal_the_report_level_step(tiny_bert: Path) -> None:
    model = build(tiny_bert)
    enc = encoded(tiny_bert, 8)
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    params = [p for p in gsm.parameters() if p.requires_grad]
    mbs = micro_batches(np.arange(8), enc.lengths, max_tokens=120)
    a, _ = clip_and_accumulate(params, mbs, loss_of(gsm, enc), max_grad_norm=0.05)
    b, _ = clip_and_accumulate(params, mbs, loss_of(gsm, enc), max_grad_norm=0.05, groups=np.arange(8) + 100)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-8)


def old_private_step(
    params: Sequence[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    batches: Sequence[np.ndarray],
    loss_fn: Callable[[np.ndarray], torch.Tensor],
    *,
    max_grad_norm: float,
    noise_multiplier: float,
    expected_batch_size: float,
    noise: NoiseStream,
) -> float:
    """dprad.privacy.dp_step.private_step as it was before patient-level DP (frozen copy; its noise now
    drawn from the run's NoiseStream, as every DP draw is)."""
    summed = [torch.zeros_like(p) for p in params]
    total_loss = 0.0
    for idx in batches:
        losses = loss_fn(idx)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            losses.sum().backward()
        grad_samples = [p.grad_sample for p in params]  # type: ignore[attr-defined]
        factor = (max_grad_norm / (per_sample_norms(grad_samples) + 1e-6)).clamp(max=1.0)
        for acc, g in zip(summed, grad_samples, strict=True):
            acc += torch.einsum("b,b...->...", factor, g)
        for p in params:
            p.grad_sample = None  # type: ignore[attr-defined]
            p.grad = None
        total_loss += float(losses.detach().sum())
    std = noise_multiplier * max_grad_norm
    drawn = noise.gaussian_like(summed, std=std) if std > 0 else [torch.zeros_like(a) for a in summed]
    for p, acc, z in zip(params, summed, drawn, strict=True):
        p.grad = (acc + z) / expected_batch_size
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total_loss


@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_report_level_step_is_bit_for_bit_the_step_before(tiny_bert: Path, noise: float) -> None:
    enc = encoded(tiny_bert, 8)
    rng = np.random.default_rng(3)
    batches = [np.arange(8), rng.permutation(8)[:5], np.arange(8)]
    runs = []
    for step in (private_step, old_private_step):
        gsm = GradSampleModule(build(tiny_bert), batch_first=True, loss_reduction="sum")
        params = [p for p in gsm.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-2)
        gen = NoiseSource.from_seed(11).stream("test")
        losses = []
        for batch in batches:
            losses.append(
                step(
                    params,
                    opt,
                    micro_batches(batch, enc.lengths, max_tokens=120),
                    loss_of(gsm, enc),
                    max_grad_norm=0.05,
                    noise_multiplier=noise,
                    expected_batch_size=6.0,
                    noise=gen,
                )
            )
        runs.append(([p.detach().clone() for p in params], losses))
    (new, new_losses), (old, old_losses) = runs
    assert new_losses == old_losses
    assert all(torch.equal(x, y) for x, y in zip(new, old, strict=True))
    start = [p.detach() for p in build(tiny_bert).parameters() if p.requires_grad]
    assert all(not torch.equal(x, s) for x, s in zip(new, start, strict=True))  # every parameter moved


def test_patient_poisson_sampler_samples_patients_with_all_their_reports() -> None:
    groups = patient_groups([f"p{k}" for k in np.random.default_rng(0).integers(0, 200, size=700)])
    assert groups.max() + 1 == len(np.unique(groups))
    q, steps = 0.05, 400
    sampler = PatientPoissonSampler(groups, q, np.random.default_rng(1))
    assert (
        sampler.name == "poisson-patient" and sampler.n == len(np.unique(groups)) and sampler.n_reports == 700
    )
    hits = np.zeros(sampler.n)
    sizes = []
    for _ in range(steps):
        batch = sampler.sample()
        assert np.all(np.diff(batch) > 0)
        chosen = np.unique(groups[batch])
        assert len(batch) == np.isin(groups, chosen).sum()  # every report of a sampled patient, nothing else
        hits[chosen] += 1
        sizes.append(len(chosen))
    rate = hits.sum() / (sampler.n * steps)
    assert abs(rate - q) < 3 * np.sqrt(q * (1 - q) / (sampler.n * steps))
    assert np.std(sizes) > 0
    tiny = PatientPoissonSampler(np.array([0, 0, 1]), 0.01, np.random.default_rng(2))
    assert min(tiny.sample().size for _ in range(50)) == 0  # empty batches happen
    with pytest.raises(DpradError, match="integer"):
        PatientPoissonSampler(np.array([0.5, 1.0]), 0.1, np.random.default_rng(0))
    with pytest.raises(DpradError, match="sample rate"):
        PatientPoissonSampler(np.array([0, 1]), 1.5, np.random.default_rng(0))
