"""Keyed hashes (HMAC-SHA-256) in the serving audit log, against a real uvicorn server on loopback.

A plain SHA-256 of a short report can be reversed by hashing common phrasings: the log must hold only
HMACs under a server secret (0600, reused across restarts, rotatable), and `dprad audit-log was-sent`
must find a text with the right secret and say which lines it could not check without another one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from test_serve import CLIENT, LIMITS, auth, run_dir, write_keys  # noqa: F401 - run_dir is a fixture

from dprad import DpradError
from dprad.cli import main
from dprad.serve.app import create_app, running
from dprad.serve.auditlog import SECRET_FILE, ensure_secret, read_records, read_secret

SENT = "No acute cardiopulmonary abnormality."
AFTER_RESTART = "Stable cardiomegaly. No effusion."
AFTER_ROTATION = "Small right apical pneumothorax."
NEVER_SENT = "Large left pleural effusion."


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def keyed(secret: bytes, text: str) -> str:
    return hmac.new(secret, text.encode("utf-8"), hashlib.sha256).hexdigest()


def key_id(secret: bytes) -> str:
    return hashlib.sha256(secret).hexdigest()[:16]


def classify(url: str, text: str) -> None:
    r = httpx.post(f"{url}/v1/classify", json={"reports": [{"text": text}]}, headers=auth(CLIENT))
    assert r.status_code == 200, r.text


@dataclass(frozen=True)
class Served:
    state: Path
    first_secret: bytes  # STATE/audit.secret as generated on first start
    secret_after_restart: bytes
    mode: int
    old_secret_file: Path  # the first secret, moved aside at the rotation
    new_secret_file: Path  # STATE/audit.secret, generated after the rotation


@pytest.fixture(scope="module")
def served(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Served:  # noqa: F811
    """Three starts on one state folder: send, restart and send, rotate the secret and send."""
    root = tmp_path_factory.mktemp("hmac")
    keys, state = write_keys(root / "keys.yaml"), root / "state"
    secret_path = state / SECRET_FILE

    def serve_once(text: str) -> None:
        with running(create_app(run_dir, keys_path=keys, state_dir=state, limits=LIMITS)) as url:
            classify(url, text)

    serve_once(SENT)
    first, mode = secret_path.read_bytes(), stat.S_IMODE(secret_path.stat().st_mode)
    serve_once(AFTER_RESTART)
    after_restart = secret_path.read_bytes()
    old = root / "audit.secret.old"
    shutil.move(secret_path, old)  # the documented rotation: move the old secret aside, restart
    serve_once(AFTER_ROTATION)
    return Served(state, first, after_restart, mode, old, secret_path)


def was_sent(state: Path, *args: str) -> int:
    """The exit code of `dprad audit-log was-sent` (main returns on 0 and raises SystemExit otherwise)."""
    try:
        main(["audit-log", "was-sent", str(state / "audit"), *args])
    except SystemExit as ex:
        return int(ex.code or 0)
    return 0


def test_log_holds_the_keyed_hash_and_no_plain_sha256(served: Served) -> None:
    blob = b"".join(p.read_bytes() for p in (served.state / "audit").rglob("*") if p.is_file())
    assert blob  # the audit files exist and were read
    for text in (SENT, AFTER_RESTART, AFTER_ROTATION):
        assert sha256(text).encode() not in blob
        assert text.encode() not in blob
    assert b"report_sha256" not in blob
    assert keyed(served.first_secret, SENT).encode() in blob
    lines = [x for x in read_records(served.state / "audit") if x["endpoint"] == "POST /v1/classify"]
    assert lines[0]["report_hmac"] == [keyed(served.first_secret, SENT)]
    assert lines[0]["hmac_key_id"] == key_id(served.first_secret)


def test_secret_is_owner_only_and_reused_across_a_restart(served: Served) -> None:
    assert served.mode == 0o600
    assert len(served.first_secret) == 32
    assert served.secret_after_restart == served.first_secret
    lines = [x for x in read_records(served.state / "audit") if x["endpoint"] == "POST /v1/classify"]
    assert [x["hmac_key_id"] for x in lines[:2]] == [key_id(served.first_secret)] * 2
    assert lines[1]["report_hmac"] == [keyed(served.first_secret, AFTER_RESTART)]
    # after the rotation: a new secret (0600 too), a new key id on the new lines
    new = served.new_secret_file.read_bytes()
    assert new != served.first_secret
    assert stat.S_IMODE(served.new_secret_file.stat().st_mode) == 0o600
    assert lines[2]["hmac_key_id"] == key_id(new) != key_id(served.first_secret)


def test_was_sent_finds_the_text_with_the_right_secret(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    old = str(served.old_secret_file)
    assert was_sent(served.state, "--text", SENT, "--secret-file", old) == 0
    out = capsys.readouterr().out
    assert "key client" in out and "POST /v1/classify" in out and key_id(served.first_secret) in out
    # the line after the rotation is under the new secret: counted and named, not silently skipped
    assert "1 line was hashed under another secret" in out
    # the exact text, read from a file
    text_file = served.state.parent / "report.txt"
    text_file.write_text(AFTER_ROTATION, encoding="utf-8")
    assert was_sent(served.state, "--text-file", str(text_file), "--secret-file", old) == 1
    assert "1 line was hashed under another secret" in capsys.readouterr().out
    new = str(served.new_secret_file)
    assert was_sent(served.state, "--text-file", str(text_file), "--secret-file", new) == 0
    assert "2 lines were hashed under another secret" in capsys.readouterr().out
    # both secrets: every line is checked
    assert was_sent(served.state, "--text", SENT, "--secret-file", old, "--secret-file", new) == 0
    assert "another secret" not in capsys.readouterr().out
    assert was_sent(served.state, "--text", NEVER_SENT, "--secret-file", old, "--secret-file", new) == 1
    assert "not found in any of 3 lines" in capsys.readouterr().out


def test_was_sent_with_a_wrong_secret_reports_the_lines_it_cannot_check(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = ensure_secret(tmp_path)
    assert was_sent(served.state, "--text", SENT, "--secret-file", str(wrong)) == 1
    out = capsys.readouterr().out
    assert "not found in any of 0 lines" in out
    assert "3 lines were hashed under another secret: give that secret to check them" in out


def test_a_group_readable_secret_file_is_refused(
    run_dir: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret = tmp_path / "my.secret"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o640)
    keys = write_keys(tmp_path / "keys.yaml")
    with pytest.raises(DpradError, match="open to group or others") as err:
        create_app(run_dir, keys_path=keys, state_dir=tmp_path / "state", audit_secret_file=secret)
    assert str(secret) in str(err.value)
    # through `dprad serve`: one line on stderr naming the file, exit code 2, before anything is served
    with pytest.raises(SystemExit) as ex:
        main(["serve", str(run_dir), "--keys", str(keys), "--audit-secret-file", str(secret)])
    assert ex.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(secret) in lines[0] and "chmod 600" in lines[0]
    assert not (tmp_path / "state" / SECRET_FILE).exists()
    # a short secret is refused as well, with the file named
    secret.write_bytes(b"short")
    secret.chmod(0o600)
    with pytest.raises(DpradError, match="at least 16") as err:
        read_secret(secret)
    assert str(secret) in str(err.value)


def test_a_user_secret_keys_the_log_and_none_is_generated(
    run_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    secret = tmp_path / "given.secret"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"a user-made secret of enough bytes")
    os.close(fd)
    keys, state = write_keys(tmp_path / "keys.yaml"), tmp_path / "state"
    app = create_app(run_dir, keys_path=keys, state_dir=state, limits=LIMITS, audit_secret_file=secret)
    with running(app) as url:
        classify(url, SENT)
    assert not (state / SECRET_FILE).exists()
    line = next(x for x in read_records(state / "audit") if x["endpoint"] == "POST /v1/classify")
    assert line["hmac_key_id"] == key_id(secret.read_bytes())
    assert line["report_hmac"] == [keyed(secret.read_bytes(), SENT)]


def test_concurrent_first_starts_agree_on_one_secret(tmp_path: Path) -> None:
    got: list[bytes] = []
    lock = threading.Lock()

    def start() -> None:
        key = read_secret(ensure_secret(tmp_path))
        with lock:
            got.append(key.secret)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and len(set(got)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [SECRET_FILE]  # no temporary file left behind
