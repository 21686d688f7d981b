"""A cluster with users (``[auth]``): its own groups serve with identities it gives them,
a user's client is served within its permissions, a client without credentials is not;
SIGHUP re-reads the users; without users the cluster listens on loopback only unless
``--insecure``; TLS listeners from the configuration.

End to end (``e2e``): real sockets, real time, and worker processes in some.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
from functools import partial

import pytest
import trio
import trustme

from actors import Client
from actors._tls import client_ssl_context
from actors.client._errors import ConnectionLost, RemoteError
from actors.cluster import run_cluster
from actors.cluster._config import config_from_args
from actors.worker._group import GROUP_TOKEN_ENV, WorkerGroup
from actors.worker._loader import ConfigError
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEB_TOKEN = "web-token-0123456789abcdef"
OPS_TOKEN = "ops-token-0123456789abcdef"

USERS = """
[auth]
[[auth.users]]
name = "web"
token_env = "ACTORS_TEST_WEB_TOKEN"
submit = ["test.>"]
"""


def write(tmp_path, text: str) -> str:
    path = tmp_path / "cluster.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


async def refused(url: str, **options) -> str:
    """The error of a client that the leader refuses (``auth_failed``)."""
    with pytest.raises(ConnectionLost) as info:
        async with Client.connect(url, connect_timeout=5, **options) as client:
            await client.submit("test.echo", {}, timeout=5)
    return str(info.value)


async def test_a_cluster_with_users_serves_them_and_no_one_else(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTORS_TEST_WEB_TOKEN", WEB_TOKEN)
    path = write(
        tmp_path,
        '[leader]\nlisten = ["tcp://127.0.0.1:0", "ws://127.0.0.1:0"]\n'
        + USERS
        + '[[groups]]\nname = "echo"\nworker = "tests.workers:Echo"\ninstances = 2\n'
        "in_process = true\n",
    )
    config = config_from_args(config_path=path)
    out = io.StringIO()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            tcp, ws = await nursery.start(partial(run_cluster, config, 1.0, out=out))
            # (the group is ready: it connected with the identity the cluster gave it)
            assert "cluster ready: 1 group, 2 workers (Ctrl-C to stop)" in out.getvalue()
            for url in (tcp, ws):
                async with Client.connect(url, token=WEB_TOKEN) as client:
                    result = await client.submit("test.echo", {"n": 1}, timeout=10)
                    assert result["payload"] == {"n": 1}
                    with pytest.raises(RemoteError) as denied:
                        await client.submit("other.echo", {}, timeout=10)
                    assert denied.value.code == "not_permitted"
                    assert "web' may not submit to other.echo" in denied.value.message
            assert "auth" in await refused(tcp)  # no token
            assert WEB_TOKEN[::-1] not in await refused(tcp, token=WEB_TOKEN[::-1])
            # The groups' identity serves; it does not submit.
            nursery.cancel_scope.cancel()
    assert WEB_TOKEN not in out.getvalue()


async def test_sighup_reloads_the_users_and_keeps_the_groups(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTORS_TEST_WEB_TOKEN", WEB_TOKEN)
    group = '[[groups]]\nname = "echo"\nworker = "tests.workers:Echo"\nin_process = true\n'
    path = write(tmp_path, '[leader]\nlisten = ["tcp://127.0.0.1:0"]\n' + USERS + group)
    config = config_from_args(config_path=path)
    out = io.StringIO()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            [url] = await nursery.start(partial(run_cluster, config, 1.0, out=out))
            async with Client.connect(url, token=WEB_TOKEN) as client:
                await client.submit("test.echo", {}, timeout=10)
            # web's token rotated, ops added.
            monkeypatch.setenv("ACTORS_TEST_WEB_TOKEN", WEB_TOKEN + "-new")
            write(
                tmp_path,
                '[leader]\nlisten = ["tcp://127.0.0.1:0"]\n'
                + USERS
                + f'[[auth.users]]\nname = "ops"\ntoken = "{OPS_TOKEN}"\nsubmit = [">"]\n'
                + group,
            )
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_until(lambda: "auth reloaded" in out.getvalue(), timeout=5)
            assert "auth reloaded: 2 users (added: ops; changed: web)" in out.getvalue()
            for token in (WEB_TOKEN + "-new", OPS_TOKEN):
                async with Client.connect(url, token=token) as client:
                    await client.submit("test.echo", {}, timeout=10)  # (the group serves)
            assert "auth" in await refused(url, token=WEB_TOKEN)
            # A bad file keeps the users.
            write(tmp_path, USERS.replace('"test.>"', '"a..b"'))
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_until(lambda: "auth not reloaded" in out.getvalue(), timeout=5)
            assert (
                f"SIGHUP: auth not reloaded, the current users stay: {path}: [[auth.users]] #1 "
                "'web' key 'submit': invalid pattern 'a..b'" in out.getvalue()
            )
            async with Client.connect(url, token=OPS_TOKEN) as client:
                await client.submit("test.echo", {}, timeout=10)
            nursery.cancel_scope.cancel()
    assert WEB_TOKEN not in out.getvalue() and OPS_TOKEN not in out.getvalue()


@pytest.fixture
def certs(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {"cert": tmp_path / "leader.pem", "key": tmp_path / "leader.key"}
    files["ca"] = tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    ca.cert_pem.write_to_path(str(files["ca"]))
    return {name: str(path) for name, path in files.items()}


async def test_groups_connect_to_a_tls_listener_with_the_ca(tmp_path, monkeypatch, certs):
    monkeypatch.setenv("ACTORS_TEST_WEB_TOKEN", WEB_TOKEN)
    path = write(
        tmp_path,
        f"""
        [leader]
        listen = ["tls://127.0.0.1:0"]
        tls_cert = "{certs["cert"]}"
        tls_key = "{certs["key"]}"
        tls_ca = "{certs["ca"]}"
        """
        + USERS
        + '[[groups]]\nname = "echo"\nworker = "tests.workers:Echo"\nin_process = true\n',
    )
    out = io.StringIO()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            [url] = await nursery.start(
                partial(run_cluster, config_from_args(config_path=path), 1.0, out=out)
            )
            assert url.startswith("tls://127.0.0.1:")
            assert "cluster ready: 1 group, 1 worker (Ctrl-C to stop)" in out.getvalue()
            context = client_ssl_context(ca=certs["ca"])
            async with Client.connect(url, token=WEB_TOKEN, ssl_context=context) as client:
                assert (await client.submit("test.echo", {"n": 2}, timeout=10))["payload"] == {
                    "n": 2
                }
            nursery.cancel_scope.cancel()


async def test_groups_cannot_reach_a_listener_that_requires_client_certificates(tmp_path, certs):
    path = write(
        tmp_path,
        f"""
        [leader]
        listen = ["tls://127.0.0.1:0"]
        tls_cert = "{certs["cert"]}"
        tls_key = "{certs["key"]}"
        tls_client_ca = "{certs["ca"]}"
        tls_verify_clients = "required"
        [[groups]]
        name = "echo"
        worker = "tests.workers:Echo"
        """,
    )
    with pytest.raises(ConfigError) as info:
        await run_cluster(config_from_args(config_path=path), 1.0, out=io.StringIO())
    assert "the groups would connect to tls://127.0.0.1:0, which requires client " in str(
        info.value
    )
    assert "add a tcp://127.0.0.1 listener: the groups use it" in str(info.value)


def test_process_instances_get_the_token_in_their_environment_only():
    group = WorkerGroup(
        "echo", "tests.workers:Echo", 1, "tls://127.0.0.1:1", token=WEB_TOKEN, tls_ca="ca.pem"
    )
    argv = group.command(0)
    assert WEB_TOKEN not in " ".join(argv)
    assert argv[argv.index("--token-env") + 1] == GROUP_TOKEN_ENV
    assert argv[argv.index("--tls-ca") + 1] == "ca.pem"
    assert group._environment()[GROUP_TOKEN_ENV] == WEB_TOKEN
    plain = WorkerGroup("echo", "tests.workers:Echo", 1, "tcp://127.0.0.1:1", tls_ca="ca.pem")
    assert "--token-env" not in plain.command(0) and "--tls-ca" not in plain.command(0)
    assert GROUP_TOKEN_ENV not in plain._environment()


# --------------------------------------------------------------------------- the CLI


async def start(*args: str, env: dict[str, str] | None = None) -> tuple[trio.Process, list[str]]:
    """Start ``python -m actors.cluster``; return it and its output up to ``cluster ready``."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "actors.cluster", *args],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    assert process.stdout is not None
    lines: list[str] = []
    buffer = b""
    try:
        while not any(line.startswith("cluster ready") for line in lines):
            chunk = await process.stdout.receive_some(65536)
            assert chunk, f"output ended: {lines}"
            buffer += chunk
            *done, buffer = buffer.split(b"\n")
            lines += [line.decode() for line in done]
    except BaseException:
        await stop(process)
        raise
    return process, lines


