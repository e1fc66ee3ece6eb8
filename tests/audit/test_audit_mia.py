"""Membership inference metrics, LiRA, RMIA, reference models and `dprad audit` on tiny real runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from dprad import CHEXPERT14, DpradError, SynthConfig, generate_reports
from dprad.audit.canaries import canary_section, make_canaries
from dprad.audit.lira import lira_scores, true_label_logit
from dprad.audit.mia import attack_metrics, bootstrap_attack, confidence_scores, roc, slices
from dprad.audit.rmia import fit_offline_a, rmia_scores
from dprad.audit.run_audit import MAX_SCORED, audit_run
from dprad.commands.audit import register
from dprad.config import DataConfig, ModelConfig, PrivacyConfig, RunConfig, TrainConfig
from dprad.data.table import reports_frame, write_table
from dprad.modes.reference import HeadRecipe, random_halves, run_reference_models, train_head
from dprad.run import RunRecord
from dprad.stages.train import train

# ---- metrics ----


def test_lira_pooled_variance_ignores_masked_labels() -> None:
    """Every example's phi varies the same way across reference models, so masking one example's label
    must leave the pooled variance, hence the other examples' scores, unchanged."""
    rng = np.random.default_rng(0)
    k, n, n_labels = 8, 6, 2
    keep = np.zeros((k, n), bool)
    keep[::2] = True  # each example in half of the reference models
    logits = rng.normal(size=(n, n_labels))[None] + rng.normal(size=(k, 1, 1))  # (K, N, L): same spread
    target = rng.normal(size=(n, n_labels))
    y = np.ones((n, n_labels))
    mask = np.ones((n, n_labels))
    full = lira_scores(
        true_label_logit(target, y, mask), true_label_logit(logits, y, mask), keep, online=False
    )
    mask[1, 0] = 0
    part = lira_scores(
        true_label_logit(target, y, mask), true_label_logit(logits, y, mask), keep, online=False
    )
    others = np.arange(n) != 1
    np.testing.assert_allclose(part[others], full[others], rtol=1e-12)


def test_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    a = np.round(rng.normal(0.5, 1, 300), 1)  # rounded: many ties within and across groups
    b = np.round(rng.normal(0, 1, 400), 1)
    y = np.r_[np.ones(300), np.zeros(400)]
    assert attack_metrics(a, b)["auc"] == pytest.approx(roc_auc_score(y, np.r_[a, b]), abs=1e-12)


def test_low_fpr_and_advantage_by_hand() -> None:
    members = np.array([10.0, 9.0, 1.0, 0.5])
    nonmembers = np.array([8.0, 0.0, -1.0, -2.0, -3.0])
    fpr, tpr = roc(members, nonmembers)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    m = attack_metrics(members, nonmembers, fprs=(0.0, 0.2))
    assert m["tpr_at_0_fpr"] == 0.5  # two members above the best non-member
    assert m["tpr_at_0.2_fpr"] == 1.0
    assert m["advantage"] == pytest.approx(1.0 - 0.2)


def test_bootstrap_cis() -> None:
    rng = np.random.default_rng(1)
    same = bootstrap_attack(rng.normal(size=500), rng.normal(size=500), rng=rng, n_boot=300)
    assert same["auc"]["ci_low"] < 0.5 < same["auc"]["ci_high"]
    apart = bootstrap_attack(rng.normal(3, 1, 500), rng.normal(size=500), rng=rng, n_boot=300)
    assert apart["auc"]["ci_low"] > 0.95 and apart["tpr_at_0.01_fpr"]["estimate"] > 0.5
    with pytest.raises(DpradError, match="NaN"):
        bootstrap_attack(np.array([np.nan, 1.0]), np.array([0.0]), rng=rng)


def test_confidence_scores_and_slices() -> None:
    assert confidence_scores(np.array([[0.9, 0.2], [0.5, 0.5]])).tolist() == pytest.approx([0.85, 0.5])
    reps = generate_reports(SynthConfig(n_patients=80, seed=2))
    ym = np.zeros((len(reps), 3))
    ym[:40, 0] = 1
    got = slices(reps, reps, ["a", "b", "c"], member_targets=ym, nonmember_targets=ym)
    assert "label=a (rare)" not in got and "label=a" in got and "label=b" not in got
    assert any(k.startswith("sex=") for k in got) and any(k.startswith("site=") for k in got)


# ---- LiRA and RMIA on simulated reference models ----


