"""The dashboard (``GET /``) in headless Chromium, used as a person uses it.

Debian's ``/usr/bin/chromium``, driven by Python's playwright (never a downloaded browser;
skipped with the reason otherwise), against a leader run in this process, in a thread of
its own (its own trio loop), with Python workers:

- the page shows the workers and the counts that ``/api/stats`` and ``/api/workers``
  report, with what a hostile worker and subject name hold shown as text;
- a dead letter's Retry button moves it back to the queue (the API then shows it gone
  from the dead letters and the job done), a job lookup shows why a job failed;
- a screenshot is kept (in ``$ACTORS_ARTIFACTS`` when set, else the test's directory);
- with 100,000 dead letters in the journal and 1,000 workers connected, the first render
  takes less than 3 s, snapshots stay small, and paging is quick;
- opened from elsewhere, by a name that is not loopback's (``--http 0.0.0.0``, users): the
  page, its feed (``/ws`` on the HTTP port) and its API calls are its own origin; retry
  all says what it did, and why letters were refused.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

import runtime
from actors import AuthConfig, Leader, User, Worker
from actors.client import Client
from actors.leader._dashboard import MAX_SNAPSHOT_BYTES
from actors.worker._job import Job
from actors.worker._runner import run_worker
from protocol import SUPPORTED_VERSIONS, Hello
from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS

try:
    from playwright.sync_api import expect
except ImportError:  # (the tests skip)
    expect = None  # type: ignore[assignment]

pytestmark = pytest.mark.e2e

#: A worker and group name, and a subject, that would be markup if written as HTML.
XSS_NAME = "<img src=x onerror=document.title='owned'>"
XSS_SUBJECT = "xss.<img/src=x/onerror=document.title='owned'>"


class Square(Worker):
    """``dash.square``: n -> n * n; ``dash.big``: a result of 10,000 characters;
    ``dash.slow``: waits a minute (for a cancel)."""

    subjects = ["dash.square", "dash.big", "dash.slow"]
    concurrency = 8

    async def handle(self, job: Job) -> Any:
        if job.subject == "dash.big":
            return "x" * 10_000
        if job.subject == "dash.slow":
            await trio.sleep(60)
        return job.payload * job.payload


class Picky(Worker):
    """Fails every job while ``broken`` (set by the test), with the reason."""

    subjects = ["dash.picky"]
    concurrency = 4
    broken = True

    async def handle(self, job: Job) -> Any:
        if Picky.broken:
            raise ValueError(f"bad input {job.payload!r}: refused by Picky")
        return {"ok": job.payload}


class LeaderThread:
    """A :class:`Leader` served by its own trio loop in a thread, so that the test's
    thread may drive a browser synchronously; :meth:`run` calls into that loop."""

    def __init__(self, **settings: Any) -> None:
        settings.setdefault("listen", ["tcp://127.0.0.1:0"])
        settings.setdefault("http", "127.0.0.1:0")
        self.leader = Leader(**settings)
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        if not self._ready.wait(30) or self._failure is not None:
            raise RuntimeError("the leader did not start") from self._failure
        assert self.leader.http_url is not None
        self.http = self.leader.http_url
        self.tcp = next(u for u in self.leader.urls if u.startswith("tcp://"))

    def _main(self) -> None:
        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.leader.run)
                self._ready.set()
                await trio.sleep_forever()

        try:
            trio.run(main)
        except BaseException as exc:  # (reported by the constructor or stop())
            self._failure = exc
            self._ready.set()

    def run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """``await fn(*args)`` in the leader's loop; its result."""
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def start(self, fn: Callable[..., Awaitable[Any]]) -> None:
        """Run ``fn`` (which takes ``task_status``) in the background of the leader's loop,
        once it says it started."""

        async def starting() -> None:
            assert self._nursery is not None
            await self._nursery.start(fn)

        self.run(starting)

    def stop(self) -> None:
        if self._nursery is not None and self._thread.is_alive():
            nursery = self._nursery
            trio.from_thread.run_sync(nursery.cancel_scope.cancel, trio_token=self._token)
        self._thread.join(30)
        assert not self._thread.is_alive()


