"""The leader's HTTP side (``actors/leader/_http.py``): health, readiness, the JavaScript
client's files, and the checks every request goes through, over real loopback HTTP with a
tiny h11 client; and ``--http`` / ``[leader] http`` in the cluster."""

from __future__ import annotations

import io
import json
from functools import partial
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio.testing

from actors.client import Client
from actors.cluster import run_cluster
from actors.cluster._config import config_from_args, config_from_mapping
from actors.cluster._run import build_parser, main
from actors.leader import Leader
from actors.leader import _leader as leader_module
from actors.leader._auth import AuthFailure
from actors.leader._http import (
    CLIENT_JS_DIR,
    MAX_HEADERS,
    HttpApp,
    Request,
    Response,
    host_valid,
    json_response,
    parse_http_address,
    serve_http,
)
from actors.worker._runner import run_worker
from protocol import Hello, Session, Welcome
from runtime._connection import Connection
from runtime._transports import running
from runtime._wire import StreamWire
from tests.helpers import RawPeer, wait_until
from tests.workers import Echo

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-http-token-0123456789"


class Reply:
    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = {n.decode().lower(): v.decode() for n, v in headers}
        self.body = body

    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json"
        return json.loads(self.body)


async def request(
    url: str,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    body: bytes | None = None,
    chunked: bool = False,
) -> Reply:
    """One request on a fresh connection (``Connection: close``), with h11."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {name.lower() for name, _ in pairs}
    if "host" not in names:
        pairs.insert(0, ("Host", f"{host}:{port}"))
    pairs.append(("Connection", "close"))
    if body is not None:
        if chunked:
            pairs.append(("Transfer-Encoding", "chunked"))
        elif "content-length" not in names:
            pairs.append(("Content-Length", str(len(body))))
    conn = h11.Connection(h11.CLIENT)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
        async with stream:
            out = conn.send(h11.Request(method=method, target=path, headers=pairs))
            if body is not None:
                out += conn.send(h11.Data(data=body)) if body else b""
                out += conn.send(h11.EndOfMessage())
            elif "content-length" not in names:
                out += conn.send(h11.EndOfMessage())
            await stream.send_all(out)
            response: Any = None
            chunks: list[bytes] = []
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
    assert response is not None
    return Reply(response.status_code, list(response.headers), b"".join(chunks))


async def start(nursery: trio.Nursery, **settings: Any) -> Leader:
    settings.setdefault("memory", True)
    leader = Leader(listen=["tcp://127.0.0.1:0"], http="127.0.0.1:0", **settings)
    await nursery.start(leader.run)
    assert leader.http_url is not None and leader.http_url.startswith("http://127.0.0.1:")
    return leader


# --------------------------------------------------------------------------- health


async def test_healthz_says_the_leader_is_up(nursery):
    leader = await start(nursery, name="east")
    reply = await request(leader.http_url, "/healthz")
    assert reply.status == 200
    assert reply.json() == {"status": "ok", "node": "east"}
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["cache-control"] == "no-store"
    head = await request(leader.http_url, "/healthz", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.headers["content-length"] == str(len(reply.body))


async def test_readyz_waits_for_a_worker_of_every_group(nursery):
    leader = await start(nursery)
    assert (await request(leader.http_url, "/readyz")).status == 200  # no group: ready
    leader.set_group_state("echo", "starting")
    reply = await request(leader.http_url, "/readyz")
    assert reply.status == 503
    body = reply.json()
    assert body["status"] == "not ready"
    assert body["groups_not_ready"] == {"echo": "starting"}
    assert body["groups_not_ready_total"] == 1 and body["groups"] == 1
    assert body["journal"] is None  # (memory)
    await nursery.start(partial(run_worker, Echo(), leader.urls[0], group="echo"))
    await wait_until(lambda: leader.stats()["groups"]["echo"]["workers"] == 1, timeout=5)
    reply = await request(leader.http_url, "/readyz")
    assert reply.status == 200, reply.body
    assert reply.json()["status"] == "ready"


async def test_readyz_does_not_wait_for_a_group_only_seen_once_its_worker_left(nursery):
    # (an ad-hoc worker, no cluster declared its group: info, never "not ready")
    leader = await start(nursery)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as inner:
            await inner.start(partial(run_worker, Echo(), leader.urls[0], group="gone"))
            await wait_until(lambda: leader.stats()["groups"]["gone"]["workers"] == 1, timeout=5)
            assert (await request(leader.http_url, "/readyz")).status == 200
            scope.cancel()
    await wait_until(lambda: leader.stats()["groups"]["gone"]["workers"] == 0, timeout=5)
    reply = await request(leader.http_url, "/readyz")
    assert reply.status == 200, reply.body
    body = reply.json()
    assert body["groups_not_ready"] == {} and body["groups"] == 0
    assert body["groups_undeclared"] == {"gone": "no worker connected"}
    assert body["groups_undeclared_total"] == 1


async def test_readyz_waits_for_the_instances_its_cluster_wants(nursery):
    leader = await start(nursery)
    leader.set_group_instances("echo", 2)
    leader.set_group_instances("idle", 0)  # (run with no instance: waits for none)
    reply = await request(leader.http_url, "/readyz")
    assert reply.status == 503
    assert reply.json()["groups_not_ready"] == {"echo": "0 of 2 instances online"}
    assert reply.json()["groups"] == 2
    async with trio.open_nursery() as workers:
        await workers.start(partial(run_worker, Echo(), leader.urls[0], name="a", group="echo"))
        await wait_until(lambda: leader.stats()["groups"]["echo"]["workers"] == 1, timeout=5)
        reply = await request(leader.http_url, "/readyz")
        assert reply.status == 503
        assert reply.json()["groups_not_ready"] == {"echo": "1 of 2 instances online"}
        await workers.start(partial(run_worker, Echo(), leader.urls[0], name="b", group="echo"))
        await wait_until(lambda: leader.stats()["groups"]["echo"]["workers"] == 2, timeout=5)
        assert (await request(leader.http_url, "/readyz")).status == 200
        assert leader.stats()["groups"]["echo"]["instances"] == 2  # (shown with the group)
        # Scaled down: one is enough. A group that failed is never ready.
        leader.set_group_instances("echo", 1)
        assert (await request(leader.http_url, "/readyz")).status == 200
        leader.set_group_state("echo", "failed: it crashed 5 times at start")
        reply = await request(leader.http_url, "/readyz")
        assert reply.status == 503
        assert reply.json()["groups_not_ready"] == {"echo": "failed: it crashed 5 times at start"}
        leader.set_group_state("echo", None)
        leader.set_group_instances("echo", None)  # (forgotten: one worker online will do)
        assert (await request(leader.http_url, "/readyz")).status == 200
        workers.cancel_scope.cancel()
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(ValueError, match="instances"):
            leader.set_group_instances("echo", bad)  # type: ignore[arg-type]


async def test_a_stale_worker_is_not_online_for_readyz(autojump_clock):
    # (a worker that said Hello, then nothing: stale past 1.5 heartbeats, dead past 3)
    leader = Leader(listen=[], memory=True, heartbeat=1.0)
    leader.set_group_instances("g", 1)
    local, remote = trio.testing.memory_stream_pair()
    conn = Connection(StreamWire(local), Session(side="server", heartbeat=1.0), "memory://w", "tcp")

    async def serve() -> None:
        async with running(conn):
            await leader._handle_connection(conn)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        peer = RawPeer(remote)
        await peer.send(
            Hello(mid=0, role="worker", name="w", group="g", patterns=("x",), versions=(1, 2))
        )
        assert type(await peer.receive()) is Welcome
        start = trio.current_time()
        assert leader.readiness(start)[0] is True
        ready, body = leader.readiness(start + 1.6)
        assert ready is False
        assert body["groups_not_ready"] == {"g": "0 of 1 instances online (1 stale)"}
        leader.set_group_instances("g", None)  # (no longer declared: not waited for)
        ready, body = leader.readiness(start + 1.6)
        assert ready is True and body["groups_not_ready"] == {}
        assert body["groups_undeclared"] == {"g": "no worker online (1 stale)"}
        nursery.cancel_scope.cancel()


async def test_readyz_builds_no_statistics_and_is_reused_for_half_a_second(nursery, monkeypatch):
    leader = await start(nursery)
    leader.set_group_state("g", "starting")

    def no_stats() -> None:
        raise AssertionError("/readyz built the statistics")

    monkeypatch.setattr(leader, "stats", no_stats)
    monkeypatch.setattr(leader, "stats_snapshot", no_stats)
    counted = 0
    count = leader._groups_not_ready

    def counting(now: float) -> Any:
        nonlocal counted
        counted += 1
        return count(now)

    monkeypatch.setattr(leader, "_groups_not_ready", counting)
    replies = []

    async def ask() -> None:
        replies.append(await request(leader.http_url, "/readyz"))

    with trio.move_on_after(0.4):  # (the first answer's half second)
        async with trio.open_nursery() as flood:
            for _ in range(50):
                flood.start_soon(ask)
    assert replies and all(r.status == 503 for r in replies)
    assert counted == 1, counted
    now = trio.current_time() + 10.0
    first = leader.readiness(now)
    assert counted == 2
    assert leader.readiness(now + 0.49) == first and counted == 2
    leader.readiness(now + 0.5)
    assert counted == 3
    # What the cluster says counts at once (its answer is not reused).
    leader.set_group_state("g", None)
    assert leader.readiness(now + 0.6)[0] is True and counted == 4


async def test_the_statistics_are_built_once_an_interval_for_every_reader(nursery, monkeypatch):
    # (an interval of a minute, so that every reader below asks within one)
    monkeypatch.setattr(leader_module, "STATS_INTERVAL", 60.0)
    leader = await start(nursery)
    assert leader.stats_builds == 0
    for i in range(3):  # the protocol's stats Query, from three connections
        async with Client.connect(leader.urls[0], name=f"c{i}") as client:
            assert (await client.stats())["node"] == leader.name
    for path in ("/api/stats", "/api/stats", "/metrics", "/metrics", "/api/groups"):
        assert (await request(leader.http_url, path)).status == 200, path
    url = leader.http_url.replace("http://", "ws://") + "/ws"
    async with Client.connect(url) as watcher:  # the dashboard's feed
        async with watcher.subscribe("$sys.dashboard") as sub:
            await sub.__anext__()
    assert leader.stats_builds == 1
    shared = leader.stats_snapshot()
    assert leader.stats_snapshot() is shared  # (one dict for all: read, never changed)
    assert leader.stats_snapshot(trio.current_time() + 60.0) is not shared
    assert leader.stats_builds == 2


async def test_readyz_says_a_journal_that_refuses_writes_is_not_ready(nursery, tmp_path):
    leader = await start(nursery, memory=False, data_dir=tmp_path)
    reply = await request(leader.http_url, "/readyz")
    assert reply.status == 200
    assert reply.json()["journal"] == {"writable": True, "problem": None}
    assert leader.journal is not None
    leader.journal.failed("disk I/O error")
    reply = await request(leader.http_url, "/readyz")
    assert reply.status == 503
    assert reply.json()["journal"] == {
        "writable": False,
        "problem": "the leader cannot write its journal: disk I/O error",
    }
    leader.journal.failed(None)
    assert (await request(leader.http_url, "/readyz")).status == 200


# --------------------------------------------------------------------------- files


async def test_the_javascript_client_is_served_as_it_is_on_disk(nursery):
    leader = await start(nursery)
    for path, file in (
        ("/actors.js", CLIENT_JS_DIR / "actors.js"),
        ("/src/cbor.js", CLIENT_JS_DIR / "src" / "cbor.js"),
    ):
        reply = await request(leader.http_url, path)
        assert reply.status == 200
        assert reply.body == file.read_bytes()
        assert reply.headers["content-type"] == "text/javascript; charset=utf-8"
        assert reply.headers["cache-control"] == "no-cache"
        assert reply.headers["x-content-type-options"] == "nosniff"
        etag = reply.headers["etag"]
        assert etag.startswith('"') and etag.endswith('"')
        again = await request(leader.http_url, path, headers={"If-None-Match": etag})
        assert again.status == 304 and again.body == b"" and again.headers["etag"] == etag
        weak = await request(leader.http_url, path, headers={"If-None-Match": f'"x", W/{etag}'})
        assert weak.status == 304
        other = await request(leader.http_url, path, headers={"If-None-Match": '"other"'})
        assert other.status == 200 and other.body == file.read_bytes()
    # Every file of src/ is there; nothing else is.
    app = HttpApp(leader)
    assert set(app.files) == {"/actors.js"} | {
        f"/src/{p.name}" for p in (CLIENT_JS_DIR / "src").glob("*.js")
    }


@pytest.mark.parametrize(
    "path",
    [
        "/src/../../pyproject.toml",
        "/src/%2e%2e/%2e%2e/pyproject.toml",
        "/src/..%2f..%2fpyproject.toml",
        "/%2e%2e/pyproject.toml",
        "/src/x.py",
        "/src/cbor.js/",
        "/src//cbor.js",
        "/src/",
        "/clients/js/actors.js",
        "/package.json",
        "/src/CBOR.JS",
        "/actors.js%00.txt",
    ],
)
async def test_nothing_outside_the_allow_list_is_served(nursery, path):
    leader = await start(nursery)
    reply = await request(leader.http_url, path)
    assert reply.status == 404
    assert reply.json()["error"] == "not_found"
    assert b"trio-actors" not in reply.body  # (pyproject.toml's, package.json's name)


async def test_a_file_changed_on_disk_is_served_anew(nursery, tmp_path):
    leader = await start(nursery)
    (tmp_path / "src").mkdir()
    (tmp_path / "actors.js").write_text("export const a = 1;\n")
    (tmp_path / "src" / "link.js").symlink_to(ROOT / "pyproject.toml")
    (tmp_path / "src" / ".hidden.js").write_text("x")
    app = HttpApp(leader, client_dir=tmp_path)
    assert set(app.files) == {"/actors.js"}  # (no link, no hidden file)
    async with trio.open_nursery() as inner:
        url = await inner.start(serve_http, app, "127.0.0.1", 0)
        first = await request(url, "/actors.js")
        (tmp_path / "actors.js").write_text("export const a = 22;\n")
        second = await request(url, "/actors.js")
        assert second.body == b"export const a = 22;\n"
        assert second.headers["etag"] != first.headers["etag"]
        assert (await request(url, "/src/link.js")).status == 404
        inner.cancel_scope.cancel()


# --------------------------------------------------------------------------- checks


async def test_methods_other_than_get_and_head_are_refused_with_allow(nursery):
    leader = await start(nursery)
    for path in ("/healthz", "/readyz", "/actors.js"):
        for method in ("POST", "PUT", "DELETE", "OPTIONS"):
            reply = await request(leader.http_url, path, method=method, body=b"")
            assert reply.status == 405, (path, method)
            assert reply.headers["allow"] == "GET, HEAD"
            assert reply.headers["x-content-type-options"] == "nosniff"
    reply = await request(leader.http_url, "/nothing", method="POST", body=b"{}")
    assert reply.status == 404


async def test_pages_of_foreign_origins_are_refused(nursery):
    leader = await start(nursery, allowed_origins=["https://app.example"])
    url = leader.http_url
    reply = await request(url, "/healthz", headers={"Origin": "https://evil.example"})
    assert reply.status == 403
    assert reply.json()["error"] == "forbidden_origin"
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert (await request(url, "/readyz", headers={"Origin": "null"})).status == 403
    # The server's own origin (added by the leader once bound), its localhost alias, and
    # the configured ones are allowed.
    port = url.rpartition(":")[2]
    for origin in (url, f"http://localhost:{port}", "https://app.example"):
        assert (await request(url, "/healthz", headers={"Origin": origin})).status == 200
    assert leader.origin_allowed(url)  # (its pages may open WebSockets to the leader)
    assert not leader.origin_allowed(f"http://127.0.0.1:{int(port) + 1}")
    # The client's files load from pages of any origin; allowed ones may use them (CORS).
    js = await request(url, "/actors.js", headers={"Origin": "https://evil.example"})
    assert js.status == 200 and "access-control-allow-origin" not in js.headers
    js = await request(url, "/src/cbor.js", headers={"Origin": "https://app.example"})
    assert js.status == 200
    assert js.headers["access-control-allow-origin"] == "https://app.example"
    assert js.headers["vary"] == "Origin"
    # ...with a plain GET only.
    post = await request(
        url, "/actors.js", method="POST", body=b"", headers={"Origin": "https://evil.example"}
    )
    assert post.status == 403


async def test_a_loopback_server_answers_loopback_host_names_only(nursery):
    leader = await start(nursery, allowed_origins=["http://dash.example:8080"])
    url = leader.http_url
    port = url.rpartition(":")[2]
    for host in (
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        "localhost",
        "[::1]:80",
        "dash.example:8080",
    ):
        assert (await request(url, "/healthz", headers={"Host": host})).status == 200, host
    for host in (f"evil.example:{port}", "rebound.example", "dash.example:9999"):
        reply = await request(url, "/healthz", headers={"Host": host})
        assert reply.status == 403, host
        assert reply.json()["error"] == "forbidden_host"
    # DNS rebinding, whose page is its own origin by its name: still refused for its Host
    # (what sends it is the page's own origin, so it must not be taken for this server's).
    rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
    for method, path in (("GET", "/api/stats"), ("POST", "/api/dead-letters/retry"), ("GET", "/")):
        reply = await request(url, path, method=method, headers=rebound, body=b"")
        assert reply.status == 403 and reply.json()["error"] == "forbidden_host", path
    # Its own origin, by a loopback name: served.
    own = {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"}
    assert (await request(url, "/api/stats", headers=own)).status == 200


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:{port}@evil.example",  # (user info: the name is evil.example's)
        "user@127.0.0.1:{port}",
        "127.0.0.1:{port}/x",
        "127.0.0.1 :{port}",
        "127.0.0.1:{port}:1",
        "127.0.0.1:123456",
        "127.0.0.1:{port}, evil.example",  # (two Host headers, joined)
        "[::1",
        "[::1]x",
        "[::g]:80",
        "[127.0.0.1]",
        "",
        "127.0.0.1;x",
        "%31%32%37.0.0.1",
        "a" * 254,
    ],
)
async def test_a_host_that_is_not_host_and_port_is_refused(nursery, host):
    leader = await start(nursery)
    url = leader.http_url
    port = url.rpartition(":")[2]
    reply = await request(url, "/api/stats", headers={"Host": host.format(port=port)})
    assert reply.status == 400, (host, reply.status)
    assert reply.json()["error"] == "bad_host"


def test_host_syntax_is_strict():
    # (what an HTTP client library will not even send, checked on the function)
    for good in ("a", "a.b-c_d", "10.0.0.1:8080", "[::1]", "[::1]:1", "x:", "[::ffff:1.2.3.4]"):
        assert host_valid(good), good
    for bad in ("localhost\x00", "é.example", "a\tb", "[fe80::1%1]", "a:b", "a:1:2", "[::1]]"):
        assert not host_valid(bad), bad


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.1:{port}", "localhost:", "[::1]:{port}", "LOCALHOST:1"]
)
async def test_a_host_of_host_and_port_is_read(nursery, host):
    leader = await start(nursery)
    url = leader.http_url
    port = url.rpartition(":")[2]
    reply = await request(url, "/healthz", headers={"Host": host.format(port=port)})
    assert reply.status == 200, (host, reply.body)


async def test_request_sizes_are_bounded(nursery):
    leader = await start(nursery)
    url = leader.http_url
    many = [(f"X-H{i}", "v") for i in range(MAX_HEADERS + 1)]
    assert (await request(url, "/healthz", headers=many)).status == 431
    assert (await request(url, "/healthz", headers=many[: MAX_HEADERS - 2])).status == 200
    reply = await request(url, "/healthz", headers={"Content-Length": str(2**30)})
    assert reply.status == 413
    # More bytes of headers than MAX_HEADER_BYTES (in one piece: the app counts them).
    huge = await request(url, "/healthz", headers={"X-Big": "x" * 20_000})
    assert huge.status == 431


# --------------------------------------------------------------------------- authentication


def scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http", "path": "/x", "headers": list(headers), "client": ("127.0.0.1", 1)}


async def test_authenticate_reads_a_bearer_token():
    leader = Leader(memory=True, token=TOKEN)
    app = HttpApp(leader, client_dir=None)
    for headers, message in (
        ((), "needs a token"),
        (((b"authorization", b"Bearer wrong-token"),), "wrong token"),
        (((b"authorization", f"Basic {TOKEN}".encode()),), "expected Authorization: Bearer"),
        (((b"authorization", b"Bearer "),), "expected Authorization: Bearer"),
        (
            ((b"authorization", f"Bearer {TOKEN}".encode()),) * 2,
            "more than one Authorization header",
        ),
    ):
        with pytest.raises(AuthFailure, match=message) as info:
            app.authenticate(scope(*headers))
        assert TOKEN not in str(info.value)
    principal = app.authenticate(scope((b"authorization", f"Bearer {TOKEN}".encode())))
    assert principal is not None and principal.name == "token"
    principal = app.authenticate(scope((b"authorization", f"bearer  {TOKEN} ".encode())))
    assert principal is not None and principal.name == "token"
    # A leader without users asks for nothing, as on its other listeners.
    assert HttpApp(Leader(memory=True), client_dir=None).authenticate(scope()) is None


async def test_state_changing_requests_must_authenticate(nursery):
    leader = Leader(memory=True, token=TOKEN)
    app = HttpApp(leader, client_dir=None, max_body=100)
    seen: list[Any] = []

    async def change(request: Request) -> Response:
        seen.append((request.principal.name if request.principal else None, await request.body()))
        return json_response(200, {"changed": True})

    app.add_route("/change", {"POST": change, "GET": change})
    url = await nursery.start(serve_http, app, "127.0.0.1", 0)
    reply = await request(url, "/change", method="POST", body=b"x")
    assert reply.status == 401
    assert reply.headers["www-authenticate"] == 'Bearer realm="trio-actors"'
    assert "needs a token" in reply.json()["message"]
    bad = {"Authorization": "Bearer nope"}
    assert (await request(url, "/change", method="POST", body=b"x", headers=bad)).status == 401
    assert seen == []
    good = {"Authorization": f"Bearer {TOKEN}"}
    reply = await request(url, "/change", method="POST", body=b"hello", headers=good)
    assert reply.status == 200 and reply.json() == {"changed": True}
    assert seen == [("token", b"hello")]
    # GET changes nothing: not asked. A body over the limit: 413, declared or not.
    assert (await request(url, "/change")).status == 200
    big = b"x" * 101
    assert (await request(url, "/change", method="POST", body=big, headers=good)).status == 413
    reply = await request(url, "/change", method="POST", body=big, headers=good, chunked=True)
    assert reply.status == 413
    assert reply.headers["x-content-type-options"] == "nosniff"


# --------------------------------------------------------------------------- configuration


def test_http_addresses():
    assert parse_http_address("127.0.0.1:7780") == ("127.0.0.1", 7780)
    assert parse_http_address(":0") == ("127.0.0.1", 0)
    assert parse_http_address("[::1]:7780") == ("::1", 7780)
    assert parse_http_address("http://localhost:80/") == ("localhost", 80)
    assert parse_http_address("0.0.0.0:1") == ("0.0.0.0", 1)
    for bad in ("nonsense", "127.0.0.1", "127.0.0.1:99999", "::1:80", "[127.0.0.1]:1",
                "h/x:1", "a b:1", "", 7780, "127.0.0.1:-1", "127.0.0.1:٣"):  # fmt: skip
        with pytest.raises(ValueError, match="expected HOST:PORT"):
            parse_http_address(bad)


def test_http_beyond_loopback_needs_users_or_insecure():
    with pytest.raises(ValueError, match=r"refusing to serve HTTP on 0\.0\.0\.0:7780 without auth"):
        Leader(memory=True, http="0.0.0.0:7780")
    with pytest.raises(ValueError, match="refusing to serve HTTP"):
        Leader(memory=True, http="[::]:0")
    Leader(memory=True, http="0.0.0.0:7780", insecure=True)
    Leader(memory=True, http="0.0.0.0:7780", token=TOKEN)
    Leader(memory=True, http="localhost:7780")
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        Leader(memory=True, http="7780")
    leader = Leader(memory=True, http="0.0.0.0:7780", token=TOKEN)
    with pytest.raises(ValueError, match="keeps its authentication"):
        leader.set_auth(None)


def test_the_cluster_file_and_options_take_an_http_address():
    config = config_from_mapping({"leader": {"http": "127.0.0.1:7780"}})
    assert config.leader.http == "127.0.0.1:7780"
    assert config.leader.leader_config().http == "127.0.0.1:7780"
    assert config_from_mapping({}).leader.leader_config().http is None
    from actors import ConfigError

    with pytest.raises(ConfigError, match=r"\[leader\] key 'http': http address 'x'"):
        config_from_mapping({"leader": {"http": "x"}})
    assert config_from_args(http=":0").leader.http == ":0"
    with pytest.raises(ConfigError, match="--http: http address"):
        config_from_args(http="nope")
    assert "--http" in build_parser().format_help()
    # --http alone: the default address, on loopback; no --http: no HTTP at all
    parser = build_parser()
    assert parser.parse_args(["--http", "--worker", "m:C"]).http == "127.0.0.1:7780"
    assert parser.parse_args(["--http", ":0"]).http == ":0"
    assert parser.parse_args([]).http is None


def test_the_cluster_refuses_a_bad_http_address(capsys):
    assert main(["--http", "nope"]) == 2
    assert "error: --http: http address 'nope': expected HOST:PORT" in capsys.readouterr().err
    assert main(["--http", "0.0.0.0:0", "--memory"]) == 2
    assert "refusing to serve HTTP on 0.0.0.0:0" in capsys.readouterr().err


async def test_the_cluster_serves_http_and_prints_its_url():
    config = config_from_args(
        listen=["tcp://127.0.0.1:0"],
        workers=["echo=tests.workers:Echo=1"],
        in_process=True,
        memory=True,
        http=":0",
    )
    out = io.StringIO()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(run_cluster, config, 1.0, out=out))
            lines = out.getvalue().splitlines()
            [line] = [line for line in lines if line.startswith("http listening on ")]
            url = line.removeprefix("http listening on ")
            assert url.startswith("http://127.0.0.1:")
            # (after the leader's listen line: its tcp listener only; the dashboard's
            # WebSocket is on the HTTP port, no listener is added for it)
            before = lines[: lines.index(line)]
            assert [b.split("://")[0] for b in before] == ["leader listening on tcp"]
            assert (await request(url, "/healthz")).status == 200
            reply = await request(url, "/readyz")
            assert reply.status == 200, reply.body
            assert reply.json()["groups"] == 1
            assert (await request(url, "/actors.js")).status == 200
            nursery.cancel_scope.cancel()


async def test_the_cluster_is_not_ready_while_its_groups_start(monkeypatch):
    monkeypatch.setenv("TEST_SETUP_SECONDS", "1.0")
    config = config_from_args(
        listen=["tcp://127.0.0.1:0"],
        workers=["slow=tests.workers:SlowSetup=1"],
        in_process=True,
        memory=True,
        http="127.0.0.1:0",
    )
    out = io.StringIO()

    def http_url() -> str | None:
        for line in out.getvalue().splitlines():
            if line.startswith("http listening on "):
                return line.removeprefix("http listening on ")
        return None

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(run_cluster, config, 1.0, out=out))
            await wait_until(lambda: http_url() is not None, timeout=10)
            url = http_url()
            assert url is not None
            reply = await request(url, "/readyz")
            assert reply.status == 503
            # (its cluster wants one instance of it: none is online yet)
            assert reply.json()["groups_not_ready"] == {"slow": "starting: 0 of 1 instances online"}
            await wait_until(lambda: "cluster ready" in out.getvalue(), timeout=10)
            reply = await request(url, "/readyz")
            assert reply.status == 200, reply.body
            nursery.cancel_scope.cancel()
