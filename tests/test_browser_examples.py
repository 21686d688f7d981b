"""The browser examples (``examples/browser/``): served by the leader's HTTP server, and
working in a real browser.

Without a browser: the leader serves ``/examples/submit.html`` and ``worker.html`` (and
their script and stylesheet) with their content type, the strict Content-Security-Policy
and the leader's WebSocket URL filled in; other names, and paths that climb out, are 404.

With Chromium (Debian's ``/usr/bin/chromium`` driven by Python's playwright; never a
downloaded browser; skipped with the reason otherwise): against a cluster process running
the demo's Python workers (``examples.square:Square``), ``submit.html`` submits a job and
shows its result; ``worker.html`` serves the jobs of a Python client (the README's shell
command) and ``submit.html`` cancels one of its jobs.
"""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.leader import Leader
from actors.leader._http import EXAMPLES_DIR, HttpApp, example_files
from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS
from tests.test_http import request

try:
    from playwright.sync_api import expect
except ImportError:  # (the browser tests skip)
    expect = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- served


async def test_the_leader_serves_the_example_pages_with_a_strict_policy(nursery):
    leader = Leader(
        listen=["tcp://127.0.0.1:0", "ws://127.0.0.1:0"], http="127.0.0.1:0", memory=True
    )
    await nursery.start(leader.run)
    http = leader.http_url
    assert http is not None
    ws = leader.urls[1]
    ws_origin = ws.rstrip("/")
    for name in ("submit.html", "worker.html"):
        reply = await request(http, f"/examples/{name}")
        assert reply.status == 200, reply.body
        assert reply.headers["content-type"] == "text/html; charset=utf-8"
        csp = reply.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self';" in csp
        assert "style-src 'self';" in csp and "'unsafe-inline'" not in csp
        assert f"connect-src {ws_origin};" in csp  # the leader's WebSocket, nothing else
        assert reply.headers["x-content-type-options"] == "nosniff"
        body = reply.body.decode()
        assert f'<meta name="actors-leader" content="{ws}">' in body  # the page's default
        assert '<script type="module" src="/examples/' in body
        assert "<script>" not in body and "<style>" not in body and " style=" not in body
        assert "http://" not in body and "https://" not in body  # no external resource
        again = await request(
            http, f"/examples/{name}", headers={"If-None-Match": reply.headers["etag"]}
        )
        assert again.status == 304
    for name, kind in (
        ("submit.js", "text/javascript"),
        ("page.js", "text/javascript"),
        ("style.css", "text/css"),
    ):
        reply = await request(http, f"/examples/{name}")
        assert reply.status == 200 and reply.headers["content-type"] == f"{kind}; charset=utf-8"
    index = await request(http, "/")
    assert index.status == 200 and index.headers["content-type"] == "text/html; charset=utf-8"
    assert (
        b'href="/examples/submit.html"' in index.body
        and b'href="/examples/worker.html"' in index.body
    )
    assert "content-security-policy" in index.headers
    for path in (
        "/examples/nope.html",
        "/examples/README.md",
        "/examples/../README.md",
        "/examples/%2e%2e/README.md",
        "/examples/..%2fREADME.md",
        "/examples//etc/passwd",
        "/examples/",
        "/examples/submit.html/",
        "/examples/cluster.toml",
        "/examples/square.py",
    ):
        assert (await request(http, path)).status == 404, path
    # A page of another origin may not read them (they are not public like /actors.js).
    foreign = await request(
        http, "/examples/submit.html", headers={"Origin": "http://evil.example"}
    )
    assert foreign.status == 403


async def test_the_allow_list_takes_regular_files_with_safe_names(tmp_path, nursery):
    (tmp_path / "page.html").write_text('<meta name="actors-leader" content="">')
    (tmp_path / "ok-1.js").write_text("")
    (tmp_path / "x.css").write_text("")
    (tmp_path / ".hidden.html").write_text("")
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "dir.html").mkdir()
    (tmp_path / "link.html").symlink_to(ROOT / "README.md")
    assert sorted(example_files(tmp_path)) == [
        "/examples/ok-1.js",
        "/examples/page.html",
        "/examples/x.css",
    ]
    assert example_files(tmp_path / "missing") == {} and example_files(None) == {}
    assert "/examples/submit.html" in example_files(EXAMPLES_DIR)
    # No WebSocket listener: nothing to connect to, and an empty default.
    leader = Leader(listen=["tcp://127.0.0.1:0"], memory=True)
    await nursery.start(leader.run)
    app = HttpApp(leader, examples_dir=tmp_path)
    assert "connect-src 'none';" in app.content_security_policy()
    assert "/" in app.routes
    assert "/" not in HttpApp(leader, examples_dir=None, dashboard_dir=None).routes


