"""The JavaScript client and browser workers in a real, headless Chromium (issue 14, item 6).

Each test starts a cluster subprocess (``python -m actors.cluster ... --http 127.0.0.1:0``,
loopback only) and reads the URLs it prints; a page opens the leader's HTTP origin and
imports ``/actors.js`` from it, as users get the module, and talks to the leader's
``ws://`` listener (the leader allows its own HTTP origin). Playwright's sync API drives
Debian's ``chromium`` (``executable_path``; playwright never downloads a browser here).

Why a subprocess rather than a leader in this process: playwright's sync API blocks the
thread it runs on, and the restart test must kill the leader (SIGKILL) and start it again
on the same ports while a page is mid-run, which only a process allows.

Skipped, with the reason, when Chromium or playwright is not installed.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio

from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS, Cluster

try:
    from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
except ImportError:  # pragma: no cover - the skip below says so
    sync_playwright = None

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="chromium is not installed (Debian: apt-get install chromium): "
        "the JavaScript client cannot be tested in a browser",
    ),
    pytest.mark.skipif(
        sync_playwright is None,
        reason="playwright is not installed (pip install -e '.[test]'): "
        "the JavaScript client cannot be tested in a browser",
    ),
]

WORKERS = "tests.browser_helpers:Square"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context()
    context.set_default_timeout(15_000)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def clusters() -> Iterator[list[Cluster]]:
    """Clusters a test starts (append them): killed at its end, their output shown on failure."""
    started: list[Cluster] = []
    yield started
    for cluster in started:
        cluster.kill()
        # (captured: pytest shows it when the test failed)
        print(f"--- python -m actors.cluster {' '.join(cluster.args)}\n{cluster.output()}")


def start(clusters: list[Cluster], *args: str) -> Cluster:
    cluster = Cluster("--in-process", "--drain-grace", "1", *args)
    clusters.append(cluster)
    return cluster


def open_page(context: BrowserContext, cluster: Cluster) -> Page:
    """A page of the leader's own HTTP origin; errors it logs are kept in ``page.errors``."""
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors  # type: ignore[attr-defined]
    response = page.goto(cluster.http_url + "/healthz")
    assert response is not None and response.ok, f"GET /healthz: {response and response.status}"
    return page


def run_js(
    page: Page,
    body: str,
    arg: dict[str, Any] | None = None,
    *,
    timeout: float = 20,
    what: str = "the page",
) -> Any:
    """Run ``body`` in ``page`` as an async function of ``arg`` with ``m``, the module
    ``/actors.js`` served by the leader; fails after ``timeout`` seconds saying ``what``
    timed out."""
    script = f"""async (arg) => {{
      const m = await import("/actors.js");
      let timer;
      const limit = new Promise((_, reject) => {{
        timer = setTimeout(() => reject(new Error(`${{arg.what}}: timed out after ${{arg.timeout}} ms`)), arg.timeout);
      }});
      try {{
        return await Promise.race([(async () => {{ {body} }})(), limit]);
      }} finally {{
        clearTimeout(timer);
      }}
    }}"""
    return page.evaluate(script, {**(arg or {}), "timeout": int(timeout * 1000), "what": what})


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


# --------------------------------------------------------------------------- tests


def test_a_page_gets_a_thousand_results_each_once_from_python_workers(context, clusters):
    cluster = start(
        clusters, "--memory", "--listen", "ws://127.0.0.1:0", "--http", "127.0.0.1:0",
        "--worker", f"{WORKERS}=2",
    )  # fmt: skip
    page = open_page(context, cluster)
    started = time.monotonic()
    results = run_js(
        page,
        """
        const client = await m.Client.connect(arg.url);
        async function* payloads() {
          for (let i = 0; i < arg.n; i++) yield { i };
        }
        const results = [];
        for await (const r of client.map("browser.square", payloads(), { limit: 64 })) results.push(r);
        await client.close();
        return results;
        """,
        {"url": cluster.ws_url, "n": 1000},
        timeout=30,
        what="1000 jobs from a page",
    )
    elapsed = time.monotonic() - started
    assert len(results) == 1000, f"{len(results)} results for 1000 jobs"
    wrong = [(k, r) for k, r in enumerate(results) if r["i"] != k or r["square"] != k * k]
    assert not wrong, f"{len(wrong)} wrong or misplaced results, the first: {wrong[:3]}"
    assert {r["attempt"] for r in results} == {1}, "a job was delivered more than once"
    assert not page.errors, page.errors
    print(f"1000 jobs from a page in {elapsed:.2f} s")