def api(server: LeaderThread, path: str, method: str = "GET") -> Any:
    """The JSON answer of one API request (no token: the leader has no users)."""
    request = urllib.request.Request(f"{server.http}{path}", method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _chromium_reason() -> str | None:
    if CHROMIUM is None or not os.access(CHROMIUM, os.X_OK):
        return "no Chromium at /usr/bin/chromium or on PATH (Debian's chromium package)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Python's playwright is not installed"
    return None


@pytest.fixture
def browser() -> Iterator[Any]:
    reason = _chromium_reason()
    if reason is not None:
        pytest.skip(f"no browser for the dashboard's tests: {reason}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


#: The name the pages are opened by in :func:`named_browser` (resolved to 127.0.0.1 by
#: Chromium itself: what a person on another machine would type).
REMOTE_NAME = "dash.example"


@pytest.fixture
def named_browser() -> Iterator[Any]:
    """Chromium in which :data:`REMOTE_NAME` resolves to this machine."""
    reason = _chromium_reason()
    if reason is not None:
        pytest.skip(f"no browser for the dashboard's tests: {reason}")
    from playwright.sync_api import sync_playwright

    rules = f"--host-resolver-rules=MAP {REMOTE_NAME} 127.0.0.1"
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, rules])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    """Where screenshots are kept: ``$ACTORS_ARTIFACTS`` (CI keeps it), else the test's
    temporary directory."""
    where = os.environ.get("ACTORS_ARTIFACTS")
    path = Path(where) if where else tmp_path
    path.mkdir(parents=True, exist_ok=True)
    return path


def open_dashboard(browser: Any, url: str, problems: list[str]) -> Any:
    """The dashboard in a new page; its console errors (CSP violations...) and uncaught
    exceptions go to ``problems``."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.set_default_timeout(10_000)
    page.goto(url)
    return page


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not come true in time")
        time.sleep(0.05)


def as_count(n: int) -> str:
    return f"{n:,}"


def span(first: int, last: int, total: int) -> str:
    """A pager's text: ``1 (en dash) 200 of 1,000``."""
    return f"{first:,}\N{EN DASH}{last:,} of {total:,}"


def stats_workers(server: LeaderThread) -> int:
    stats = api(server, "/api/stats")
    assert stats["workers_online"] == stats["workers"]
    return int(stats["workers_online"])


# --------------------------------------------------------------------------- a person's view