def _simulated(shift: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Logits of K reference models and a target on N examples, L labels: being trained on an example
    raises the logit of its true label by `shift` (plus per-example difficulty and model noise)."""
    k, n, lab = 16, 400, 5
    keep = random_halves(n, k, rng)  # (K, N)
    y = (rng.random((n, lab)) < 0.3).astype(np.float32)
    sign = np.where(y > 0.5, 1.0, -1.0)
    base = rng.normal(1.0, 2.0, (n, lab))  # per-example difficulty on the true label
    ref = sign * (base + shift * keep[:, :, None] + rng.normal(0, 0.5, (k, n, lab)))
    member = rng.random(n) < 0.5
    target = sign * (base + shift * member[:, None] + rng.normal(0, 0.5, (n, lab)))
    return ref, keep, y, np.ones_like(y), target, member


@pytest.mark.parametrize("online", [True, False])
def test_lira_finds_members_and_only_members(online: bool) -> None:
    rng = np.random.default_rng(3)
    for shift, lo, hi in ((1.0, 0.85, 1.0), (0.0, 0.4, 0.6)):
        ref, keep, y, mask, target, member = _simulated(shift, rng)
        s = lira_scores(
            true_label_logit(target, y, mask), true_label_logit(ref, y, mask), keep, online=online
        )
        auc = roc_auc_score(member, s)
        assert lo < auc < hi, (shift, auc)
    # the loss attack, blind to per-example difficulty, does much worse than LiRA on the same data
    ref, keep, y, mask, target, member = _simulated(1.0, rng)
    phi = true_label_logit(target, y, mask)
    assert roc_auc_score(member, phi.sum(1)) < roc_auc_score(
        member, lira_scores(phi, true_label_logit(ref, y, mask), keep, online=online)
    )


@pytest.mark.parametrize("offline", [False, True])
def test_rmia_finds_members_and_only_members(offline: bool) -> None:
    rng = np.random.default_rng(4)
    for shift, lo, hi in ((1.0, 0.8, 1.0), (0.0, 0.4, 0.6)):
        ref, keep, y, mask, target, member = _simulated(shift, rng)
        pop = ~member  # population: reports the target was not trained on
        s = rmia_scores(
            target,
            ref,
            keep,
            y,
            mask,
            population_logits=target[pop],
            population_ref_logits=ref[:, pop],
            population_keep=keep[:, pop],
            population_targets=y[pop],
            population_mask=mask[pop],
            gamma=1.0,
            offline=offline,
        )
        assert s.min() >= 0 and s.max() <= 1
        assert lo < roc_auc_score(member, s) < hi


def test_offline_a_is_recovered() -> None:
    rng = np.random.default_rng(5)
    k, n = 8, 300
    keep = random_halves(n, k, rng)
    assert (keep.sum(0) == k // 2).all() and abs(keep.sum(1).mean() - n / 2) < 1
    p_out = rng.uniform(0.05, 0.9, (n, 1))
    p_in = 0.4 * p_out + 0.6  # a = 0.4
    p = np.where(keep[:, :, None], p_in, p_out)  # (K, N, 1) probability of the true label (positive)
    logits = np.log(p) - np.log1p(-p)
    assert fit_offline_a(logits, keep, np.ones((n, 1)), np.ones((n, 1))) == pytest.approx(0.4, abs=1e-6)


# ---- reference heads ----


def test_reference_head_learns_and_private_head_with_huge_noise_does_not() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    y = (x[:, :3] > 0).astype(np.float32)
    mask = np.ones_like(y)
    plain = HeadRecipe(private=False, lr=1.0, epochs=30, batch_size=64, weight_decay=0.0, warm_start=False)
    head = train_head(x, y, mask, plain, rng=rng)
    import torch

    with torch.inference_mode():
        acc = ((head(torch.from_numpy(x)).numpy() > 0) == (y > 0.5)).mean()
    assert acc > 0.9
    noisy = HeadRecipe(
        private=True,
        lr=1.0,
        epochs=30,
        batch_size=64,
        weight_decay=0.0,
        warm_start=False,
        noise_multiplier=1000.0,
        max_grad_norm=1.0,
        sample_rate=0.2,
        steps=50,
    )
    head = train_head(x, y, mask, noisy, rng=rng)
    with torch.inference_mode():
        acc = ((head(torch.from_numpy(x)).numpy() > 0) == (y > 0.5)).mean()
    assert acc < 0.75


# ---- audit_run and the command on tiny real runs ----


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "synth.csv"
    reports = generate_reports(
        SynthConfig(n_patients=200, seed=11, prevalence={"Pneumothorax": 0.08, "Pleural Other": 0.08})
    )
    write_table(reports_frame(reports, CHEXPERT14), path)
    return path


def _cfg(data: Path, model: Path, mode: str, **train_kw: object) -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(data)),
        model=ModelConfig(name=str(model), max_length=64),
        privacy=PrivacyConfig(epsilon=2.0 if mode.startswith("dp-") else None),
        train=TrainConfig(mode=mode, **{"epochs": 20.0, "batch_size": 64, "lr": 2.0} | train_kw),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("mode", ["head", "dp-head"])
def test_audit_run_writes_audit_json_and_keeps_the_canary_section(
    corpus: Path, tiny_bert: Path, tmp_path: Path, mode: str
) -> None:
    run = tmp_path / "run"
    train(_cfg(corpus, tiny_bert, mode), run)
    canaries = make_canaries(
        generate_reports(SynthConfig(n_patients=40, seed=1)), CHEXPERT14, m=40, rng=np.random.default_rng(0)
    )
    (run / "audit.json").write_text(
        json.dumps(
            {"canary": canary_section(np.linspace(0, 1, 40), canaries, delta=1e-4, ledger_epsilon=2.0)}
        )
    )
    out = audit_run(run, reference_models=4, rng=np.random.default_rng(0), n_boot=20)
    on_disk = json.loads((run / "audit.json").read_text())
    assert on_disk["canary"]["m"] == 40 and on_disk["mia"] == json.loads(json.dumps(out["mia"]))
    splits = json.loads((run / "splits.json").read_text())
    mia = on_disk["mia"]
    assert (mia["members"], mia["nonmembers"]) == (len(splits["train"]), len(splits["test"]))
    assert set(mia["attacks"]) == {
        "loss",
        "confidence",
        "lira_online",
        "lira_offline",
        "rmia",
        "rmia_offline",
    }
    for res in mia["attacks"].values():
        auc = res["auc"]
        assert 0 <= auc["ci_low"] <= auc["estimate"] <= auc["ci_high"] <= 1
        assert any(k.startswith("site=") for k in res["slices"])
    assert on_disk["theory"]["private"] is (mode == "dp-head")
    assert 0 <= mia["rmia"]["offline_a"] <= 1


def test_audit_command_prints_one_table(corpus: Path, tiny_bert: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_cfg(corpus, tiny_bert, "dp-head", epochs=5.0), run)
    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps typer from collapsing the app into `audit` alone
        pass

    result = CliRunner().invoke(app, ["audit", str(run), "--attack", "loss", "--bootstrap", "10"])
    assert result.exit_code == 0, result.output
    assert "theory epsilon" in result.output and "AUC" in result.output and "confidence" in result.output
    assert "lira" not in json.loads((run / "audit.json").read_text())["mia"]["attacks"]
    bad = CliRunner().invoke(app, ["audit", str(run), "--attack", "loss,magic"])
    assert bad.exit_code != 0 and isinstance(bad.exception, DpradError)

    # a side larger than --max-scored is attacked on a uniform subset of that size, and audit.json says so
    splits = json.loads((run / "splits.json").read_text())
    k = len(splits["test"]) - 1
    capped = CliRunner().invoke(
        app, ["audit", str(run), "--attack", "loss", "--bootstrap", "10", "--max-scored", str(k)]
    )
    assert capped.exit_code == 0, capped.output
    mia = json.loads((run / "audit.json").read_text())["mia"]
    assert (mia["members"], mia["nonmembers"]) == (k, k)
    assert mia["sampled"]["available"] == {"members": len(splits["train"]), "nonmembers": len(splits["test"])}
    assert mia["attacks"]["loss"]["members"] == k
    assert audit_param_default("max_scored") == MAX_SCORED  # the flag's default is the library's
    zero = CliRunner().invoke(app, ["audit", str(run), "--attack", "loss", "--max-scored", "0"])
    assert zero.exit_code != 0 and "--max-scored 0" in str(zero.exception)


def audit_param_default(name: str) -> object:
    import inspect

    from dprad.commands.audit import audit

    return inspect.signature(audit).parameters[name].default.default


def test_audit_refuses_data_that_is_not_the_runs(corpus: Path, tiny_bert: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_cfg(corpus, tiny_bert, "head", epochs=2.0), run)
    other = generate_reports(SynthConfig(n_patients=30, seed=99))
    with pytest.raises(DpradError, match="not in the data"):
        audit_run(
            run,
            attacks="loss",
            rng=np.random.default_rng(0),
            reports=[r for r in other if r.id.startswith("x")],
        )
    with pytest.raises(DpradError, match="at least 4"):
        audit_run(run, attacks="lira", reference_models=2, rng=np.random.default_rng(0))


def test_lora_reference_runs_on_a_tiny_model(corpus: Path, tiny_bert: Path, tmp_path: Path) -> None:
    cfg = _cfg(corpus, tiny_bert, "dp-lora", epochs=1.0, lr=1e-2)
    run = tmp_path / "run"
    train(cfg, run)
    ledger = json.loads((run / "privacy.json").read_text())
    pool = generate_reports(
        SynthConfig(n_patients=200, seed=11, prevalence={"Pneumothorax": 0.08, "Pleural Other": 0.08})
    )
    refs = run_reference_models(
        RunRecord.open(run),
        pool,
        k=2,
        rng=np.random.default_rng(0),
        work_dir=tmp_path / "refs",
        train_fn=train,
    )
    assert refs.logits.shape == (2, len(pool), len(CHEXPERT14)) and np.isfinite(refs.logits).all()
    assert (refs.keep.sum(0) == 1).all()
    ref_ledger = json.loads((tmp_path / "refs" / "ref-000" / "privacy.json").read_text())
    assert ref_ledger["noise_multiplier"] == pytest.approx(ledger["noise_multiplier"])
