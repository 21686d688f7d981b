"""Tokens and TLS files on the command lines: ``python -m actors COMMAND`` (the shell) and
``python -m actors.worker``.

``--token-env NAME`` (default ``$ACTORS_TOKEN``) and ``--token-file PATH`` give the token,
never an option's value; ``--tls-ca``, ``--tls-cert``, ``--tls-key`` the PEM files. A
variable not set, a file that cannot be read, a wrong TLS file: exit 2 naming it. The
leader refusing the token: one line, status 1 (the shell) or 78 (a worker that could not
start). Real subprocesses against a leader in the test (``e2e``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trustme

from actors import AuthConfig, Client, Leader, User, Worker
from actors.worker import WorkerRunner
from actors.worker._worker import START_FAILED_EXIT_STATUS

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "shell-token-0123456789abcdef"
WRONG = "wrong-token-SECRET-0123456789"


class Square(Worker):
    subjects = ["math.square"]

    async def handle(self, job):
        return job.payload["n"] ** 2


@pytest.fixture
async def url(nursery: trio.Nursery) -> str:
    """A leader that wants TOKEN, and a worker serving math.square."""
    leader = Leader(listen=["tcp://127.0.0.1:0"], memory=True, token=TOKEN)
    [url] = await nursery.start(leader.run)
    await nursery.start(WorkerRunner(Square(), url, token=TOKEN).run)
    return url


def environment(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ACTORS_TOKEN", "ACTORS_URL")}
    env.update(variables)
    return env


async def run(
    *args: str, module: str = "actors", env: dict[str, str] | None = None, limit: float = 20
) -> tuple[int, str, str]:
    with trio.fail_after(limit):
        result = await trio.run_process(
            [sys.executable, "-m", module, *args], check=False, capture_stdout=True,
            capture_stderr=True, stdin=subprocess.DEVNULL, cwd=ROOT,
            env=env if env is not None else environment(),
        )  # fmt: skip
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def error_line(stderr: str, prog: str = "python -m actors") -> str:
    """The one error line (after argparse's usage lines, if any) of ``prog`` (or of one of
    its commands: ``python -m actors submit: error: ...``)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith(prog) and ": error: " in line]
    assert len(lines) == 1, stderr
    return lines[0]


# --------------------------------------------------------------------------- the shell


async def test_submit_with_the_token_from_the_default_variable(url: str) -> None:
    status, out, err = await run(
        "submit", "math.square", '{"n": 7}', "--url", url, env=environment(ACTORS_TOKEN=TOKEN)
    )
    assert (status, out) == (0, "49\n"), err


async def test_submit_with_token_env_and_with_token_file(url: str, tmp_path: Path) -> None:
    env = environment(MY_TOKEN=TOKEN, ACTORS_TOKEN=WRONG)  # (the option wins)
    status, out, err = await run(
        "submit", "math.square", '{"n": 3}', "--url", url, "--token-env", "MY_TOKEN", env=env
    )
    assert (status, out) == (0, "9\n"), err
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}  \nignored second line\n")
    status, out, err = await run(
        "submit", "math.square", '{"n": 4}', "--url", url, "--token-file", str(path)
    )
    assert (status, out) == (0, "16\n"), err


async def test_a_wrong_token_is_one_line_and_status_1(url: str) -> None:
    status, out, err = await run(
        "status", "--url", url, env=environment(ACTORS_TOKEN=WRONG), limit=10
    )
    assert status == 1 and out == ""
    line = error_line(err)
    assert f"could not connect to {url}: the leader refused the credentials (auth_failed)" in line
    assert err == line + "\n" and "SECRET" not in err


async def test_no_token_for_a_leader_that_wants_one(url: str) -> None:
    status, _, err = await run("result", "some-job", "--url", url, limit=10)
    assert status == 1 and "auth_failed" in error_line(err)