def test_the_dashboard_shows_what_the_api_reports_and_retries_a_dead_letter(browser, artifacts):
    Picky.broken = True
    server = LeaderThread(memory=True, max_attempts=1, name="dash-leader")
    try:
        url = server.tcp
        server.start(partial(run_worker, Square(), url, name="sq-1", group="squares"))
        server.start(partial(run_worker, Square(), url, name="sq-2", group="squares"))
        server.start(partial(run_worker, Picky(), url, name="picky-1", group="picky"))
        server.start(
            partial(
                run_worker, Square(), url, name=XSS_NAME, group=XSS_NAME, subjects=[XSS_SUBJECT]
            )
        )

        async def jobs() -> list[str]:
            async with Client.connect(url) as client:
                for i in range(20):
                    assert await client.submit("dash.square", i) == i * i
                assert await client.submit(XSS_SUBJECT, 3) == 9
                return [await client.enqueue("dash.picky", {"n": i}) for i in range(3)]

        dead_ids = server.run(jobs)
        wait_for(lambda: api(server, "/api/dead-letters")["total"] == 3)

        problems: list[str] = []
        page = open_dashboard(browser, server.http, problems)
        page.wait_for_selector("#status.connected")
        expect(page.locator("#node")).to_have_text("dash-leader")
        # The groups and workers, as /api/workers lists them.
        workers = api(server, "/api/workers")
        names = [w["name"] for w in workers["workers"]]
        assert sorted(names) == sorted(["sq-1", "sq-2", "picky-1", XSS_NAME])
        expect(page.locator("#workers tbody td:first-child")).to_have_text(names)  # (in order)
        expect(page.locator("#workers tbody td:nth-child(3)")).to_have_text(["online"] * 4)
        expect(page.locator("#workers-page")).to_have_text(span(1, 4, 4))
        for group, count in (("squares", "2"), ("picky", "1"), (XSS_NAME, "1")):
            row = page.locator("#groups tbody tr").filter(
                has=page.locator("td:first-child", has_text=group)
            )
            expect(row.locator("td").nth(2)).to_have_text(count)
        expect(page.locator("#t-workers_online")).to_have_text(as_count(stats_workers(server)))

        # A group's instance count, as its cluster says it (and the API's groups show it).
        async def want_three() -> None:
            server.leader.set_group_instances("squares", 3)

        server.run(want_three)
        squares = page.locator("#groups tbody tr").filter(
            has=page.locator("td:first-child", has_text="squares")
        )
        expect(squares.locator("td").nth(2)).to_have_text("2 / 3")
        expect(squares.locator("td").nth(11).locator("input")).to_have_value("3")
        # The counts, as /api/stats reports them.
        stats = api(server, "/api/stats")
        done = sum(s["done"] for s in stats["subjects"].values())
        failed = sum(s["failed"] for s in stats["subjects"].values())
        dead = sum(s["dead"] for s in stats["subjects"].values())
        assert (done, failed, dead, stats["dead_letters"]) == (21, 0, 3, 3)
        expect(page.locator("#t-done")).to_have_text(as_count(done))
        expect(page.locator("#t-failed")).to_have_text(as_count(failed))
        expect(page.locator("#t-dead_letters")).to_have_text(as_count(stats["dead_letters"]))
        square_row = page.locator("#subjects tbody tr", has_text="dash.square")
        expect(square_row.locator("td").nth(4)).to_have_text(
            as_count(stats["subjects"]["dash.square"]["done"])
        )
        # Hostile names are text: no element was made of them.
        expect(page.locator("#workers tbody")).to_contain_text(XSS_NAME)
        expect(page.locator("#subjects tbody")).to_contain_text(XSS_SUBJECT)
        assert page.locator("main img, section img, table img").count() == 0
        assert page.title() == "trio-actors dashboard"

        # The dead letters, newest first, with a Retry button each.
        dead_rows = page.locator("#dead-letters tbody tr")
        expect(dead_rows).to_have_count(3)
        expect(page.locator("#dead-total")).to_have_text("(3)")
        expect(page.locator("#dead-letters tbody td:nth-child(5)").first).to_contain_text(
            "ValueError: bad input"
        )
        # Why did a job fail? Looked up from its dead letter's row.
        page.locator("#dead-letters tbody tr", has_text=dead_ids[0]).locator("button.link").click()
        expect(page.locator("#job-state")).to_have_text("dead")
        expect(page.locator("#job-error")).to_contain_text("refused by Picky")
        expect(page.locator("#job-cancel")).to_be_hidden()

        # Retry one: back in the queue, done by the mended worker, gone from the dead.
        Picky.broken = False
        page.locator("#dead-letters tbody tr", has_text=dead_ids[1]).locator("button.retry").click()
        expect(page.locator("#notice")).to_contain_text("is queued again")
        wait_for(lambda: api(server, f"/api/jobs/{dead_ids[1]}")["state"] == "done")
        listing = api(server, "/api/dead-letters")
        assert listing["total"] == 2
        assert dead_ids[1] not in [d["job_id"] for d in listing["dead_letters"]]
        expect(dead_rows).to_have_count(2)
        page.fill("#job-id", dead_ids[1])
        page.click("#lookup button")
        expect(page.locator("#job-state")).to_have_text("done")
        expect(page.locator("#job-result")).to_contain_text('"ok"')

        # A long result is shown cut; a running job is cancelled from its lookup.
        async def more_jobs() -> tuple[str, str]:
            async with Client.connect(url) as client:
                big = await client.enqueue("dash.big", 1)
                slow = await client.enqueue("dash.slow", 2)
                return big, slow

        big, slow = server.run(more_jobs)
        wait_for(lambda: api(server, f"/api/jobs/{big}")["state"] == "done")
        page.fill("#job-id", big)
        page.click("#lookup button")
        expect(page.locator("#job-result")).to_contain_text("xxxx")
        shown = page.locator("#job-result").inner_text()
        assert len(shown) <= 2100 and "…" in shown, len(shown)
        wait_for(lambda: api(server, f"/api/jobs/{slow}")["state"] == "running")
        page.fill("#job-id", slow)
        page.click("#lookup button")
        expect(page.locator("#job-state")).to_have_text("running")
        page.click("#job-cancel")
        expect(page.locator("#notice")).to_contain_text("cancelled")
        expect(page.locator("#job-state")).to_have_text("cancelled")
        assert api(server, f"/api/jobs/{slow}")["state"] == "cancelled"

        # Rows are updated in place from one snapshot to the next, not made again.
        row = page.locator("#workers tbody tr").first.element_handle()
        seen = int(page.locator("body").get_attribute("data-snapshots") or "0")
        page.wait_for_selector(f"body[data-snapshots='{seen + 2}']", state="attached")
        assert row.evaluate("row => row.isConnected")

        shot = artifacts / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.exists() and shot.stat().st_size > 10_000
        assert problems == [], problems
    finally:
        server.stop()


