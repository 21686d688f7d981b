"""Cluster configuration from TOML files and from command-line options."""

from __future__ import annotations

import textwrap

import pytest

from actors._checks import check_url
from actors.cluster._config import config_from_args, load_config, parse_worker_option
from actors.cluster._model import ClusterConfig, GroupConfig, LeaderTable, RetryConfig
from actors.worker._loader import ConfigError
from runtime import Backoff

FULL = """
[leader]
name = "main"
listen = ["tcp://127.0.0.1:7700", "ws://127.0.0.1:7701/actors"]
ack_timeout = 10
max_attempts = 3
max_queued = 500
dedup_window = 60.5
heartbeat = 2.0
max_connections = 10

[leader.retry]
base = 0.25
factor = 3
cap = 9.0
jitter = 0.2

[[groups]]
name = "echo"
worker = "tests.workers:Echo"
instances = 4
mode = "round_robin"
policy = "least_loaded"
subjects = ["test.echo", "test.more.>"]
concurrency = 8
in_process = true

[[groups]]
name = "flaky"
worker = "tests.workers:Flaky"
"""

GROUP = '[[groups]]\nname = "echo"\nworker = "tests.workers:Echo"\n'


@pytest.fixture
def write(tmp_path):
    """Write a TOML text to ``cluster.toml`` and return its path."""

    def write(text: str) -> str:
        path = tmp_path / "cluster.toml"
        path.write_text(textwrap.dedent(text))
        return str(path)

    return write