async def test_a_refused_action_prints_the_leaders_words(nursery: trio.Nursery) -> None:
    web = User(name="web", tokens=(TOKEN,), submit=["img.>"], subscribe=["events.>"])
    leader = Leader(listen=["tcp://127.0.0.1:0"], memory=True, auth=AuthConfig(users=(web,)))
    [url] = await nursery.start(leader.run)
    env = environment(ACTORS_TOKEN=TOKEN)
    status, out, err = await run("submit", "admin.reset", "{}", "--url", url, env=env)
    assert status == 1 and out == ""
    assert error_line(err).endswith("'web' may not submit to admin.reset")
    status, _, err = await run("enqueue", "admin.later", "{}", "--url", url, env=env)
    assert status == 1 and error_line(err).endswith("'web' may not submit to admin.later")


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (["--token-env", "NO_SUCH_VARIABLE"], {}, "--token-env: environment variable NO_SUCH_VARIABLE is not set (or empty)"),
        (["--token-env", "EMPTY"], {"EMPTY": "  "}, "environment variable EMPTY is not set (or empty)"),
        (["--token-file", "/no/such/token"], {}, "--token-file: /no/such/token: cannot be read: No such file or directory"),
        (["--token-env", "A", "--token-file", "B"], {}, "not allowed with argument"),
        (["--tls-ca", "/no/such/ca.pem", "--url", "tls://127.0.0.1:1"], {}, "--tls-ca: /no/such/ca.pem: no such file"),
        (["--tls-ca", "CA", "--url", "tcp://127.0.0.1:1"], {}, "--tls-ca: tcp://127.0.0.1:1 does not use TLS"),
        (["--tls-key", "KEY", "--url", "tls://127.0.0.1:1"], {}, "--tls-key: given without --tls-cert"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("command", [["submit", "math.square", "{}"], ["dlq", "list"]])
async def test_bad_credential_options_exit_2_naming_them(
    command: list[str], args: list[str], env: dict[str, str], fragment: str
) -> None:
    status, _, err = await run(*command, *args, env=environment(**env), limit=10)
    assert status == 2, err
    assert fragment in error_line(err)


async def test_a_wrong_tls_file_exits_2_naming_it(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    trustme.CA().issue_cert("x").private_key_pem.write_to_path(tmp_path / "other.key")
    status, _, err = await run(
        "status", "--url", "tls://localhost:1", "--tls-cert", str(tmp_path / "cert.pem"),
        "--tls-key", str(tmp_path / "other.key"), limit=10,
    )  # fmt: skip
    assert status == 2
    assert f"--tls-key: {tmp_path / 'other.key'}: does not match the certificate" in error_line(err)


async def test_the_help_names_the_options_and_never_a_token_value() -> None:
    status, out, _ = await run("submit", "--help", env=environment(ACTORS_TOKEN=WRONG))
    assert status == 0
    for option in ("--token-env NAME", "--token-file PATH", "--tls-ca FILE", "--tls-cert FILE"):
        assert option in out
    assert "SECRET" not in out and "--token " not in out


# --------------------------------------------------------------------------- the worker


async def test_a_worker_process_with_the_token_serves(url: str) -> None:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "actors.worker", "--url", url, "--name", "w-1",
         "--subjects", "solo.echo", "--token-env", "GROUP_TOKEN", "tests.workers:Echo"],
        stderr=subprocess.PIPE, cwd=ROOT, env=environment(GROUP_TOKEN=TOKEN),
    )  # fmt: skip
    try:
        with trio.fail_after(20):
            async with Client.connect(url, token=TOKEN) as client:
                result = await client.submit(
                    "solo.echo", {"x": 1}, timeout=15, wait_for_worker=True
                )
                assert result == {"payload": {"x": 1}, "pid": process.pid}
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    finally:
        process.kill()
        await process.wait()


async def test_a_worker_with_a_wrong_token_fails_to_start_in_one_line(url: str) -> None:
    status, _, err = await run(
        "--url", url, "--name", "w-2", "--subjects", "solo.echo", "tests.workers:Echo",
        module="actors.worker", env=environment(ACTORS_TOKEN=WRONG),
    )  # fmt: skip
    assert status == START_FAILED_EXIT_STATUS
    assert "Traceback" not in err and "SECRET" not in err
    [line] = [line for line in err.splitlines() if "failed to start" in line]
    assert "auth_failed" in line


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--token-env", "NO_SUCH_VARIABLE"], "--token-env: environment variable NO_SUCH_VARIABLE is not set"),
        (["--token-file", "/no/such/token"], "--token-file: /no/such/token: cannot be read"),
        (["--tls-ca", "/no/such/ca.pem", "--url", "wss://127.0.0.1:1"], "--tls-ca: /no/such/ca.pem: no such file"),
    ],
)  # fmt: skip
async def test_a_worker_with_bad_credential_options_exits_2(args: list[str], fragment: str) -> None:
    status, _, err = await run(*args, "tests.workers:Echo", module="actors.worker", limit=10)
    assert status == 2
    assert fragment in error_line(err, prog="python -m actors.worker")


async def test_a_worker_that_does_not_trust_the_leaders_certificate_fails_to_start(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    import ssl

    ca, other = trustme.CA(), trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    leader = Leader(listen=["tls://127.0.0.1:0"], ssl_context=server, memory=True, token=TOKEN)
    [url] = await nursery.start(leader.run)
    wrong_ca = tmp_path / "other.pem"
    other.cert_pem.write_to_path(str(wrong_ca))
    status, _, err = await run(
        "--url", url, "--tls-ca", str(wrong_ca), "--subjects", "solo.echo", "tests.workers:Echo",
        module="actors.worker", env=environment(ACTORS_TOKEN=TOKEN), limit=15,
    )  # fmt: skip
    assert status == START_FAILED_EXIT_STATUS
    assert "certificate verify failed" in err
