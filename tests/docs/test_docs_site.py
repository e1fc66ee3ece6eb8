"""The documentation site builds with ``mkdocs build --strict``, every page renders in headless Chromium with
no console error, and every internal link and anchor resolves to a built file.

The site is served over HTTP on loopback (the search index is fetched by a worker, which a ``file://`` page
may not do) and driven through the Chrome DevTools protocol on a pipe, one browser for every page: each
page is opened, its load event awaited, and every uncaught exception, ``console.error`` and failed
resource load the browser reports is an error.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built as CI builds it."""
    for module in ("mkdocs", "material"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[docs]'; .ci/run installs it)")
    out = tmp_path_factory.mktemp("site")
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert not re.search(r"^(WARNING|ERROR)", res.stderr, re.M), res.stderr[-3000:]
    return out


def built_pages(site: Path) -> list[Path]:
    """Every page of the site (not the theme's assets or the 404 page)."""
    return sorted(p for p in site.rglob("index.html") if "assets" not in p.relative_to(site).parts)


class _Links(HTMLParser):
    """Every href and src of a page, and every element id."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.urls += [a[k] for k in ("href", "src") if k in a]
        if "id" in a:
            self.ids.add(a["id"])


def _parse(page: Path) -> _Links:
    links = _Links()
    links.feed(page.read_text(encoding="utf-8"))
    return links


def test_every_internal_link_resolves_to_a_built_file(site: Path) -> None:
    pages = built_pages(site)
    # the nav's pages, and the generated reference among them
    names = {p.parent.relative_to(site).as_posix() for p in pages}
    assert {
        ".",
        "getting-started",
        "how-to/own-data",
        "explanation/guarantee",
        "reference/commands",
        "reference/config",
        "reference/run-directory",
        "benchmarks",
    } <= names, sorted(names)
    ids: dict[Path, set[str]] = {}
    broken = []
    checked = 0
    for page in pages:
        for url in _parse(page).urls:
            parts = urlsplit(url)
            if parts.scheme or parts.netloc or url.startswith(("mailto:", "data:", "javascript:")):
                continue  # not internal (the test below fails any external load the browser makes)
            target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            checked += 1
            if not target.is_file() or site.resolve() not in target.resolve().parents:
                broken.append(f"{page.relative_to(site)}: {url}")
                continue
            if parts.fragment and target.suffix == ".html":
                if target not in ids:
                    ids[target] = _parse(target).ids
                if unquote(parts.fragment) not in ids[target]:
                    broken.append(f"{page.relative_to(site)}: {url} (no such anchor)")
    assert checked > 100
    assert not broken, "\n".join(broken)


# ---------------------------------------------------------------------------------------- the browser


class Browser:
    """Headless Chromium driven through the DevTools protocol on a pipe (``--remote-debugging-pipe``):
    messages are JSON, each ended by a NUL byte, on the browser's fds 3 (in) and 4 (out)."""

    ERROR_EVENTS = ("Runtime.exceptionThrown", "Runtime.consoleAPICalled", "Log.entryAdded")

    def __init__(self, exe: str, profile: Path) -> None:
        to_r, self._to = os.pipe()
        self._from, from_w = os.pipe()
        args = [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-extensions",
            "--disable-background-networking",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        # bash puts the pipe ends on fds 3 and 4, where the browser looks for them (dash's redirections
        # take single-digit fds only)
        self._proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_r} 4>&{from_w}', *args],
            pass_fds=(to_r, from_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_r)
        os.close(from_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable", session=self.session)

    def _read(self, want: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any] | None:
        end = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                msg = json.loads(raw)
                if want(msg):
                    return dict(msg)
                if "method" in msg:
                    self.events.append(msg)
            left = end - time.monotonic()
            if left <= 0:
                return None
            if select.select([self._from], [], [], left)[0]:
                chunk = os.read(self._from, 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed its DevTools pipe")
                self._buf += chunk

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to, json.dumps(msg).encode() + b"\0")
        reply = self._read(lambda m: m.get("id") == msg["id"], timeout=30)
        assert reply is not None, f"no answer to {method}"
        assert "error" not in reply, reply
        return reply["result"]

    def open(self, url: str) -> tuple[dict[str, Any], list[str]]:
        """Load ``url``; (what the page shows, every error the browser reported while loading it)."""
        self.events.clear()
        self.call("Page.navigate", {"url": url}, self.session)
        loaded = self._read(lambda m: m.get("method") == "Page.loadEventFired", timeout=30)
        assert loaded is not None, f"{url}: no load event in 30 s"
        self._read(lambda m: False, timeout=0.25)  # what the page's scripts do just after the load event
        shown = self.call(
            "Runtime.evaluate",
            {
                "expression": "({title: document.title, h1: (document.querySelector('article h1') || {}).textContent"
                " || '', text: (document.querySelector('article') || {innerText: ''}).innerText.length,"
                " styled: getComputedStyle(document.body).fontFamily})",
                "returnByValue": True,
            },
            self.session,
        )["result"]["value"]
        return dict(shown), [_error(e) for e in self.events if _error(e)]

    def close(self) -> None:
        try:
            self.call("Browser.close")
            self._proc.wait(timeout=10)
        except Exception:  # noqa: BLE001
            self._proc.kill()
            self._proc.wait()
        finally:
            os.close(self._to)
            os.close(self._from)


def _error(event: dict[str, Any]) -> str:
    """The event as one line if it is an error, else ''."""
    method, p = event.get("method"), event.get("params", {})
    if method == "Runtime.exceptionThrown":
        return f"uncaught: {p['exceptionDetails'].get('exception', {}).get('description') or p['exceptionDetails']}"
    if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
        return "console.error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
    if method == "Log.entryAdded" and p["entry"]["level"] == "error":
        return f"{p['entry']['source']}: {p['entry']['text']} {p['entry'].get('url', '')}".strip()
    return ""


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not on PATH (Debian package 'chromium'; .ci/run installs it)")
    b = Browser(exe, tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def test_the_browser_check_sees_errors(browser: Browser, served: str) -> None:
    """The check below is not vacuous: a script error, a console.error and a missing file are all seen."""
    page = "data:text/html,<script>console.error('seen');</script><script>null.boom()</script><img src='nothing.png'>"
    _, errors = browser.open(page)
    assert any("console.error: seen" in e for e in errors), errors
    assert any(e.startswith("uncaught:") for e in errors), errors
    _, errors = browser.open(served + "no-such-page/")
    assert any("404" in e for e in errors), errors


def test_every_page_renders_in_chromium_with_no_console_error(
    site: Path, served: str, browser: Browser
) -> None:
    failures = []
    for page in built_pages(site):
        rel = page.parent.relative_to(site).as_posix()
        url = served + ("" if rel == "." else rel + "/")
        shown, errors = browser.open(url)
        if errors:
            failures.append(f"{url}: {errors}")
        # the theme's stylesheet applied and the page's own content rendered under its title
        if not (shown["title"].endswith("dprad") and shown["h1"] and shown["text"] > 200):
            failures.append(f"{url}: rendered {shown}")
        if "serif" not in shown["styled"] and "sans" not in shown["styled"]:
            failures.append(f"{url}: no stylesheet ({shown['styled']})")
    assert not failures, "\n".join(failures)
    # the search index the theme's worker fetches was built
    assert json.loads((site / "search" / "search_index.json").read_text())["docs"]


def test_no_page_names_a_local_path(site: Path) -> None:
    """The docs quote relative paths only: no home directory or machine-specific absolute path."""
    pattern = re.compile(r"(/home/|/work/|/tmp/|/Users/|[A-Z]:\\\\)")
    offenders = [
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "docs").rglob("*.md")
        if pattern.search(p.read_text(encoding="utf-8"))
    ]
    offenders += [
        f"{p.relative_to(site)}" for p in built_pages(site) if pattern.search(p.read_text(encoding="utf-8"))
    ]
    assert not offenders, offenders


def test_links_from_the_source_pages_are_relative() -> None:
    """A link between pages is written as a relative .md path, which mkdocs checks under --strict."""
    bad = []
    for md in (ROOT / "docs").rglob("*.md"):
        for url in re.findall(r"\]\(([^)\s]+)\)", md.read_text(encoding="utf-8")):
            if url.startswith("/") or (not urlsplit(url).scheme and ".html" in url):
                bad.append(f"{md.relative_to(ROOT)}: {url}")
    assert not bad, bad
