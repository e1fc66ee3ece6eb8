"""Attribute inference (`dprad.audit.attribute`) on handcrafted reports and on tiny real runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dprad import CHEXPERT14, DpradError, SynthConfig, generate_reports
from dprad.audit.attribute import FPRS, attribute_inference, redact, sentence_spans
from dprad.config import DataConfig, ModelConfig, PrivacyConfig, RunConfig, TrainConfig
from dprad.data.reports import Report, label_matrix
from dprad.data.schemas import UncertainPolicy
from dprad.data.table import reports_frame, write_table
from dprad.labeling.context import sentences
from dprad.labeling.rules import find_mentions, rules_for
from dprad.modes import load_run
from dprad.run import RunRecord
from dprad.run.results import RARE_SUPPORT
from dprad.stages.train import train

RULES = rules_for(CHEXPERT14)
SYNTH = SynthConfig(
    n_patients=200, seed=11, prevalence={"Lung Opacity": 0.6, "Pneumothorax": 0.06, "Pleural Other": 0.06}
)

# ---- redaction ----


def test_redact_removes_the_findings_sentences_and_keeps_the_others() -> None:
    text = (
        "FINDINGS: Heart size is normal.  Small right pleural effusion.\n"
        "No pneumothorax. Possible left effusion versus atelectasis. Lungs are otherwise clear.\n"
        "IMPRESSION: Right pleural effusion, likely small."
    )
    out, n = redact(text, "Pleural Effusion", RULES)
    assert n == 3  # positive, uncertain and impression sentences alike
    assert "effusion" not in out.lower()
    assert "Small right pleural effusion" not in out and "IMPRESSION" not in out
    assert out == "FINDINGS: Heart size is normal. No pneumothorax. Lungs are otherwise clear."
    assert not [m for m in find_mentions(out, RULES) if m.label == "Pleural Effusion"]
    # another label's sentence only: the effusion sentences stay, with their case
    out, n = redact(text, "Pneumothorax", RULES)
    assert n == 1 and "No pneumothorax" not in out and "Small right pleural effusion." in out
    # a label the rules never see in the text: nothing removed, text unchanged
    assert redact(text, "Edema", RULES) == (text, 0)


def test_sentence_spans_follow_the_rule_teachers_sentences() -> None:
    texts = [r.text.lower() for r in generate_reports(SynthConfig(n_patients=60, seed=3))]
    texts += ["  one.  two!three? four.\n\nfive 5. 6 six", "", "no period at all"]
    for t in texts:
        assert [t[a:b] for a, b in sentence_spans(t)] == sentences(t)


def test_redacted_synthetic_reports_no_longer_mention_the_label() -> None:
    for r in generate_reports(SynthConfig(n_patients=60, seed=4)):
        for lab in {m.label for m in find_mentions(r.text, RULES)} - {"__other__"}:
            out, n = redact(r.text, lab, RULES)
            assert n >= 1 and len(sentences(out.lower())) == len(sentences(r.text.lower())) - n
            assert not [m for m in find_mentions(out, RULES) if m.label == lab], (r.text, lab, out)


# ---- tiny real runs ----


def _cfg(data: Path, model: Path, mode: str, **train_kw: object) -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(data)),
        model=ModelConfig(name=str(model), max_length=64),
        privacy=PrivacyConfig(epsilon=2.0 if mode.startswith("dp-") else None),
        train=TrainConfig(mode=mode, **{"epochs": 20.0, "batch_size": 64, "lr": 2.0} | train_kw),  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "synth.csv"
    write_table(reports_frame(generate_reports(SYNTH), CHEXPERT14), path)
    return path


@pytest.fixture(scope="module")
def runs(corpus: Path, tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    out = {"head": root / "head", "dp-head": root / "dp-head"}
    train(_cfg(corpus, tiny_bert, "head", epochs=200.0, weight_decay=0.0), out["head"])
    train(_cfg(corpus, tiny_bert, "dp-head"), out["dp-head"])
    return out


def _reports() -> dict[str, Report]:
    return {r.id: r for r in generate_reports(SYNTH)}


def _split(run: RunRecord, name: str) -> list[Report]:
    by_id = _reports()
    return [by_id[i] for i in run.splits[name]]


@pytest.mark.parametrize("mode", ["head", "dp-head"])
def test_attribute_section_structure_counts_and_flags(runs: dict[str, Path], mode: str) -> None:
    run = RunRecord.open(runs[mode])
    out = attribute_inference(run, _reports(), rng=np.random.default_rng(0), n_boot=50)
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    assert set(out) >= {"labels", "pooled", "redaction", "what_it_checks"}
    assert "0.5" in out["what_it_checks"] and "does not" in out["what_it_checks"]
    assert [e["label"] for e in out["labels"]] == list(CHEXPERT14.labels)

    policy = UncertainPolicy(run.config.data.uncertain_policy)
    y_in, m_in = label_matrix(_split(run, "train"), CHEXPERT14, policy=policy)
    y_out, m_out = label_matrix(_split(run, "test"), CHEXPERT14, policy=policy)
    pos_in, pos_out = (y_in * m_in > 0).sum(0), (y_out * m_out > 0).sum(0)
    tpr_keys = [f"tpr_at_{x:g}_fpr" for x in FPRS]
    for j, e in enumerate(out["labels"]):
        assert e["positives"] == {"members": pos_in[j], "nonmembers": pos_out[j]}
        assert e["members"] + e["nonmembers"] + e["skipped"] == pos_in[j] + pos_out[j]
        assert e["rare"] is bool(pos_out[j] < RARE_SUPPORT)
        assert e["critical"] is (e["label"] in CHEXPERT14.critical)
        if min(e["members"], e["nonmembers"]) < 10:
            assert e["auc"] is None and all(e[k] is None for k in tpr_keys) and e["note"]
        else:
            for k in ["auc", *tpr_keys]:
                assert 0 <= e[k]["ci_low"] <= e[k]["estimate"] <= e[k]["ci_high"] <= 1, (e["label"], k)
    by_label = {e["label"]: e for e in out["labels"]}
    assert by_label["Lung Opacity"]["rare"] is False and by_label["Lung Opacity"]["auc"] is not None
    small = by_label["Pneumothorax"]
    assert small["rare"] and small["critical"] and small["auc"] is None and small["note"]
    nf = by_label["No Finding"]  # the rules read it from the absence of findings: nothing to remove
    assert nf["members"] == nf["nonmembers"] == 0 and nf["skipped"] == sum(nf["positives"].values()) > 0
    assert "vocabulary" in nf["note"]

    pooled = out["pooled"]
    for k in ("members", "nonmembers", "skipped"):
        assert pooled[k] == sum(e[k] for e in out["labels"])
    assert 0 <= pooled["auc"]["ci_low"] <= pooled["auc"]["estimate"] <= pooled["auc"]["ci_high"] <= 1


def test_scores_are_the_models_on_the_redacted_text(runs: dict[str, Path]) -> None:
    run = RunRecord.open(runs["head"])
    out = attribute_inference(run, _reports(), rng=np.random.default_rng(0), n_boot=10)
    entry = next(e for e in out["labels"] if e["label"] == "Lung Opacity")
    j = CHEXPERT14.labels.index("Lung Opacity")
    policy = UncertainPolicy(run.config.data.uncertain_policy)
    test = _split(run, "test")
    y, mask = label_matrix(test, CHEXPERT14, policy=policy)
    positive = [r for r, p in zip(test, y[:, j] * mask[:, j] > 0, strict=True) if p]
    redacted = [(r, redact(r.text, "Lung Opacity", RULES)) for r in positive]
    kept = [Report(r.id, r.patient_id, text, labels=r.labels) for r, (text, n) in redacted if n]
    model = load_run(run)
    probs = model.predict(kept).probs[:, j]
    assert entry["nonmembers"] == len(kept)
    assert entry["mean_score_nonmembers"] == pytest.approx(float(probs.mean()), abs=1e-5)
    # with the finding's sentences still in, the model is surer: the redaction took what it read
    full = model.predict([r for r, (_, n) in redacted if n]).probs[:, j]
    assert full.mean() > probs.mean() + 0.1


def test_memorising_run_leaks_more_than_the_private_one(runs: dict[str, Path]) -> None:
    auc = {
        mode: attribute_inference(RunRecord.open(p), _reports(), rng=np.random.default_rng(1), n_boot=50)[
            "pooled"
        ]["auc"]
        for mode, p in runs.items()
    }
    assert auc["head"]["estimate"] > 0.6, auc
    assert auc["dp-head"]["ci_low"] < 0.5 < auc["dp-head"]["ci_high"] + 0.05, auc
    assert auc["head"]["estimate"] > auc["dp-head"]["estimate"], auc


def test_refuses_data_that_is_not_the_runs(runs: dict[str, Path]) -> None:
    run = RunRecord.open(runs["dp-head"])
    other = {r.id: r for r in generate_reports(SynthConfig(n_patients=30, seed=99)) if r.id.startswith("x")}
    with pytest.raises(DpradError, match="not in the data"):
        attribute_inference(run, other, rng=np.random.default_rng(0))
    with pytest.raises(DpradError, match="at least 1"):
        attribute_inference(run, _reports(), rng=np.random.default_rng(0), n_boot=0)


def test_a_control_model_separates_memorisation_from_what_the_groups_differ_by(
    runs: dict[str, Path], corpus: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    """The same memorising recipe with another split seed scores the target's two groups: it did not train
    on this grouping, so its pooled AUC is lower than the target's, and each row carries both."""
    from dataclasses import replace

    cfg = _cfg(corpus, tiny_bert, "head", epochs=200.0, weight_decay=0.0)
    train(cfg.with_(data=replace(cfg.data, split_seed=cfg.data.split_seed + 1)), tmp_path / "control")
    target, control = RunRecord.open(runs["head"]), RunRecord.open(tmp_path / "control")
    res = attribute_inference(target, _reports(), rng=np.random.default_rng(1), n_boot=50, control=control)
    alone = attribute_inference(target, _reports(), rng=np.random.default_rng(1), n_boot=50)
    assert res["pooled"]["auc"] == alone["pooled"]["auc"]  # the target's own result is unchanged
    pooled = res["pooled"]
    assert pooled["control_auc"]["estimate"] < pooled["auc"]["estimate"], pooled
    assert pooled["auc_minus_control"] == pytest.approx(
        pooled["auc"]["estimate"] - pooled["control_auc"]["estimate"]
    )
    assert res["control"]["run"] == str(control.path)
    for row in res["labels"]:
        assert ("control_auc" in row) and (row["auc_minus_control"] is None) == (
            row["auc"] is None or row["control_auc"] is None
        )
    with pytest.raises(DpradError, match="same training split"):
        attribute_inference(target, _reports(), rng=np.random.default_rng(1), control=target)