async def stop(process: trio.Process) -> None:
    """SIGTERM, expecting a clean exit; SIGKILL if that takes over 10 seconds."""
    try:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                assert await process.wait() == 0
    finally:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()


async def test_process_groups_connect_with_the_identity_the_cluster_gives_them(tmp_path):
    path = write(
        tmp_path,
        '[leader]\nlisten = ["tcp://127.0.0.1:0"]\n'
        + USERS
        + '[[groups]]\nname = "echo"\nworker = "tests.workers:Echo"\ninstances = 2\n',
    )
    env = {**os.environ, "ACTORS_TEST_WEB_TOKEN": WEB_TOKEN}
    with trio.fail_after(30):
        process, lines = await start("--config", path, "--start-timeout", "15", env=env)
        try:
            assert "cluster ready: 1 group, 2 workers (Ctrl-C to stop)" in lines
            url = next(line.split()[-1] for line in lines if line.startswith("leader listening"))
            async with Client.connect(url, token=WEB_TOKEN) as client:
                results = [await client.submit("test.echo", {}, timeout=10) for _ in range(4)]
            assert all(result["pid"] != os.getpid() for result in results)
        finally:
            await stop(process)


async def run_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(15):
        return await trio.run_process(
            [sys.executable, "-m", "actors.cluster", *args],
            check=False,
            capture_stdout=True,
            capture_stderr=True,
            cwd=ROOT,
        )