def error_of(path: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = info.value.message
    assert message.startswith(path + ": "), message  # every message names the file
    return message[len(path) + 2 :]


def test_full_file(write):
    config = load_config(write(FULL))
    assert config.leader == LeaderTable(
        name="main",
        listen=("tcp://127.0.0.1:7700", "ws://127.0.0.1:7701/actors"),
        ack_timeout=10.0,
        max_attempts=3,
        max_queued=500,
        dedup_window=60.5,
        heartbeat=2.0,
        max_connections=10,
        retry=RetryConfig(base=0.25, factor=3.0, cap=9.0, jitter=0.2),
    )
    assert config.groups == (
        GroupConfig(
            name="echo",
            worker="tests.workers:Echo",
            instances=4,
            mode="round_robin",
            policy="least_loaded",
            subjects=("test.echo", "test.more.>"),
            concurrency=8,
            in_process=True,
        ),
        GroupConfig(name="flaky", worker="tests.workers:Flaky"),
    )
    assert config.source.endswith("cluster.toml")


def test_defaults(write):
    config = load_config(write(""))
    assert config == ClusterConfig(leader=LeaderTable(), groups=(), source=config.source)
    assert config.leader.listen == ("tcp://127.0.0.1:7700",)


def test_leader_kwargs_build_the_leader_arguments(write):
    kwargs = load_config(write(FULL)).leader.leader_kwargs()
    assert kwargs == {
        "name": "main",
        "listen": ("tcp://127.0.0.1:7700", "ws://127.0.0.1:7701/actors"),
        "ack_timeout": 10.0,
        "max_attempts": 3,
        "max_queued": 500,
        "dedup_window": 60.5,
        "heartbeat": 2.0,
        "max_connections": 10,
        "retry_backoff": Backoff(base=0.25, factor=3.0, cap=9.0, jitter=0.2),
    }
    assert LeaderTable().leader_kwargs()["retry_backoff"] is None


def test_the_leader_accepts_the_kwargs(write):
    from actors import Leader

    Leader(**load_config(write(FULL)).leader.leader_kwargs())


def test_a_group_without_class_subjects_needs_an_override(write):
    text = '[[groups]]\nname = "n"\nworker = "tests.workers:NoSubjects"\n'
    assert "declares no subjects" in error_of(write(text))
    config = load_config(write(text + 'subjects = ["x.y"]\n'))
    assert config.groups[0].subjects == ("x.y",)


def test_import_workers_false_only_checks_the_shape(write):
    text = '[[groups]]\nname = "n"\nworker = "no_such_module:Thing"\n'
    assert load_config(write(text), import_workers=False).groups[0].worker == "no_such_module:Thing"


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.toml")
    assert error_of(path) == "cannot read the configuration: No such file or directory"


def test_invalid_toml(write):
    message = error_of(write("[leader\nlisten = 3\n"))
    assert message.startswith("invalid TOML: ")
    assert "line 1" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # unknown keys, with a suggestion when one is close
        (
            "[leadr]\n",
            "top level: unknown key 'leadr' (did you mean 'leader'?); allowed keys: leader, groups",
        ),
        (
            "[leader]\nack_timout = 3\n",
            "[leader]: unknown key 'ack_timout' (did you mean 'ack_timeout'?)",
        ),
        (
            "[leader.retry]\nbase = 1\nceiling = 2\n",
            "[leader.retry]: unknown key 'ceiling'; allowed keys: base, factor, cap, jitter",
        ),
        (
            GROUP + "instance = 3\n",
            "[[groups]] #1 'echo': unknown key 'instance' (did you mean 'instances'?)",
        ),
        # wrong shapes of tables
        ("leader = 3\n", "'leader' must be a table ([leader])"),
        ("groups = 3\n", "'groups' must be an array of tables ([[groups]])"),
        ("groups = [3]\n", "[[groups]] #1: must be a table"),
        ("[leader]\nretry = 2\n", "[leader.retry]: must be a table"),
        # leader values
        (
            '[leader]\nlisten = "tcp://127.0.0.1:1"\n',
            "[leader] key 'listen': expected a list of strings, got string 'tcp://127.0.0.1:1'",
        ),
        ("[leader]\nlisten = []\n", "[leader] key 'listen': at least one listen address is needed"),
        (
            '[leader]\nlisten = ["http://127.0.0.1:80"]\n',
            "[leader] key 'listen': unsupported transport URL 'http://127.0.0.1:80': the scheme must be one of tcp, tls, ws, wss",
        ),
        (
            '[leader]\nlisten = ["tls://127.0.0.1:80"]\n',
            "[leader] key 'listen': 'tls://127.0.0.1:80' needs a certificate: set tls_cert and tls_key in [leader] (or --tls-cert and --tls-key), or listen on tcp:// or ws://",
        ),
        (
            '[leader]\nlisten = ["tcp://127.0.0.1"]\n',
            "[leader] key 'listen': transport URL 'tcp://127.0.0.1' has no port (write tcp://host:port)",
        ),
        (
            '[leader]\nlisten = ["tcp://127.0.0.1:99999"]\n',
            "[leader] key 'listen': transport URL 'tcp://127.0.0.1:99999' has an invalid port",
        ),
        (
            '[leader]\nack_timeout = "3"\n',
            "[leader] key 'ack_timeout': expected a number > 0, got string '3'",
        ),
        ("[leader]\nack_timeout = 0\n", "[leader] key 'ack_timeout': expected a number > 0, got 0"),
        ("[leader]\nheartbeat = nan\n", "[leader] key 'heartbeat': expected a number > 0, got nan"),
        (
            "[leader]\nmax_attempts = 0\n",
            "[leader] key 'max_attempts': expected an integer >= 1, got 0",
        ),
        (
            "[leader]\nmax_queued = 1.5\n",
            "[leader] key 'max_queued': expected an integer >= 1, got float 1.5",
        ),
        (
            "[leader]\nmax_connections = true\n",
            "[leader] key 'max_connections': expected an integer >= 1, got boolean True",
        ),
        (
            '[leader]\nname = "a b"\n',
            "[leader] key 'name': 'a b' is not a valid name (letters, digits, '_' and '-' only)",
        ),
        (
            "[leader.retry]\njitter = 1.5\n",
            "[leader.retry] key 'jitter': expected a number >= 0 and <= 1, got 1.5",
        ),
        (
            "[leader.retry]\nfactor = 0.5\n",
            "[leader.retry] key 'factor': expected a number >= 1, got 0.5",
        ),
        (
            "[leader.retry]\nbase = 5\ncap = 1\n",
            "[leader.retry] key 'cap': must be >= base (5.0), got 1.0",
        ),
        # groups
        ('[[groups]]\nworker = "tests.workers:Echo"\n', "[[groups]] #1: missing key 'name'"),
        ("[[groups]]\nname = 7\n", "[[groups]] #1 key 'name': expected a string, got integer 7"),
        ('[[groups]]\nname = "a.b"\n', "[[groups]] #1 key 'name': 'a.b' is not a valid name"),
        (
            '[[groups]]\nname = "g"\n',
            "[[groups]] #1 'g': exactly one of 'worker' (\"module:Class\") or 'command' is needed",
        ),
        (
            GROUP + 'command = ["python3", "x.py"]\n',
            "[[groups]] #1 'echo': exactly one of 'worker'",
        ),
        (
            '[[groups]]\nname = "p"\ncommand = "python3 x.py"\n',
            "[[groups]] #1 'p' key 'command': expected a list of strings, got string",
        ),
        (
            '[[groups]]\nname = "p"\ncommand = []\n',
            "[[groups]] #1 'p' key 'command': must not be empty",
        ),
        (
            '[[groups]]\nname = "p"\ncommand = ["python3", "pricer.py"]\n',
            "[[groups]] #1 'p' key 'command': command workers are not supported yet",
        ),
        (
            '[[groups]]\nname = "g"\nworker = 3\n',
            "[[groups]] #1 'g' key 'worker': expected a string \"module:Class\", got integer 3",
        ),
        (
            GROUP + "instances = -1\n",
            "[[groups]] #1 'echo' key 'instances': expected an integer >= 0, got -1",
        ),
        (
            GROUP + 'instances = "4"\n',
            "[[groups]] #1 'echo' key 'instances': expected an integer >= 0, got string '4'",
        ),
        (
            GROUP + 'mode = "fanout"\n',
            "[[groups]] #1 'echo' key 'mode': expected one of round_robin, broadcast; got string 'fanout'",
        ),
        (
            GROUP + 'policy = "random"\n',
            "[[groups]] #1 'echo' key 'policy': expected one of round_robin, least_loaded, sticky; got string 'random'",
        ),
        (
            GROUP + 'subjects = ["a..b"]\n',
            "[[groups]] #1 'echo' key 'subjects': invalid subject pattern 'a..b'",
        ),
        (
            GROUP + 'subjects = ["a.>.b"]\n',
            "[[groups]] #1 'echo' key 'subjects': invalid subject pattern 'a.>.b'",
        ),
        (
            GROUP + 'subjects = ["a b"]\n',
            "[[groups]] #1 'echo' key 'subjects': invalid subject pattern 'a b'",
        ),
        (
            GROUP + "subjects = []\n",
            "[[groups]] #1 'echo' key 'subjects': at least one subject pattern is needed",
        ),
        (
            GROUP + 'subjects = "a.b"\n',
            "[[groups]] #1 'echo' key 'subjects': expected a list of strings",
        ),
        (
            GROUP + "concurrency = 0\n",
            "[[groups]] #1 'echo' key 'concurrency': expected an integer >= 1, got 0",
        ),
        (
            GROUP + "in_process = 1\n",
            "[[groups]] #1 'echo' key 'in_process': expected true or false, got integer 1",
        ),
        (
            GROUP + 'max_memory = "lots"\n',
            "[[groups]] #1 'echo' key 'max_memory': expected a size in bytes such as 536870912 or \"512MiB\", got 'lots'",
        ),
        (
            GROUP + 'max_memory = "5XB"\n',
            "[[groups]] #1 'echo' key 'max_memory': unknown unit 'XB' in '5XB'",
        ),
        (
            GROUP + "max_memory = 0\n",
            "[[groups]] #1 'echo' key 'max_memory': expected a size of at least 1 byte, got 0",
        ),
        (
            GROUP + "max_memory = 1.5e9\n",
            "[[groups]] #1 'echo' key 'max_memory': expected a size in bytes",
        ),
        (
            GROUP + "max_jobs = 0\n",
            "[[groups]] #1 'echo' key 'max_jobs': expected an integer >= 1, got 0",
        ),
        (
            GROUP + 'max_jobs = "many"\n',
            "[[groups]] #1 'echo' key 'max_jobs': expected an integer >= 1, got string 'many'",
        ),
        (
            GROUP + "max_job = 3\n",
            "[[groups]] #1 'echo': unknown key 'max_job' (did you mean 'max_jobs'?)",
        ),
        (
            GROUP + "max_start_failures = -1\n",
            "[[groups]] #1 'echo' key 'max_start_failures': expected an integer >= 0, got -1",
        ),
        (GROUP + GROUP, "two groups are named 'echo'"),
        # the worker class itself
        (
            '[[groups]]\nname = "g"\nworker = "tests.workers"\n',
            "[[groups]] #1 'g' key 'worker': expected 'module:Attribute'",
        ),
        (
            '[[groups]]\nname = "g"\nworker = "no_such_module_xyz:W"\n',
            "[[groups]] #1 'g' key 'worker': cannot load 'no_such_module_xyz:W': no module named 'no_such_module_xyz'",
        ),
        (
            '[[groups]]\nname = "g"\nworker = "tests.workers:Missing"\n',
            "[[groups]] #1 'g' key 'worker': cannot load 'tests.workers:Missing': 'tests.workers' has no attribute 'Missing'",
        ),
        (
            '[[groups]]\nname = "g"\nworker = "tests.workers:NotAWorker"\n',
            "[[groups]] #1 'g' key 'worker': 'tests.workers:NotAWorker' is the class 'NotAWorker', not a Worker subclass",
        ),
    ],
)
def test_errors_name_the_file_table_and_key(write, text, expected):
    assert error_of(write(text)).startswith(expected)