def test_the_page_asks_for_a_token_and_uses_it(browser):
    admin, viewer = "a" * 12 + "-admin-token-0001", "v" * 12 + "-viewer-token-001"
    auth = AuthConfig(
        users=(
            User(name="ops", tokens=(admin,), subscribe=[">"], submit=[">"], admin=True),
            User(name="viewer", tokens=(viewer,), subscribe=["events.>"]),
        )
    )
    server = LeaderThread(memory=True, auth=auth)
    try:
        problems: list[str] = []
        page = open_dashboard(browser, server.http, problems)
        expect(page.locator("#login")).to_be_visible()
        page.fill("#token", "not-a-token-of-this-leader")
        page.click("#login button")
        expect(page.locator("#login-error")).to_contain_text("refused")
        # A viewer: the snapshots, not the dead letters (for admins).
        page.fill("#token", viewer)
        page.click("#login button")
        expect(page.locator("#status")).to_have_class("connected")
        page.wait_for_selector("body[data-snapshots]", state="attached")
        expect(page.locator("#login")).to_be_hidden()
        expect(page.locator("#dead-total")).to_have_text("(for admins only)")
        # Kept for the tab's session: a reload connects at once.
        page.reload()
        expect(page.locator("#status")).to_have_class("connected")
        expect(page.locator("#login")).to_be_hidden()
        # An admin (another tab's session): the dead letters too.
        other = open_dashboard(browser, server.http, problems)
        other.fill("#token", admin)
        other.click("#login button")
        expect(other.locator("#dead-total")).to_have_text("(0)")
        # (the refused token and the viewer's 403 are logged by the browser; nothing else)
        assert [p for p in problems if "Failed to load resource" not in p] == [], problems
    finally:
        server.stop()


def test_read_only_hides_what_would_change_state(browser):
    server = LeaderThread(memory=True, http_read_only=True)
    try:
        problems: list[str] = []
        page = open_dashboard(browser, server.http, problems)
        page.wait_for_selector("body[data-snapshots]")
        expect(page.locator("#read-only-badge")).to_be_visible()
        expect(page.locator("#dead-retry-all")).to_be_hidden()
        assert problems == [], problems
    finally:
        server.stop()


