"""The shared job store in a cluster's configuration: the ``[leader]`` ``store`` keys, the
``--store`` options of ``python -m actors.cluster``, what the cluster says at start, and
one cluster run on the nats-server of 127.0.0.1:4222 (``e2e``, ``nats``: skipped when it
does not answer)."""

from __future__ import annotations

import asyncio
import re
import secrets
import signal
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trustme

import actors.cluster._config
import actors.cluster._run
from actors import Client
from actors._checks import ConfigError
from actors.cluster._config import config_from_args, config_from_mapping, load_config, store_of
from actors.cluster._run import _journal_line, build_parser
from actors.leader import Leader, LeaderConfig
from actors.leader._jetstream import StoreConfig, StoreError, parse_store
from tests.nats_servers import LOCAL_NATS, drop_store, require_local_nats
from tests.test_cli import assert_clean_error, run, start_cluster

CREDS = "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QifQ.e30.x\n------END NATS USER JWT------\n"


@pytest.fixture
def write(tmp_path: Path):
    """Write a TOML text to ``cluster.toml`` and return its path."""

    def write(text: str) -> str:
        path = tmp_path / "cluster.toml"
        path.write_text(textwrap.dedent(text))
        return str(path)

    return write


def error_of(path: str) -> str:
    """The message of the ConfigError ``path`` raises, without the file's name."""
    with pytest.raises(ConfigError) as info:
        load_config(path, import_workers=False)
    message = info.value.message
    assert message.startswith(f"{path}: ")
    return message[len(path) + 2 :]


def leader_error(**keys: object) -> str:
    """The message of the ConfigError a ``[leader]`` table of ``keys`` raises."""
    with pytest.raises(ConfigError) as info:
        config_from_mapping({"leader": keys}, source="c.toml", import_workers=False)
    return info.value.message


def args_error(**options: object) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_args(import_workers=False, **options)  # type: ignore[arg-type]
    return info.value.message


# --------------------------------------------------------------------------- [leader] keys


def test_the_store_keys_make_the_leaders_store(write, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nats.creds").write_text(CREDS)
    path = write(
        """
        [leader]
        store = "nats://127.0.0.1:4222, h2:4222"
        store_replicas = 3
        store_prefix = "jobs_a"
        store_creds = "nats.creds"
        store_ack_wait = 10
        store_results_ttl = 600.5
        """
    )
    config = load_config(path, import_workers=False)
    expected = StoreConfig(
        servers=("nats://127.0.0.1:4222", "nats://h2:4222"),
        prefix="jobs_a",
        replicas=3,
        creds="nats.creds",  # (relative to the working directory, as every file of a config)
        ack_wait=10.0,
        results_ttl=600.5,
    )
    assert store_of(config.leader) == expected
    leader_config = config.leader.leader_config()
    assert leader_config.store == expected
    assert not leader_config.memory and leader_config.data_dir is None
    leader = Leader(leader_config)
    assert leader.journal is None and leader.shared is not None


def test_a_leader_without_the_store_keys_has_no_store(write):
    config = load_config(write('[leader]\nname = "plain"\n'), import_workers=False)
    assert store_of(config.leader) is None
    assert config.leader.leader_config().store is None


def test_store_files_expand_the_home_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "nats.creds").write_text(CREDS)
    config = config_from_mapping(
        {"leader": {"store": "nats://a:4222", "store_creds": "~/nats.creds"}},
        import_workers=False,
    )
    store = store_of(config.leader)
    assert store is not None and store.creds == str(tmp_path / "nats.creds")