# --------------------------------------------------------------------------- in Chromium


def _chromium_reason() -> str | None:
    if CHROMIUM is None or not os.access(CHROMIUM, os.X_OK):
        return "no Chromium at /usr/bin/chromium or on PATH (Debian's chromium package)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Python's playwright is not installed"
    return None


class Cluster:
    """``python -m actors.cluster`` with the demo's workers, on free loopback ports."""

    def __init__(self, proc: subprocess.Popen[str], urls: dict[str, str]) -> None:
        self.proc = proc
        self.tcp = urls["tcp"]
        self.ws = urls["ws"]
        self.http = urls["http"]


@pytest.fixture
def demo_cluster() -> Iterator[Cluster]:
    cmd = [
        sys.executable, "-m", "actors.cluster", "--memory", "--in-process",
        "--listen", "tcp://127.0.0.1:0", "--listen", "ws://127.0.0.1:0", "--http", "127.0.0.1:0",
        "--worker", "examples.square:Square=2",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    urls: dict[str, str] = {}
    lines: list[str] = []
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    try:
        deadline = time.monotonic() + 15
        while "cluster ready" not in "".join(lines):
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                pytest.fail("the cluster did not start:\n" + "".join(lines))
            line = proc.stdout.readline()
            if not line:
                pytest.fail("the cluster exited:\n" + "".join(lines))
            lines.append(line)
            if found := re.match(r"(leader|http) listening on ((\w+)://\S+)", line):
                urls[found[3]] = found[2]
        yield Cluster(proc, urls)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        selector.close()
        proc.stdout.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    reason = _chromium_reason()
    if reason is not None:
        pytest.skip(f"no browser for the examples' end-to-end tests: {reason}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _page(browser: Any, url: str, problems: list[str]) -> Any:
    """A new page at ``url`` whose console errors (CSP violations...) go to ``problems``."""
    page = browser.new_page()  # (CSP on: playwright's eval-based waits are refused)
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.set_default_timeout(10_000)
    page.goto(url)
    return page


@pytest.mark.e2e
def test_submit_page_gets_results_from_the_python_workers(demo_cluster, browser):
    problems: list[str] = []
    # No ?ws=: the page connects to the URL the leader wrote into it.
    page = _page(browser, f"{demo_cluster.http}/examples/submit.html", problems)
    page.wait_for_selector("#status.connected")
    assert page.input_value("#url") == demo_cluster.ws
    page.fill("#payload", '{"n": 12}')
    page.fill("#count", "3")
    page.click("#go")
    expect(page.locator("td.value.ok")).to_have_text(['{"square":144}'] * 3)
    for bar in page.locator("#jobs progress").all():  # (no eval: the page's CSP forbids it)
        expect(bar).to_have_js_property("value", 1)
    page.fill("#subject", "no.such.subject")
    page.fill("#count", "1")
    page.click("#go")
    page.wait_for_selector("td.value.error")
    assert "NoRoute" in page.inner_text("td.value.error")
    assert problems == [], problems


@pytest.mark.e2e
def test_worker_page_serves_a_python_client_and_submit_page_cancels(demo_cluster, browser):
    problems: list[str] = []
    worker = _page(browser, f"{demo_cluster.http}/examples/worker.html?start=no", problems)
    worker.fill("#duration", "100")
    worker.click("#start")
    worker.wait_for_selector("#status.connected")
    # The README's command (its --url: this cluster's, on a free port).
    done = subprocess.run(
        [sys.executable, "-m", "actors", "submit", "browser.upper", '"hi"',
         "--url", demo_cluster.tcp, "--timeout", "10", "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '"HI"'
    worker.wait_for_selector("td.ok")
    assert worker.inner_text("td.ok") == '"HI"'
    # A slow job, cancelled from submit.html: given back by the worker tab.
    worker.click("#stop")
    worker.wait_for_selector("#status.closed")
    worker.fill("#duration", "5000")
    worker.click("#start")
    worker.wait_for_selector("#status.connected")
    submit = _page(
        browser,
        f"{demo_cluster.http}/examples/submit.html?ws={demo_cluster.ws}&subject=browser.upper",
        problems,
    )
    submit.wait_for_selector("#status.connected")
    assert submit.input_value("#payload") == '"hi"'
    submit.click("#go")
    expect(submit.locator("#jobs")).to_contain_text("step 1 of 5")
    submit.click("#jobs button")
    submit.wait_for_selector("td.value.error")
    assert "JobCancelled" in submit.inner_text("td.value.error")
    worker.wait_for_selector("td.error")
    assert "given back" in worker.inner_text("td.error")
    assert problems == [], problems