# --------------------------------------------------------------------------- at scale


def fill_dead_letters(data_dir: Path, count: int) -> str:
    """Make one real dead letter in the journal of ``data_dir`` (a leader fails a job),
    then copy its row until there are ``count`` (newest last); returns a job id."""
    server = LeaderThread(data_dir=str(data_dir), max_attempts=1)
    try:
        Picky.broken = True
        server.start(partial(run_worker, Picky(), server.tcp, name="picky-0", group="picky"))

        async def fail() -> str:
            async with Client.connect(server.tcp) as client:
                return await client.enqueue("dash.picky", {"n": -1})

        job_id = server.run(fail)
        wait_for(lambda: api(server, "/api/dead-letters")["total"] == 1)
    finally:
        server.stop()
    journal = next(data_dir.glob("*.sqlite3"))
    with sqlite3.connect(journal) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(dead_letters)")]
        rest = ", ".join(c for c in columns if c not in ("job_id", "dead_at"))
        db.execute(
            f"""WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
            INSERT INTO dead_letters (job_id, dead_at, {rest})
            SELECT printf('copy-%06d', n.i), d.dead_at - 100000 + n.i, {rest}
            FROM n, dead_letters AS d WHERE d.job_id = ?""",
            (count - 1, job_id),
        )
    return job_id