@pytest.mark.parametrize(
    ("keys", "fragment"),
    [
        ({"store": "http://a:4222"}, "key 'store': 'http://a:4222' is not a NATS URL"),
        ({"store": "a:4222"}, "key 'store': the first server needs its scheme"),
        ({"store": " "}, "key 'store': is empty: give nats://host:4222"),
        ({"store": "nats://a:99999"}, "key 'store': 'nats://a:99999': Port out of range"),
        ({"store": ["nats://a:4222"]}, "key 'store': expected the NATS servers in a string"),
        ({"store_replicas": 2}, "key 'store_replicas': store replicas 2: 1, 3 or 5"),
        ({"store_replicas": "3"}, "key 'store_replicas': expected an integer >= 1"),
        ({"store_replicas": True}, "key 'store_replicas': expected an integer >= 1"),
        ({"store_prefix": "Jobs"}, "key 'store_prefix': store prefix 'Jobs': lowercase"),
        ({"store_prefix": 1}, "key 'store_prefix': expected a string"),
        ({"store_ack_wait": 0.5}, "key 'store_ack_wait': store ack_wait 0.5: from 1 to 3600"),
        ({"store_ack_wait": -1}, "key 'store_ack_wait': expected a number > 0"),
        ({"store_results_ttl": 60}, "key 'store_results_ttl': store results_ttl 60 s is shorter"),
        ({"store_creds": ""}, "key 'store_creds': expected a file path"),
        ({"store_creds": "/no/such.creds"}, "key 'store_creds': cannot read '/no/such.creds'"),
        ({"store_tls_ca": "/no/ca.pem"}, "key 'store_tls_ca': /no/ca.pem: no such file"),
        ({"store_tls_cert": "/no/c.pem"}, "key 'store_tls_cert': needs 'store_tls_key' too"),
        ({"store_tls_key": "/no/k.pem"}, "key 'store_tls_key': needs 'store_tls_cert' too"),
    ],
)
def test_a_bad_store_key_is_named(keys, fragment):
    message = leader_error(**{"store": "nats://127.0.0.1:4222", **keys})
    assert message.startswith("c.toml: [leader] key "), message
    assert fragment in message


@pytest.mark.parametrize(
    ("keys", "fragment"),
    [
        ({"memory": True}, "'store' and 'memory = true': choose one: the shared store keeps"),
        ({"data_dir": "/var/lib/a"}, "'store' and 'data_dir': choose one: the shared store keeps"),
    ],
)
def test_the_store_and_a_journal_setting_are_refused_together(keys, fragment):
    assert leader_error(store="nats://a:4222", **keys) == f"c.toml: [leader]: {fragment} the jobs"


def test_memory_false_beside_the_store_is_no_conflict():
    config = config_from_mapping(
        {"leader": {"store": "nats://a:4222", "memory": False}}, import_workers=False
    )
    assert store_of(config.leader) is not None


def test_store_settings_without_a_store_are_refused():
    assert leader_error(store_replicas=3) == (
        "c.toml: [leader] key 'store_replicas': needs 'store', the NATS servers to keep the "
        'jobs in (store = "nats://127.0.0.1:4222")'
    )


def test_a_misspelt_store_key_is_named():
    assert "unknown key 'store_replica' (did you mean 'store_replicas'?)" in leader_error(
        store="nats://a:4222", store_replica=3
    )


def test_the_store_tls_files_load_and_a_bad_one_is_named(tmp_path):
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client = ca.issue_cert("leader-a")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    files = {
        "store_tls_ca": str(tmp_path / "ca.pem"),
        "store_tls_cert": str(tmp_path / "client.pem"),
        "store_tls_key": str(tmp_path / "client.key"),
    }
    config = config_from_mapping(
        {"leader": {"store": "tls://127.0.0.1:4222", **files}}, import_workers=False
    )
    store = store_of(config.leader)
    assert store is not None
    assert (store.tls_ca, store.tls_cert, store.tls_key) == tuple(files.values())
    message = leader_error(
        store="tls://127.0.0.1:4222", **{**files, "store_tls_key": str(tmp_path / "garbage.pem")}
    )
    assert message.startswith(f"c.toml: [leader] key 'store_tls_key': {tmp_path / 'garbage.pem'}")


def test_the_documented_store_keys_parse(tmp_path, monkeypatch):
    """The ``store`` lines of the example in ``_config``'s docstring are a valid table."""
    doc = actors.cluster._config.__doc__ or ""
    lines = [line for line in doc.splitlines() if re.match(r"    store\w* = ", line)]
    assert {line.split()[0] for line in lines} >= {"store", "store_replicas", "store_creds"}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nats.creds").write_text(CREDS)
    data = tomllib.loads("[leader]\n" + "\n".join(line.strip() for line in lines))
    config = config_from_mapping(data, import_workers=False)
    assert store_of(config.leader) is not None