def test_recycling_limits(write):
    config = load_config(
        write(
            GROUP
            + 'max_memory = "256MiB"\nmax_jobs = 1000\n'
            + GROUP.replace("echo", "e2")
            + "max_memory = 1000000\n"
        )
    )
    assert [(g.max_memory, g.max_jobs) for g in config.groups] == [
        (256 * 2**20, 1000),
        (1_000_000, None),
    ]


def test_start_failure_limits(write):
    config = load_config(
        write(
            GROUP
            + "max_start_failures = 3\n"
            + GROUP.replace("echo", "e2")
            + "max_start_failures = 0\n"
            + GROUP.replace("echo", "e3")
        )
    )
    assert [g.max_start_failures for g in config.groups] == [3, 0, None]


def test_the_second_group_is_numbered(write):
    message = error_of(
        write(GROUP + '[[groups]]\nname = "b"\nworker = "tests.workers:Echo"\nmode = 1\n')
    )
    assert message.startswith("[[groups]] #2 'b' key 'mode'")


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("tests.workers:Echo", GroupConfig(name="echo", worker="tests.workers:Echo", instances=1)),
        (
            "tests.workers:Echo=4",
            GroupConfig(name="echo", worker="tests.workers:Echo", instances=4),
        ),
        ("e=tests.workers:Echo", GroupConfig(name="e", worker="tests.workers:Echo", instances=1)),
        ("e=tests.workers:Echo=0", GroupConfig(name="e", worker="tests.workers:Echo", instances=0)),
        (
            "pkg.mod:Outer.Inner=2",
            GroupConfig(name="inner", worker="pkg.mod:Outer.Inner", instances=2),
        ),
    ],
)
def test_worker_options(option, expected):
    assert parse_worker_option(option) == expected


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (
            "tests.workers:Echo=x",
            "--worker 'tests.workers:Echo=x': instances must be an integer >= 0, got 'x'",
        ),
        (
            "tests.workers:Echo=-2",
            "--worker 'tests.workers:Echo=-2': instances must be an integer >= 0, got -2",
        ),
        (
            "tests.workers.Echo",
            "--worker 'tests.workers.Echo': expected [name=]module:Class[=N], got no 'module:Class'",
        ),
        ("a=b=c=d", "--worker 'a=b=c=d': expected [name=]module:Class[=N]"),
        (
            "a b=tests.workers:Echo",
            "--worker 'a b=tests.workers:Echo' group name: 'a b' is not a valid name",
        ),
    ],
)
def test_bad_worker_options(option, expected):
    with pytest.raises(ConfigError) as info:
        parse_worker_option(option)
    assert info.value.message.startswith(expected)