async def test_listening_beyond_loopback_needs_users_or_insecure():
    result = await run_cli("--listen", "tcp://0.0.0.0:0", "--memory")
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert "python -m actors.cluster: error: refusing to listen on tcp://0.0.0.0:0 without " in err
    assert "--insecure" in err and "Traceback" not in err
    with trio.fail_after(20):
        process, lines = await start("--listen", "tcp://0.0.0.0:0", "--memory", "--insecure")
        try:
            assert any(line.startswith("leader listening on tcp://0.0.0.0:") for line in lines)
        finally:
            await stop(process)


async def test_the_cli_refuses_tls_without_a_certificate_and_bad_files(tmp_path):
    result = await run_cli("--listen", "tls://127.0.0.1:0")
    assert result.returncode == 2
    assert (
        "python -m actors.cluster: error: --listen: 'tls://127.0.0.1:0' needs a certificate"
        in result.stderr.decode()
    )
    missing = tmp_path / "missing.pem"
    result = await run_cli("--listen", "wss://127.0.0.1:0", "--tls-cert", str(missing))
    assert result.returncode == 2
    assert f"error: --tls-cert: {missing}: no such file" in result.stderr.decode()


async def test_the_cli_serves_tls_with_a_certificate(certs):
    with trio.fail_after(20):
        process, lines = await start(
            "--listen", "tls://127.0.0.1:0", "--listen", "tcp://127.0.0.1:0",
            "--tls-cert", certs["cert"], "--tls-key", certs["key"], "--memory",
            "--worker", "tests.workers:Echo",
        )  # fmt: skip
        try:
            url = next(line.split()[-1] for line in lines if "listening on tls://" in line)
            context = client_ssl_context(ca=certs["ca"])
            async with Client.connect(url, ssl_context=context) as client:
                assert (await client.submit("test.echo", {}, timeout=10))["payload"] == {}
        finally:
            await stop(process)