def test_a_browser_worker_serves_a_python_clients_jobs(context, clusters):
    cluster = start(clusters, "--memory", "--listen", "ws://127.0.0.1:0", "--http", "127.0.0.1:0")
    page = open_page(context, cluster)
    run_js(
        page,
        """
        window.handled = [];
        class Square extends m.Worker {
          subjects = ["page.square"];
          concurrency = 8;
          async handle(job) {
            window.handled.push(job.id);
            job.progress(0.5);
            await new Promise((resolve) => setTimeout(resolve, 5));
            return { n: job.payload.n, square: job.payload.n ** 2, ua: navigator.userAgent };
          }
        }
        window.worker = m.runWorker(arg.url, new Square());
        await window.worker.ready;
        """,
        {"url": cluster.ws_url},
    )

    async def submit_all() -> list[Any]:
        from actors import Client

        with trio.fail_after(20):
            async with Client.connect(cluster.ws_url) as client:
                payloads = [{"n": n} for n in range(100)]
                return [r async for r in client.map("page.square", payloads, limit=16)]

    results = trio.run(submit_all)
    assert [r["n"] for r in results] == list(range(100))
    assert all(r["square"] == r["n"] ** 2 for r in results), results[:5]
    assert all("Chrome" in r["ua"] for r in results), results[0]["ua"]
    handled = page.evaluate("window.handled")
    assert len(handled) == 100 and len(set(handled)) == 100, (
        f"the page handled {len(handled)} jobs ({len(set(handled))} distinct) for 100"
    )
    run_js(page, "await window.worker.stop();")
    assert not page.errors, page.errors


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_the_page_carries_on_when_the_leader_restarts(context, clusters, tmp_path: Path, signum):
    args = ["--data-dir", str(tmp_path / "journal"), "--sync", "normal", "--worker", f"{WORKERS}=2"]
    first = start(clusters, *args, "--listen", "ws://127.0.0.1:0", "--http", "127.0.0.1:0")
    ws_port, http_port = port_of(first.ws_url), port_of(first.http_url)
    page = open_page(context, first)
    n = 600
    # waitForWorker: while the cluster drains (SIGTERM) its workers leave before the leader
    # stops, and after a restart the page may be back before they are: a submit then
    # waits for a worker instead of failing NoRoute.
    run_js(
        page,
        """
        const client = await m.Client.connect(arg.url, { reconnect: { base: 50, cap: 500 } });
        window.client = client;
        window.results = new Map();
        window.settled = 0;
        window.failures = [];
        window.events = [];
        (async () => { for await (const e of client.status()) window.events.push(e.type); })();
        async function one(i) {
          try {
            const r = await client.submit("browser.square", { i, sleep: 0.01 }, { jobId: `job-${i}`, waitForWorker: true });
            if (window.results.has(i)) window.failures.push(`job ${i}: a second outcome`);
            window.results.set(i, r);
          } catch (exc) {
            window.failures.push(`job ${i}: ${exc.name}: ${exc.message}`);
          } finally {
            window.settled++;
          }
        }
        window.run = (async () => {
          let next = 0;
          const lane = async () => { while (next < arg.n) await one(next++); };
          await Promise.all(Array.from({ length: 64 }, lane));
        })();
        """,
        {"url": first.ws_url, "n": n},
    )
    # Stop the leader (and its in-process workers) once the run is well under way.
    page.wait_for_function("window.settled >= 150", timeout=15_000)
    status = first.stop(signum)
    assert status == (0 if signum == signal.SIGTERM else -signum), (
        f"the first cluster exited {status}:\n{first.output()}"
    )
    before = page.evaluate("window.settled")
    assert before < n, f"the run ended before the leader was killed ({before} of {n})"
    second = start(
        clusters, *args, "--listen", f"ws://127.0.0.1:{ws_port}", "--http", f"127.0.0.1:{http_port}"
    )
    assert second.ws_url == first.ws_url and second.http_url == first.http_url
    out = run_js(
        page,
        """
        await window.run;
        const results = [...window.results.entries()].sort((a, b) => a[0] - b[0]);
        const connects = window.client.connects;
        await window.client.close();
        return { results, settled: window.settled, failures: window.failures, connects, events: window.events };
        """,
        timeout=30,
        what="the run across the leader's restart",
    )
    assert not out["failures"], out["failures"][:10]
    assert out["settled"] == n, f"{out['settled']} of {n} submits settled"
    results = out["results"]
    assert [i for i, _ in results] == list(range(n)), "a job has no result"
    wrong = [(i, r) for i, r in results if r["i"] != i or r["square"] != i * i]
    assert not wrong, wrong[:3]
    assert out["connects"] >= 2, f"the page did not reconnect: {out['events']}"
    assert not page.errors, page.errors