# --------------------------------------------------------------------------- command line


def test_store_options_are_parsed():
    args = build_parser().parse_args(
        ["--store", "nats://a:4222", "--store-replicas", "3", "--store-prefix", "p"]
    )
    assert (args.store, args.store_replicas, args.store_prefix) == ("nats://a:4222", 3, "p")


def test_the_store_option_makes_a_store():
    config = config_from_args(
        store="nats://127.0.0.1:4222,nats://127.0.0.1:4223",
        store_replicas=3,
        store_prefix="cli",
        import_workers=False,
    )
    assert store_of(config.leader) == StoreConfig(
        servers=("nats://127.0.0.1:4222", "nats://127.0.0.1:4223"), prefix="cli", replicas=3
    )
    assert config.leader.leader_config().store == store_of(config.leader)


def test_the_store_option_replaces_the_files_servers_and_keeps_its_settings(write):
    path = write(
        """
        [leader]
        store = "nats://file:4222"
        store_replicas = 3
        store_prefix = "from_file"
        """
    )
    store = store_of(
        config_from_args(config_path=path, store="nats://cli:4222", import_workers=False).leader
    )
    assert store == StoreConfig(servers=("nats://cli:4222",), prefix="from_file", replicas=3)
    store = store_of(
        config_from_args(
            config_path=path, store_replicas=5, store_prefix="other", import_workers=False
        ).leader
    )
    assert store == StoreConfig(servers=("nats://file:4222",), prefix="other", replicas=5)


def test_the_store_option_replaces_the_files_journal(write):
    path = write('[leader]\ndata_dir = "/var/lib/a"\nsync = "normal"\n')
    config = config_from_args(config_path=path, store="nats://a:4222", import_workers=False)
    assert store_of(config.leader) is not None
    settings = config.leader.leader_config()
    assert settings.data_dir is None and not settings.memory and settings.store is not None


@pytest.mark.parametrize("option", [{"memory": True}, {"data_dir": "/tmp/journal"}])
def test_a_journal_option_replaces_the_files_store(write, option):
    path = write('[leader]\nstore = "nats://a:4222"\nstore_replicas = 3\n')
    config = config_from_args(config_path=path, import_workers=False, **option)
    assert store_of(config.leader) is None
    assert config.leader.leader_config().store is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"store": "nats://a:4222", "memory": True},
            "--store and --memory: choose one: the shared store keeps the jobs",
        ),
        (
            {"store": "nats://a:4222", "data_dir": "/tmp/j"},
            "--store and --data-dir: choose one: the shared store keeps the jobs",
        ),
        (
            {"store_replicas": 3},
            "--store-replicas: needs a shared store: --store nats://host:4222 (or [leader] store)",
        ),
        (
            {"store_prefix": "p"},
            "--store-prefix: needs a shared store: --store nats://host:4222 (or [leader] store)",
        ),
        ({"store": "nats://a:4222", "store_replicas": 2}, "--store-replicas: store replicas 2"),
        ({"store": "nats://a:4222", "store_prefix": "9p"}, "--store-prefix: store prefix '9p'"),
        ({"store": "redis://a:6379"}, "--store 'redis://a:6379': 'redis://a:6379' is not a NATS"),
        ({"store": ""}, "--store is empty"),
    ],
)
def test_bad_store_options_are_named(options, message):
    assert args_error(**options).startswith(message)


def test_store_replicas_on_a_file_without_a_store_is_refused(write):
    path = write('[leader]\nname = "a"\n')
    assert args_error(config_path=path, store_replicas=3).startswith("--store-replicas: needs")


# --------------------------------------------------------------------------- start-up


def test_a_cluster_on_a_store_says_where_its_jobs_are():
    store = parse_store("nats://a:4222,nats://b:4222", replicas=3, prefix="shop")
    assert _journal_line(Leader(LeaderConfig(store=store))) == (
        "store: NATS JetStream nats://a:4222, nats://b:4222 (R3, stream SHOP_JOBS)"
    )


