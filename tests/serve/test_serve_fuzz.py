"""Fuzz the served API from its own OpenAPI schema (schemathesis) against a real uvicorn server on loopback.

Every operation gets the schema's coverage cases (boundaries, missing and wrong-typed fields, undeclared
methods) and generated bodies, headers and query strings, valid and invalid, sent mostly with a budgeted
client key, sometimes with another role, a wrong key or none. Every response must be no 5xx and conform
to the schema (documented status code, content type, body). After the run the audit log holds exactly one
line per request sent, with the status answered and the key that sent it, and the key's spent budget is
within its limits and equal to the reports it was answered for.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema_rs
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from test_serve import ADMIN, MONITOR, run_dir, write_keys  # noqa: F401 - run_dir is a fixture

from dprad.serve.app import ServeLimits, create_app, running
from dprad.serve.auditlog import read_records
from dprad.serve.budgets import BudgetStore

KEY_ID = "fuzz"
KEY = f"{KEY_ID}-key-0123456789abcdef"  # as write_keys makes it
# the key's budget runs out during the run: over-budget refusals are fuzzed too
PER_DAY, TOTAL = 40, 50
BUDGET: dict[str, object] = {"budget_per_day": PER_DAY, "budget_total": TOTAL}
# the body limit leaves room for the largest body the schema allows (8 reports of 2000 escaped characters)
LIMITS = ServeLimits(
    max_body_bytes=250_000, max_reports_per_request=8, max_report_chars=2_000, batch_wait_ms=1
)
MAX_EXAMPLES = 60  # generated cases per operation (the coverage test adds the schema's own cases)
BASE = settings(deadline=None, derandomize=True, database=None)  # deterministic, no example database
# schemathesis' default statuses for "invalid data was rejected", less 5xx, plus 413 (over a documented limit)
REJECTIONS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]

# who sends a request: the budgeted client key most of the time, sometimes another role, a wrong key or none
AUTHS: dict[str, dict[str, str]] = {
    "client": {"Authorization": f"Bearer {KEY}"},
    "client x-api-key": {"X-API-Key": KEY},
    "admin": {"Authorization": f"Bearer {ADMIN}"},
    "monitor": {"Authorization": f"Bearer {MONITOR}"},
    "wrong key": {"Authorization": "Bearer not-a-key-0123456789abcdef"},
    "not bearer": {"Authorization": f"Basic {KEY}"},
    "no key": {},
}
KEY_ID_OF = {"client": KEY_ID, "client x-api-key": KEY_ID, "admin": "admin", "monitor": "monitor"}
WHO = st.sampled_from(["client"] * 12 + ["client x-api-key"] * 2 + list(AUTHS)[2:])
# the schema declares no query parameters and no headers besides the key: fuzz what a client may send anyway
_TOKEN = st.from_regex(r"\A[A-Za-z][A-Za-z0-9_-]{0,15}\Z")
_VALUE = st.from_regex(r"\A[\x21-\x7e]([\x20-\x7e]{0,30}[\x21-\x7e])?\Z")  # what a header value may hold
_NAMES = st.sampled_from(["Content-Type", "Accept", "Accept-Encoding", "X-Forwarded-For", "Origin", "Range"])
EXTRA_HEADERS = st.dictionaries(st.one_of(_NAMES, _TOKEN.map(lambda t: f"X-{t}")), _VALUE, max_size=3)
QUERY = st.dictionaries(st.text(min_size=1, max_size=12), st.text(max_size=24), max_size=3)

# raw JSON text for the classify body, beyond what a schema-driven generator writes: the literals Python's
# parser also reads (NaN, Infinity), floats out of range, and numerals of any length up to 10,000 digits
_SCALAR = st.one_of(
    st.sampled_from(["null", "true", "false", "NaN", "-Infinity", "-0", "1e999", '""', '" "']),
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
    st.text(max_size=40).map(json.dumps),
    st.integers(1, 10_000).map(lambda n: "7" * n),
)


def _object(pairs: dict[str, str]) -> str:
    return "{" + ",".join(f"{k}:{v}" for k, v in pairs.items()) + "}"


_VALUE_JSON = st.recursive(
    _SCALAR,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.dictionaries(st.text(max_size=8).map(json.dumps), kids, max_size=4).map(_object),
    ),
    max_leaves=12,
)
_REPORT_JSON = st.dictionaries(st.sampled_from(['"text"', '"id"', '"mrn"']), _VALUE_JSON, max_size=3).map(
    _object
)
RAW_BODIES = st.one_of(
    st.lists(_REPORT_JSON, max_size=4).map(lambda rs: '{"reports":[' + ",".join(rs) + "]}").map(str.encode),
    _VALUE_JSON.map(str.encode),
    st.binary(max_size=64),
)


@dataclass(frozen=True)
class Sent:
    who: str
    method: str
    path: str
    status: int | None  # None: no response came back


class CountingSession(requests.Session):
    """Records every HTTP request it sends (each redirect too, and those a check sends again)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[Sent] = []
        self.who = "client"

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        status = None
        try:
            response = super().send(request, **kwargs)
            status = response.status_code
            return response
        finally:
            self.sent.append(Sent(self.who, str(request.method), urlsplit(request.url or "").path, status))