def test_config_from_args():
    config = config_from_args(
        listen=["tcp://127.0.0.1:0", "ws://127.0.0.1:0"],
        workers=["tests.workers:Echo=2", "tests.workers:Sleepy"],
    )
    assert config.leader.listen == ("tcp://127.0.0.1:0", "ws://127.0.0.1:0")
    assert [(g.name, g.instances, g.in_process) for g in config.groups] == [
        ("echo", 2, False),
        ("sleepy", 1, False),
    ]
    assert config.source == "command line"


def test_config_from_args_merges_a_file(write):
    path = write(FULL)
    config = config_from_args(
        config_path=path,
        listen=["tcp://127.0.0.1:0"],
        workers=["s=tests.workers:Sleepy"],
        in_process=True,
    )
    assert config.leader.listen == ("tcp://127.0.0.1:0",)
    assert config.leader.ack_timeout == 10.0  # the rest of [leader] stays
    assert [g.name for g in config.groups] == ["echo", "flaky", "s"]
    assert all(g.in_process for g in config.groups)


def test_config_from_args_sets_every_groups_limits(write):
    config = config_from_args(
        config_path=write(FULL), workers=["s=tests.workers:Sleepy"], max_memory="1GB", max_jobs=5
    )
    assert {(g.max_memory, g.max_jobs) for g in config.groups} == {(10**9, 5)}
    assert config_from_args(workers=["tests.workers:Echo"]).groups[0].max_jobs is None
    with pytest.raises(ConfigError, match="--max-memory: unknown unit 'XB'"):
        config_from_args(workers=["tests.workers:Echo"], max_memory="5XB")
    with pytest.raises(ConfigError, match="--max-jobs: expected an integer >= 1, got 0"):
        config_from_args(workers=["tests.workers:Echo"], max_jobs=0)