def test_a_cluster_on_a_store_runs_trio_as_asyncios_guest(monkeypatch, capsys):
    seen: list[bool] = []

    async def fake_run_cluster(config, *args, **kwargs):
        await trio.lowlevel.checkpoint()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            seen.append(False)
        else:
            seen.append(True)
        if store_of(config.leader) is not None:
            raise StoreError("the nats-server has no JetStream\n(start it with -js)")
        return 0

    monkeypatch.setattr(actors.cluster._run, "run_cluster", fake_run_cluster)
    main = actors.cluster._run.main
    assert main(["--listen", "tcp://127.0.0.1:0", "--store", "nats://127.0.0.1:4222"]) == 2
    assert capsys.readouterr().err == (
        "python -m actors.cluster: error: the nats-server has no JetStream (start it with -js)\n"
    )
    assert main(["--listen", "tcp://127.0.0.1:0", "--memory"]) == 0
    assert seen == [True, False]  # (the guest run has asyncio's loop; trio.run has none)


# --------------------------------------------------------------------------- end to end


async def _store_state(prefix: str) -> tuple[int, int, bool]:
    """The jobs stream's messages ever stored and still held, and whether the results
    bucket holds a value."""
    import nats

    nc = await nats.connect(LOCAL_NATS, connect_timeout=2, allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=5)
        info = await js.stream_info(f"{prefix.upper()}_JOBS")
        bucket = await js.key_value(f"{prefix}_results")
        status = await bucket.status()
        return info.state.last_seq, info.state.messages, status.values > 0
    finally:
        await nc.close()


@pytest.fixture
def store_prefix() -> Iterator[str]:
    """A prefix of its own on the local nats-server; its streams and bucket are deleted
    after the test."""
    require_local_nats()
    prefix = f"h4t_{secrets.token_hex(6)}"
    yield prefix
    drop_store(LOCAL_NATS, prefix)


@pytest.mark.e2e
@pytest.mark.nats
async def test_the_example_cluster_serves_a_job_from_a_shared_store(store_prefix):
    with trio.fail_after(40):
        process, lines, urls = await start_cluster(
            "--config", "examples/cluster.toml", "--in-process", "--listen", "tcp://127.0.0.1:0",
            "--store", LOCAL_NATS, "--store-prefix", store_prefix, "--drain-grace", "1",
        )  # fmt: skip
        try:
            stream = f"{store_prefix.upper()}_JOBS"
            assert f"store: NATS JetStream {LOCAL_NATS} (R1, stream {stream})" in lines.seen
            assert not any(line.startswith("journal:") for line in lines.seen)
            async with Client.connect(urls[0]) as client:
                result = await client.submit("math.square", {"n": 7}, qos=1, timeout=20)
            assert result == {"square": 49}
            # The job went through the store: stored once, acknowledged, its result kept.
            stored, held, has_result = await trio.to_thread.run_sync(
                asyncio.run, _store_state(store_prefix)
            )
            assert (stored, held, has_result) == (1, 0, True)
            process.send_signal(signal.SIGTERM)
            await lines.until(lambda line: line == "cluster stopped")
            assert await process.wait() == 0
        finally:
            process.kill()
            await process.wait()


async def _make_store(prefix: str) -> None:
    """Make the streams and the bucket of ``prefix`` as a leader does, with one replica."""
    from actors.leader._jetstream import JetStreamStore

    store = JetStreamStore(StoreConfig(servers=(LOCAL_NATS,), prefix=prefix), "test")
    await store.connect("trio-actors test")
    await store.close()


@pytest.mark.e2e
@pytest.mark.nats
async def test_a_store_that_cannot_be_used_ends_the_cluster_with_status_2(store_prefix):
    await trio.to_thread.run_sync(asyncio.run, _make_store(store_prefix))
    result = await run(
        "-m", "actors.cluster", "--listen", "tcp://127.0.0.1:0",
        "--store", LOCAL_NATS, "--store-prefix", store_prefix, "--store-replicas", "3",
    )  # fmt: skip
    err = assert_clean_error(
        result, 2,
        f"python -m actors.cluster: error: the stream {store_prefix.upper()}_JOBS has 1 "
        "replicas, this leader is configured for 3",
    )  # fmt: skip
    assert len([line for line in err.splitlines() if "error:" in line]) == 1
    assert "leader listening" not in result.stdout.decode()