@dataclass
class Fuzzed:
    url: str
    state: Path
    openapi: dict[str, Any]
    session: CountingSession = field(default_factory=CountingSession)
    scored: int = 0  # reports in the 200 answers to the fuzz key


@pytest.fixture(scope="module")
def fuzzed(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:  # noqa: F811
    root = tmp_path_factory.mktemp("fuzz")
    keys = write_keys(root / "keys.yaml", **{KEY_ID: BUDGET})
    app = create_app(run_dir, keys_path=keys, state_dir=root / "state", limits=LIMITS)
    with running(app) as url:
        # the server publishes no /openapi.json (openapi_url=None): fuzz the very document it would serve
        served = Fuzzed(url, root / "state", app.openapi())
        yield served
        served.session.close()


@pytest.fixture(scope="module")
def api_schema(fuzzed: Fuzzed) -> Any:
    config = schemathesis.Config.from_dict(
        {"base-url": fuzzed.url, "checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}}}
    )
    return schemathesis.openapi.from_dict(fuzzed.openapi, config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    # schemathesis' lazy loader renames the test node through `node._nodeid`, which pytest 9 no longer has
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


def send_and_check(
    case: Any, fuzzed: Fuzzed, who: str, headers: dict[str, str], query: dict[str, str]
) -> None:
    headers = headers | AUTHS[who]
    fuzzed.session.who = who
    response = case.call(session=fuzzed.session, headers=headers, params=query, timeout=60)
    # every check schemathesis has: no 5xx, documented status code and content type, body and headers as
    # documented, invalid data rejected, valid data accepted, undeclared methods answered 405
    case.validate_response(response, headers=headers, transport_kwargs={"session": fuzzed.session})
    if response.status_code == 200 and case.path == "/v1/classify" and KEY_ID_OF.get(who) == KEY_ID:
        fuzzed.scored += len(response.json()["results"])


@schema.parametrize()
@settings(BASE, phases=[Phase.explicit])  # the schema's examples and coverage cases, nothing random
def test_schema_coverage_cases(case: Any, fuzzed: Fuzzed) -> None:
    send_and_check(case, fuzzed, "client", {}, {})


@schema.given(who=WHO, extra_headers=EXTRA_HEADERS, query=QUERY)
@schema.parametrize()
@settings(
    BASE,
    max_examples=MAX_EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_generated_cases(
    case: Any, who: str, extra_headers: dict[str, str], query: dict[str, str], fuzzed: Fuzzed
) -> None:
    send_and_check(case, fuzzed, who, extra_headers, query)


@given(body=RAW_BODIES, who=WHO)
# found by this test: a numeral past Python's 4300-digit limit made json.loads raise a plain ValueError,
# answered 500 "internal"; now a 400 malformed_json (src/dprad/serve/app.py, _decode)
@example(body=b"7" * 5000, who="client")
@example(body=b'{"reports": [{"text": "x", "id": ' + b"7" * 5000 + b"}]}", who="client")
@settings(BASE, max_examples=MAX_EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
def test_raw_bodies_to_classify(body: bytes, who: str, fuzzed: Fuzzed) -> None:
    fuzzed.session.who = who
    headers = AUTHS[who] | {"Content-Type": "application/json"}
    r = fuzzed.session.post(f"{fuzzed.url}/v1/classify", data=body, headers=headers, timeout=60)
    assert r.status_code < 500, r.text
    assert str(r.status_code) in fuzzed.openapi["paths"]["/v1/classify"]["post"]["responses"], r.text
    assert r.headers["content-type"] == "application/json"
    if r.status_code == 200:
        if KEY_ID_OF.get(who) == KEY_ID:
            fuzzed.scored += len(r.json()["results"])
    else:
        assert set(r.json()["error"]) == {"code", "message"}


def test_the_schema_says_which_texts_are_empty(fuzzed: Fuzzed) -> None:
    # found by test_generated_cases: with the pattern "\S" the schema let a text of "\x1d" through (JSON
    # Schema's regex takes U+001C-U+001F and U+0085 for non-space) that the server strips and refuses as empty
    body = fuzzed.openapi["paths"]["/v1/classify"]["post"]["requestBody"]["content"]["application/json"]
    # jsonschema_rs (schemathesis' validator) reads patterns as ECMA-262 regexes, as the schema's clients do
    valid = jsonschema_rs.validator_for(body["schema"]).is_valid
    for text in ("\x1d", "\x85", "\x1c \x1f", " \t\u3000\u2028"):
        assert not text.strip() and not valid({"reports": [{"text": text}]}), repr(text)
    for text in ("x", "\x1dx", "\ufeff", "\x00"):
        assert text.strip() and valid({"reports": [{"text": text}]}), repr(text)
    fuzzed.session.who = "client"
    r = fuzzed.session.post(
        f"{fuzzed.url}/v1/classify", json={"reports": [{"text": "\x1d"}]}, headers=AUTHS["client"]
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "empty_text", r.text


def test_one_audit_line_per_request_and_no_budget_overspent(fuzzed: Fuzzed) -> None:
    sent = fuzzed.session.sent
    print(len(sent), Counter(x.who for x in sent), Counter((x.method, x.path, x.status) for x in sent))
    assert len(sent) > 4 * MAX_EXAMPLES, "run with the two fuzzing tests above, not alone"
    assert all(x.status is not None for x in sent)
    lines = list(read_records(fuzzed.state / "audit"))
    # requests are sent one after another: line i is request i
    assert len(lines) == len(sent)
    assert [x["status"] for x in lines] == [x.status for x in sent]
    # no key, no answer but /healthz; and each line names the key that sent it where the endpoint asks for one
    assert all(x.status in (401, 405) for x in sent if x.who not in KEY_ID_OF and x.path != "/healthz")
    unkeyed = [x.path == "/healthz" or x.status in (401, 405) for x in sent]
    expected = [None if no_key else KEY_ID_OF[x.who] for x, no_key in zip(sent, unkeyed, strict=True)]
    assert [x["key_id"] for x in lines] == expected
    spent_day, spent_total = BudgetStore(fuzzed.state / "budgets.sqlite").spent(KEY_ID)
    assert spent_day <= PER_DAY and spent_total <= TOTAL
    assert spent_total == fuzzed.scored
    charged = [x for x in lines if x["key_id"] == KEY_ID and x["status"] == 200]
    assert sum(int(x["n_reports"]) for x in charged if x["endpoint"] == "POST /v1/classify") == spent_total
    # what the run exercised: answers, refusals for the key and for the body, and the budget running out
    statuses = Counter((x["endpoint"], x["status"]) for x in lines)
    assert statuses[("POST /v1/classify", 200)] and statuses[("POST /v1/classify", 401)]
    assert statuses[("POST /v1/classify", 422)] and statuses[("POST /v1/classify", 400)]
    assert any(x["status"] == 429 and "budget" in str(x["error"]) for x in lines)