def test_config_from_args_errors(write):
    with pytest.raises(ConfigError, match="--listen: unsupported transport URL 'udp://x:1'"):
        config_from_args(listen=["udp://x:1"])
    with pytest.raises(ConfigError, match=r"--worker 'tests\.workers:Nope': cannot load"):
        config_from_args(workers=["tests.workers:Nope"])
    with pytest.raises(
        ConfigError,
        match=r"--worker 'tests\.workers:NoSubjects': 'tests\.workers:NoSubjects' declares no subjects",
    ):
        config_from_args(workers=["tests.workers:NoSubjects"])
    with pytest.raises(ConfigError, match="two groups are named 'echo'"):
        config_from_args(workers=["tests.workers:Echo", "tests.workers:Echo=2"])
    with pytest.raises(ConfigError, match="two groups are named 'echo'"):
        config_from_args(config_path=write(FULL), workers=["tests.workers:Echo"])


def test_check_url():
    assert check_url("wss://example.org:443/actors", at="--url") == "wss://example.org:443/actors"
    with pytest.raises(ConfigError, match="--url: unsupported transport URL 'http://x:1'"):
        check_url("http://x:1", at="--url")
    with pytest.raises(ConfigError, match="--url: expected a URL string, got integer 3"):
        check_url(3, at="--url")


def test_the_leaders_limits_from_a_file_reach_the_broker_and_the_listeners(write):
    from actors import Leader

    path = write(
        """
        [leader]
        max_queued_bytes = "64MiB"
        max_queued_per_subject = 1000
        max_queued_bytes_per_client = 1048576
        max_queue_time = 0
        route_grace = 2.5
        restart_grace = 0
        max_connections_per_address = 10
        max_handshakes = 5
        max_window = 50
        """
    )
    leader = Leader(**load_config(path).leader.leader_kwargs())
    config = leader.broker.config
    assert (config.max_queued_bytes, config.max_queued_per_subject) == (64 * 2**20, 1000)
    assert config.max_queued_bytes_per_client == 2**20 and config.max_window == 50
    assert config.max_queue_time == float("inf")  # 0: no limit
    assert (config.route_grace, config.restart_grace) == (2.5, 0.0)
    assert (leader.max_connections_per_address, leader.max_handshakes) == (10, 5)
    # Unset limits keep the leader's defaults.
    assert config.max_queued_per_client == 10_000 and config.max_queue_time != 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('max_queued_bytes = "lots"', "key 'max_queued_bytes': expected a size in bytes"),
        ("max_queue_time = -1", "key 'max_queue_time'"),
        ("max_queued_per_client = 0", "key 'max_queued_per_client'"),
    ],
)
def test_bad_leader_limits_name_the_key(write, text, expected):
    assert expected in error_of(write(f"[leader]\n{text}\n"))
