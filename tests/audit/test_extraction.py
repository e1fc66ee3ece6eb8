"""Model extraction against a real `dprad serve` on loopback: a tiny trained run, keys with budgets, the
attacker's queries over HTTP, and the clone's agreement curve."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml

from dprad import CHEXPERT14, DpradError, SynthConfig, generate_reports
from dprad.audit.extraction import (
    CloneSpec,
    HttpQuery,
    QueriesRefused,
    extraction_curve,
    http_query,
    local_query,
    synthetic_reports,
)
from dprad.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from dprad.data.synth import CXR_TERMS
from dprad.data.table import reports_frame, write_table
from dprad.nn.public import public_reports
from dprad.run import RunRecord
from dprad.serve.app import ServeLimits, create_app, running
from dprad.serve.auditlog import read_records, read_secret
from dprad.serve.budgets import BudgetStore
from dprad.stages.train import train

LIMITS = ServeLimits(max_reports_per_request=32, batch_wait_ms=2)
BUDGETS = (20, 60, 150)
KEYS = {  # id -> budget fields
    "attacker": {},
    "auditor": {},
    "prober": {},
    "tight": {"budget_total": 50},
    "tight2": {"budget_total": 50},
}


def secret(kid: str) -> str:
    return f"{kid}-key-0123456789abcdef"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    root = tmp_path_factory.mktemp("extraction")
    data = root / "synth.csv"
    reports = generate_reports(SynthConfig(n_patients=200, seed=3))
    write_table(reports_frame(reports, CHEXPERT14), data)
    cfg = RunConfig(
        data=DataConfig(path=str(data)),
        model=ModelConfig(name=str(tiny_bert), max_length=128),
        train=TrainConfig(mode="head", epochs=5, lr=0.3, batch_size=64),
    )
    return train(cfg, root / "run").run_dir


@pytest.fixture(scope="module")
def server(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("state")
    entries = [{"id": k, "key": secret(k), "role": "client", **extra} for k, extra in KEYS.items()]
    (root / "keys.yaml").write_text(yaml.safe_dump({"keys": entries}))
    app = create_app(run_dir, keys_path=root / "keys.yaml", state_dir=root / "state", limits=LIMITS)
    with running(app) as url:
        yield url, root / "state"


@pytest.fixture(scope="module")
def pools() -> tuple[list, list]:
    """The attacker's pool (200 synthetic reports) and 120 held-out evaluation reports (another seed)."""
    return synthetic_reports("cxr", 200, seed=0), synthetic_reports("cxr", 120, seed=1)


def query_of(url: str, kid: str, answer: str = "decisions") -> HttpQuery:
    return http_query(url, secret(kid), batch=32, labels=CHEXPERT14.labels, answer=answer)


def hmacs_sent(state: Path, kid: str) -> list[str]:
    key = read_secret(state / "audit.secret")
    lines = [x for x in read_records(state / "audit") if x["key_id"] == kid and x["status"] == 200]
    assert all(x["hmac_key_id"] == key.key_id for x in lines)
    return [h for x in lines for h in x["report_hmac"]]


@pytest.fixture(scope="module")
def curve(server: tuple[str, Path], pools: tuple[list, list], tiny_bert: Path) -> dict:
    url, _ = server
    attacker, held_out = pools
    return extraction_curve(
        query_of(url, "attacker"),
        attacker_reports=attacker,
        eval_reports=held_out,
        budgets=BUDGETS,
        schema=CHEXPERT14,
        clone=CloneSpec(model=str(tiny_bert), max_length=128),
        rng=np.random.default_rng(0),
        reference=query_of(url, "auditor"),
        attacker_data="200 synthetic cxr reports (extraction stream, seed 0)",
        n_boot=400,
    )


def test_curve_structure_and_intervals(curve: dict, pools: tuple[list, list]) -> None:
    assert curve["queries"] == list(BUDGETS) and curve["query_unit"] == "reports"
    assert curve["answers"] == "decisions" and curve["cut_off"] is None
    assert curve["eval_reports"] == len(pools[1]) and curve["eval_dropped_in_pool"] == 0
    for key in ("agreement", "clone_weighted_f1"):
        assert len(curve[key]) == len(BUDGETS)
        for point in curve[key]:
            assert set(point) == {"estimate", "ci_low", "ci_high"}
            assert 0.0 <= point["ci_low"] <= point["estimate"] <= point["ci_high"] <= 1.0
    assert list(curve["per_label_agreement"]) == list(CHEXPERT14.labels)
    assert all(
        len(v) == len(BUDGETS) and all(0 <= a <= 1 for a in v) for v in curve["per_label_agreement"].values()
    )
    assert "post-processing" in curve["what_it_means"] and "budget" in curve["what_it_means"]
    assert "logistic regression" in curve["clone"] and "seed 0" in curve["attacker_data"]
    json.dumps(curve, allow_nan=False)  # audit.json-ready


def test_more_queries_make_a_better_clone_of_the_served_model(curve: dict) -> None:
    agreement = [p["estimate"] for p in curve["agreement"]]
    f1 = [p["estimate"] for p in curve["clone_weighted_f1"]]
    assert all(b >= a - 0.02 for a, b in itertools.pairwise(agreement)), agreement
    assert agreement[-1] > curve["constant_agreement"], (agreement, curve["constant_agreement"])
    assert f1[-1] > f1[0], f1


def mentions(texts: Sequence[str]) -> np.ndarray:
    """A victim that is a simple function of the text: a label is decided positive when one of its terms
    is mentioned anywhere (negated or not); No Finding when the report says there is no acute disease."""
    terms = {lab: CXR_TERMS.get(lab, ("no acute",)) for lab in CHEXPERT14.labels}
    low = [t.lower() for t in texts]
    return np.array([[any(w.lower() in x for w in terms[lab]) for lab in CHEXPERT14.labels] for x in low])