async def connect_workers(
    url: str, count: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """``count`` raw worker connections (a Hello, then silence), opened 16 at a time;
    started once all are welcome."""

    async def one(i: int, *, task_status: trio.TaskStatus[None]) -> None:
        hello = Hello(
            mid=0, role="worker", name=f"w{i:04d}", versions=SUPPORTED_VERSIONS,
            patterns=(f"scale.{i}",), credit=4, group=f"group-{i % 40:02d}",
            meta={"host": f"host-{i % 25}", "pid": 10_000 + i},
        )  # fmt: skip
        async with runtime.open_connection(url, hello=hello):
            task_status.started()
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:

        async def opener(first: int) -> None:
            for i in range(first, count, 16):
                await nursery.start(one, i)

        async with trio.open_nursery() as openers:
            for first in range(16):
                openers.start_soon(opener, first)
        task_status.started()


def test_the_dashboard_stays_responsive_with_100k_dead_letters_and_1000_workers(
    browser, tmp_path, artifacts
):
    fill_dead_letters(tmp_path, 100_000)
    server = LeaderThread(
        data_dir=str(tmp_path),
        heartbeat=None,
        max_connections=4096,
        max_connections_per_address=4096,
    )
    try:
        server.start(partial(connect_workers, server.tcp, 1000))
        stats = api(server, "/api/stats")
        assert stats["workers"] == 1000
        assert api(server, "/api/dead-letters?limit=1")["total"] == 100_000

        async def snapshot_size() -> int:
            feed = server.leader.dashboard
            return len(feed.payload(trio.current_time() + feed.interval, full=True).data)

        size = server.run(snapshot_size)
        assert size < 256 * 1024 < MAX_SNAPSHOT_BYTES, size

        problems: list[str] = []
        started = time.monotonic()
        page = open_dashboard(browser, server.http, problems)
        expect(page.locator("#workers tbody tr")).to_have_count(200)
        expect(page.locator("#dead-letters tbody tr")).to_have_count(50)
        first_render = time.monotonic() - started
        print(f"first render with 100,000 dead letters and 1,000 workers: {first_render:.2f} s")
        assert first_render < 3.0, first_render
        expect(page.locator("#workers-page")).to_have_text(span(1, 200, 1000))
        expect(page.locator("#dead-page")).to_have_text(span(1, 50, 100_000) + ", newest first")
        expect(page.locator("#t-workers_online")).to_have_text("1,000")
        expect(page.locator("#groups-note")).to_have_text("")
        expect(page.locator("#groups tbody tr")).to_have_count(40)
        # Paging: the API's pages, quickly.
        started = time.monotonic()
        page.click("#dead-next")
        expect(page.locator("#dead-page")).to_have_text(span(51, 100, 100_000) + ", newest first")
        page.click("#workers-next")
        expect(page.locator("#workers-page")).to_have_text(span(201, 400, 1000))
        second_page = api(server, "/api/workers?offset=200&limit=1")["workers"][0]["name"]
        expect(page.locator("#workers tbody td:first-child").first).to_have_text(second_page)
        assert time.monotonic() - started < 2.0
        # Each snapshot re-renders in place, quickly.
        page.wait_for_selector("body[data-snapshots='3']", state="attached")
        render_ms = float(page.locator("body").get_attribute("data-render-ms") or "inf")
        print(f"a snapshot of {size:,} bytes, rendered in {render_ms} ms")
        assert render_ms < 100, render_ms
        page.screenshot(path=str(artifacts / "dashboard-at-scale.png"))
        assert problems == [], problems
    finally:
        server.stop()


# --------------------------------------------------------------------------- from elsewhere


def test_the_dashboard_works_from_another_machine(named_browser, artifacts):
    admin = "a" * 12 + "-admin-token-0001"
    auth = AuthConfig(
        users=(
            User(
                name="ops", tokens=(admin,), admin=True,
                subscribe=[">"], submit=[">"], publish=[">"], serve=[">"],
            ),
        )
    )  # fmt: skip
    server = LeaderThread(memory=True, http="0.0.0.0:0", auth=auth, max_attempts=1)
    try:
        Picky.broken = True
        server.start(
            partial(run_worker, Picky(), server.tcp, name="picky-1", group="picky", token=admin)
        )

        async def fail() -> list[str]:
            async with Client.connect(server.tcp, token=admin) as client:
                return [await client.enqueue("dash.picky", {"n": i}) for i in range(3)]

        server.run(fail)

        def dead_letters() -> int:
            request = urllib.request.Request(
                f"{server.http}/api/dead-letters", headers={"Authorization": f"Bearer {admin}"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(json.loads(response.read())["total"])

        wait_for(lambda: dead_letters() == 3)
        port = server.http.rsplit(":", 1)[1]
        problems: list[str] = []
        page = open_dashboard(named_browser, f"http://{REMOTE_NAME}:{port}/", problems)
        page.fill("#token", admin)
        page.click("#login button")
        # Its feed, on the HTTP port, by that name:
        expect(page.locator("#status")).to_have_text(f"connected to ws://{REMOTE_NAME}:{port}/ws")
        page.wait_for_selector("body[data-snapshots]", state="attached")
        expect(page.locator("#t-dead_letters")).to_have_text("3")
        expect(page.locator("#dead-letters tbody tr")).to_have_count(3)
        # Its API calls (POST, with the page's Origin): retry all, which says what it did.
        page.on("dialog", lambda dialog: dialog.accept())
        Picky.broken = False
        page.click("#dead-retry-all")
        expect(page.locator("#notice")).to_have_text("retried 3, none refused, 0 left")
        wait_for(lambda: dead_letters() == 0)
        expect(page.locator("#dead-letters tbody tr")).to_have_count(0)
        # Refusals are counted and their reasons shown (an answer the API may give).
        refusal = {
            "retried": 1,
            "refused": ["the leader's queue is full (10 jobs)"] * 2,
            "remaining": 2,
        }
        page.route(
            "**/api/dead-letters/retry",
            lambda route: route.fulfill(
                status=200, content_type="application/json", body=json.dumps(refusal)
            ),
        )
        page.click("#dead-retry-all")
        expect(page.locator("#notice")).to_have_text(
            "retried 1, 2 refused (the leader's queue is full (10 jobs)), 2 left"
        )
        page.screenshot(path=str(artifacts / "dashboard-by-name.png"))
        assert problems == [], problems
    finally:
        server.stop()
