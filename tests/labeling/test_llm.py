"""The LLM teacher against a real HTTP server on loopback that the test starts."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pandas as pd
import pytest

from dprad import CHEXPERT14, DpradError, Report
from dprad.cli import main
from dprad.labeling.llm import LLMConfig, LLMTeacher, check_endpoint, parse_answer


class FakeLLM(BaseHTTPRequestHandler):
    """Answers by the report text: 'effusion' -> a good answer; 'garbage' -> malformed JSON the first time;
    'flaky' -> HTTP 500 twice; 'slow' -> sleeps past the client timeout once; 'broken' -> always 500;
    'fenced' -> JSON inside a code fence; 'toolong' -> HTTP 400 about the context window. ``rejects``: the
    response_format types this server refuses (HTTP 500, as llama-cpp-python refuses json_schema)."""

    calls: ClassVar[dict[str, int]] = {}
    bodies: ClassVar[list[dict]] = []
    rejects: ClassVar[set[str]] = set()

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:  # the http.server API names it
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeLLM.bodies.append(body)
        text = body["messages"][-1]["content"]
        n = FakeLLM.calls[text] = FakeLLM.calls.get(text, 0) + 1
        if body.get("response_format", {}).get("type") in FakeLLM.rejects:  # as llama-cpp-python 0.3.36 does
            return self._send(
                500, {"error": {"message": "('body', 'response_format', 'type'): literal_error"}}
            )
        if "toolong" in text:
            return self._send(400, {"error": "Requested tokens (5000) exceed context window of 4096"})
        if "broken" in text or ("flaky" in text and n <= 2):
            return self._send(500, {"error": "boom"})
        if "slow" in text and n == 1:
            time.sleep(1.0)
        if "garbage" in text and n == 1:
            return self._answer("this is not json")
        answer = {"Pleural Effusion": 1, "Pneumothorax": 0, "Edema": None}
        content = json.dumps(answer)
        if "fenced" in text:
            content = f"```json\n{content}\n```"
        if "unknown" in text:
            content = json.dumps({"Broken Heart": 1})
        return self._answer(content)

    def _answer(self, content: str) -> None:
        self._send(200, {"choices": [{"message": {"role": "assistant", "content": content}}]})

    def _send(self, code: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server() -> Iterator[str]:
    FakeLLM.calls, FakeLLM.bodies, FakeLLM.rejects = {}, [], set()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeLLM)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def reports(*texts: str) -> list[Report]:
    return [Report(id=f"r{i}", patient_id=f"p{i}", text=t) for i, t in enumerate(texts)]


def teacher(url: str, tmp_path: Path, **kw: object) -> LLMTeacher:
    cfg = LLMConfig(
        url=url,
        model="local-model",
        timeout_s=0.5,
        backoff_s=0.01,
        max_retries=3,
        cache_dir=str(tmp_path / "cache"),
        concurrency=3,
        **kw,
    )  # type: ignore[arg-type]
    return LLMTeacher(cfg, CHEXPERT14)


def test_answers_retries_and_failures(server: str, tmp_path: Path) -> None:
    t = teacher(server, tmp_path)
    got = t.label(
        reports(
            "small effusion",
            "garbage then fine",
            "flaky server",
            "slow answer",
            "broken server",
            "fenced answer",
            "unknown labels",
        )
    )
    good = {"Pleural Effusion": 1, "Pneumothorax": 0}
    assert got[:4] == [good] * 4 and got[5] == good
    assert got[4] is None and got[6] is None
    s = t.summary.to_dict()
    assert s["answered"] == 5 and s["failed"] == 2
    assert s["failures"]["r4"] == "HTTP 500" and "unknown label" in s["failures"]["r6"]
    assert s["retries"] >= 1 + 2 + 1 + 3  # garbage, flaky x2, slow, broken x3 (+ unknown x3)
    body = FakeLLM.bodies[0]
    assert body["model"] == "local-model" and body["response_format"]["type"] == "json_schema"
    assert set(body["response_format"]["json_schema"]["schema"]["properties"]) == set(CHEXPERT14.labels)


def test_cache_means_no_second_request(server: str, tmp_path: Path) -> None:
    teacher(server, tmp_path).label(reports("small effusion"))
    before = len(FakeLLM.bodies)
    t = teacher(server, tmp_path)
    assert t.label(reports("small effusion")) == [{"Pleural Effusion": 1, "Pneumothorax": 0}]
    assert len(FakeLLM.bodies) == before and t.summary.cached == 1
    # another model is another cache key
    other = LLMTeacher(LLMConfig(url=server, model="other", cache_dir=str(tmp_path / "cache")), CHEXPERT14)
    other.label(reports("small effusion"))
    assert len(FakeLLM.bodies) == before + 1


def test_server_without_structured_output_falls_back(server: str, tmp_path: Path) -> None:
    FakeLLM.rejects = {"json_schema", "json_object"}
    t = teacher(server, tmp_path)
    assert t.label(reports("small effusion")) == [{"Pleural Effusion": 1, "Pneumothorax": 0}]
    assert t.summary.structured_output == "none" and "response_format" not in FakeLLM.bodies[-1]
    assert [b.get("response_format", {}).get("type") for b in FakeLLM.bodies] == [
        "json_schema",
        "json_object",
        None,
    ]
    assert t.summary.retries == 0  # a refused dialect is not a failed attempt


def test_server_that_takes_json_object_schemas_gets_one(server: str, tmp_path: Path) -> None:
    FakeLLM.rejects = {"json_schema"}  # llama-cpp-python's server
    t = teacher(server, tmp_path)
    assert (
        t.label(reports("small effusion", "effusion again"))
        == [{"Pleural Effusion": 1, "Pneumothorax": 0}] * 2
    )
    assert t.summary.structured_output == "json_object"
    fmt = FakeLLM.bodies[-1]["response_format"]
    assert fmt["type"] == "json_object" and set(fmt["schema"]["required"]) == set(CHEXPERT14.labels)


def test_a_400_about_something_else_keeps_structured_output(server: str, tmp_path: Path) -> None:
    t = teacher(server, tmp_path)
    out = t.label(reports("toolong report", "small effusion"))
    assert out[0] is None and t.summary.failed == {"r0": "HTTP 400"}
    assert (
        out[1] == {"Pleural Effusion": 1, "Pneumothorax": 0} and t.summary.structured_output == "json_schema"
    )
    assert all(b["response_format"]["type"] == "json_schema" for b in FakeLLM.bodies)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.openai.com/v1",
        "http://10.1.2.3:8000/v1",
        "http://192.168.0.5/v1",
        "http://example.org/v1",
        "ftp://127.0.0.1/v1",
    ],
)
def test_refuses_endpoints_off_the_premises(url: str) -> None:
    with pytest.raises(DpradError, match=r"not loopback and not allow-listed|not an http"):
        LLMTeacher(LLMConfig(url=url, model="m"), CHEXPERT14)


def test_loopback_and_allow_list() -> None:
    for url in (
        "http://127.0.0.1:8000/v1",
        "http://localhost/v1",
        "http://[::1]:9000/v1",
        "http://127.1.2.3/v1",
    ):
        check_endpoint(url)
    check_endpoint("http://llm.hospital.internal/v1", ["llm.hospital.internal"])


def test_parse_answer_is_strict() -> None:
    assert parse_answer('{"Edema": -1, "Fracture": null}', CHEXPERT14) == {"Edema": -1}
    for bad in ('{"Edema": 2}', '{"Edema": true}', "[1, 0]", '{"Edema": "yes"}'):
        with pytest.raises(ValueError):
            parse_answer(bad, CHEXPERT14)


def test_cli_llm_teacher(server: str, tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    pd.DataFrame(
        {"id": ["a", "b"], "text": ["small effusion", "broken server"], "Pleural Effusion": [1, 0]}
    ).to_csv(data, index=False)
    out = tmp_path / "out.csv"
    with pytest.raises(
        SystemExit
    ) as failed:  # a report left unlabelled: exit 1, the table written all the same
        main(
            [
                "label",
                str(data),
                "--teacher",
                "llm",
                "--llm-url",
                server,
                "--llm-model",
                "m",
                "--out",
                str(out),
                "--llm-timeout",
                "0.5",
                "--llm-retries",
                "1",
                "--agreement-out",
                str(tmp_path / "a.json"),
            ]
        )
    assert failed.value.code == 1
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert df.loc[0, "Pleural Effusion"] == "1" and df.loc[1, "Pleural Effusion"] == ""  # failure left empty
    rep = json.loads((tmp_path / "a.json").read_text())
    assert rep["llm"]["failed"] == 1 and rep["reports"] == 1
    with pytest.raises(SystemExit) as ex:
        main(
            [
                "label",
                str(data),
                "--teacher",
                "llm",
                "--llm-url",
                "http://8.8.8.8/v1",
                "--llm-model",
                "m",
                "--out",
                str(out),
            ]
        )
    assert ex.value.code == 2


def test_cli_llm_teacher_that_labels_nothing_exits_1_without_a_traceback(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every report failed and the input has gold labels: no agreement to measure, a clear message, exit 1."""
    data = tmp_path / "d.csv"
    pd.DataFrame({"id": ["a", "b"], "text": ["broken one", "broken two"], "Pleural Effusion": [1, 0]}).to_csv(
        data, index=False
    )
    with pytest.raises(SystemExit) as failed:
        main(
            [
                *("label", str(data), "--teacher", "llm", "--llm-url", server, "--llm-model", "m"),
                *("--out", str(tmp_path / "out.csv"), "--llm-retries", "0"),
                *("--agreement-out", str(tmp_path / "a.json")),
            ]
        )
    assert failed.value.code == 1
    out = capsys.readouterr()
    assert "no report has both teacher and gold labels" in out.out + out.err
    assert "2 reports were not labelled" in out.out + out.err and "Traceback" not in out.out + out.err
    assert not (tmp_path / "a.json").exists()