def test_a_simple_victim_is_cloned_better_with_every_budget(tiny_bert: Path) -> None:
    attacker, held_out = synthetic_reports("cxr", 600, seed=0), synthetic_reports("cxr", 200, seed=1)
    out = extraction_curve(
        mentions,
        attacker_reports=attacker,
        eval_reports=held_out,
        budgets=(20, 60, 150, 600),
        schema=CHEXPERT14,
        clone=CloneSpec(model=str(tiny_bert), max_length=128),
        rng=np.random.default_rng(0),
        n_boot=200,
    )
    agreement = [p["estimate"] for p in out["agreement"]]
    assert all(b >= a - 0.01 for a, b in itertools.pairwise(agreement)), agreement
    assert agreement[-1] > out["constant_agreement"] + 0.05 and agreement[-1] > agreement[0] + 0.05
    assert out["clone_weighted_f1"][-1]["estimate"] > out["clone_weighted_f1"][0]["estimate"] + 0.1


def test_the_reports_sent_are_exactly_the_attackers(
    curve: dict, server: tuple[str, Path], pools: tuple[list, list]
) -> None:
    _, state = server
    key = read_secret(state / "audit.secret")
    attacker, held_out = pools
    sent = hmacs_sent(state, "attacker")
    assert len(sent) == BUDGETS[-1] == len(set(sent))  # one query per report, no report twice
    assert set(sent) <= set(key.digests([r.text for r in attacker]))
    assert hmacs_sent(state, "auditor") == list(key.digests([r.text for r in held_out]))
    assert BudgetStore(state / "budgets.sqlite").spent("attacker") == (BUDGETS[-1], BUDGETS[-1])
    public = {r.text for r in public_reports("cxr")}
    assert not public & {r.text for r in attacker} and not public & {r.text for r in held_out}


def test_a_budget_cuts_the_attacker_off(server: tuple[str, Path], pools: tuple[list, list]) -> None:
    url, state = server
    texts = [r.text for r in pools[0][:80]]
    query = query_of(url, "tight")
    with pytest.raises(QueriesRefused, match="HTTP 429 over_budget") as err:
        query(texts)
    # 32 + 18 (the request that no longer fit was resent with what was left), then refused
    assert err.value.answered == 50 and err.value.answers.shape == (50, len(CHEXPERT14))
    assert "after answering 50 of the 80" in str(err.value)
    assert BudgetStore(state / "budgets.sqlite").spent("tight") == (50, 50)
    assert len(hmacs_sent(state, "tight")) == 50


def test_the_curve_shows_where_the_budget_stopped_it(
    server: tuple[str, Path], pools: tuple[list, list], tiny_bert: Path, run_dir: Path
) -> None:
    url, _ = server
    out = extraction_curve(
        query_of(url, "tight2"),
        attacker_reports=pools[0],
        eval_reports=pools[1],
        budgets=BUDGETS,
        schema=CHEXPERT14,
        clone=str(tiny_bert),
        rng=np.random.default_rng(1),
        reference=local_query(run_dir),  # the auditor's own access: no key's budget
        n_boot=100,
    )
    assert out["queries"] == [20, 50]
    assert out["cut_off"]["after_reports"] == 50 and out["cut_off"]["code"] == "over_budget"
    assert out["cut_off"]["budgets_not_reached"] == [60, 150]
    assert len(out["agreement"]) == 2


def test_probabilities_with_the_served_thresholds(
    server: tuple[str, Path], pools: tuple[list, list], tiny_bert: Path, run_dir: Path
) -> None:
    url, _ = server
    thresholds = RunRecord.open(run_dir).thresholds.array
    local = local_query(run_dir)
    served = query_of(url, "prober", answer="probabilities")
    texts = [r.text for r in pools[1][:10]]
    np.testing.assert_array_equal(served(texts) >= thresholds, local(texts))
    out = extraction_curve(
        served,
        attacker_reports=pools[0],
        eval_reports=pools[1],
        budgets=(40, 120),
        schema=CHEXPERT14,
        clone=CloneSpec(model=str(tiny_bert), max_length=128),
        rng=np.random.default_rng(2),
        reference=local_query(run_dir, answer="probabilities"),
        thresholds=thresholds,
        n_boot=100,
    )
    assert out["answers"] == "probabilities" and out["queries"] == [40, 120]
    assert out["agreement"][-1]["estimate"] > out["constant_agreement"], out


def test_refusals(pools: tuple[list, list], tiny_bert: Path, run_dir: Path) -> None:
    attacker, held_out = pools
    common = dict(schema=CHEXPERT14, clone=str(tiny_bert), rng=np.random.default_rng(0))
    victim = local_query(run_dir)
    with pytest.raises(DpradError, match="between 1 and the attacker's 200 reports"):
        extraction_curve(
            victim, attacker_reports=attacker, eval_reports=held_out, budgets=(10, 500), **common
        )
    with pytest.raises(DpradError, match="in the attacker's pool"):
        extraction_curve(
            victim, attacker_reports=attacker, eval_reports=attacker[:5], budgets=(10,), **common
        )
    with pytest.raises(DpradError, match="not 0/1 decisions"):
        extraction_curve(
            local_query(run_dir, answer="probabilities"),
            attacker_reports=attacker,
            eval_reports=held_out,
            budgets=(10,),
            **common,
        )
    with pytest.raises(DpradError, match="cannot reach"):
        http_query("http://127.0.0.1:9", "x" * 20)(["No acute disease."])