def test_a_closed_worker_tab_gives_its_job_back_at_once(context, clusters, tmp_path: Path):
    # The retry backoff (20 s) and the ack timeout (60 s) are long: the job can come back
    # within seconds only by the tab's Nack on pagehide (a Nack's delay is 0).
    config = tmp_path / "cluster.toml"
    config.write_text(
        "[leader]\nmemory = true\nack_timeout = 60.0\n"
        'listen = ["ws://127.0.0.1:0"]\nhttp = "127.0.0.1:0"\n'
        "[leader.retry]\nbase = 20.0\ncap = 20.0\njitter = 0.0\n"
    )
    cluster = start(clusters, "--config", str(config))
    worker_js = """
        window.got = null;
        class Tab extends m.Worker {
          subjects = ["tab.job"];
          concurrency = 1;
          async handle(job) {
            window.got = { id: job.id, attempt: job.attempt };
            if (arg.hang) await new Promise(() => {});  // until the tab goes away
            return { by: arg.name, attempt: job.attempt, payload: job.payload };
          }
        }
        window.worker = m.runWorker(arg.url, new Tab(), { name: arg.name });
        await window.worker.ready;
    """
    first = open_page(context, cluster)
    run_js(first, worker_js, {"url": cluster.ws_url, "name": "first", "hang": True})
    client_page = open_page(context, cluster)
    run_js(
        client_page,
        """
        const client = await m.Client.connect(arg.url);
        window.outcome = client.submit("tab.job", { x: 1 }, { timeout: 50000 }).then(
          (value) => ({ value }), (error) => ({ error: `${error.name}: ${error.message}` }));
        """,
        {"url": cluster.ws_url},
    )
    first.wait_for_function("window.got !== null", timeout=10_000)
    second = open_page(context, cluster)
    run_js(second, worker_js, {"url": cluster.ws_url, "name": "second", "hang": False})

    started = time.monotonic()
    first.close()  # mid-job: the handler still awaits
    outcome = run_js(
        client_page,
        "return await window.outcome;",
        timeout=15,
        what="the job of the closed tab (retry backoff 20 s: not given back on pagehide?)",
    )
    elapsed = time.monotonic() - started
    assert "error" not in outcome, outcome
    assert outcome["value"] == {"by": "second", "attempt": 2, "payload": {"x": 1}}, outcome
    assert elapsed < 5, f"the job came back after {elapsed:.1f} s: not given back on pagehide"
    assert not client_page.errors and not second.errors, (client_page.errors, second.errors)
