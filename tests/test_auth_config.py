"""The security settings of a cluster file and of ``python -m actors.cluster``: the
``[auth]`` table and its users, the ``[leader]`` keys for TLS, origins and ``insecure``,
and the options that set them."""

from __future__ import annotations

import datetime as dt
import logging
import math
import ssl
import textwrap

import pytest
import trustme

from actors.cluster._config import config_from_args, load_auth, load_config
from actors.cluster._model import ClusterConfig, GroupConfig, LeaderTable
from actors.cluster._run import _group_url, group_identities
from actors.leader import AuthConfig, Token
from actors.worker._loader import ConfigError
from protocol import Permissions

SECRET = "s3cret-web-token-0123456789"  # (a token the tests look for in every message)


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
    assert message.startswith(f"{path}: ")
    assert SECRET not in message
    return message[len(path) + 2 :]


USER = '[[auth.users]]\nname = "web"\n'


# --------------------------------------------------------------------------- [auth]


def test_the_auth_table_builds_the_users_and_their_limits(write, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WEB_TOKEN", f"  {SECRET}  ")
    token_file = tmp_path / "ops.token"
    token_file.write_text("ops-token-from-a-file-0123456789\n")
    path = write(
        f"""
        [auth]
        max_connections = 50
        max_payload = "1MiB"
        submit_rate = 100.5
        submit_burst = 200

        [[auth.users]]
        name = "web"
        token_env = "WEB_TOKEN"
        token_expires = 2100-01-01T00:00:00Z
        submit = ["img.>"]
        publish = ["events.web.>"]
        subscribe = ["events.>", "!events.audit.>"]
        max_connections = 5
        max_payload = 1000
        submit_rate = 0
        submit_burst = 3

        [[auth.users]]
        name = "ops"
        token_file = "{token_file}"
        token = "ops-second-token-in-the-file-xyz"
        token_expires = 4102444800
        admin = true

        [[auth.users]]
        name = "resizer"
        cert_subject = "CN=resizer,O=Acme"
        serve = ["img.>"]
        """
    )
    with caplog.at_level(logging.WARNING, logger="actors.cluster"):
        auth = load_config(path).leader.auth
    assert isinstance(auth, AuthConfig)
    assert (auth.max_connections, auth.max_payload, auth.submit_rate, auth.submit_burst) == (
        50,
        2**20,
        100.5,
        200,
    )
    web, ops, resizer = auth.users
    expires = dt.datetime(2100, 1, 1, tzinfo=dt.UTC).timestamp()
    assert web.name == "web"
    assert web.tokens == (Token(secret=SECRET, expires_at=expires),)  # (stripped)
    assert web.submit == Permissions.parse(["img.>"])
    assert web.publish == Permissions.parse(["events.web.>"])
    assert web.subscribe == Permissions(("events.>",), ("events.audit.>",))
    assert web.serve == Permissions.NONE and not web.admin
    assert (web.max_connections, web.max_payload, web.submit_rate, web.submit_burst) == (
        5,
        1000,
        math.inf,  # (0: no limit)
        3,
    )
    assert [t.secret for t in ops.tokens] == [
        "ops-token-from-a-file-0123456789",
        "ops-second-token-in-the-file-xyz",
    ]
    assert {t.expires_at for t in ops.tokens} == {4102444800.0}
    assert ops.admin and ops.submit == Permissions.NONE
    assert resizer.tokens == () and resizer.cert_subject == "CN=resizer,O=Acme"
    assert resizer.serve == Permissions.parse(["img.>"])
    # A token written in the file works, and is warned about (never shown).
    warnings = [r.getMessage() for r in caplog.records]
    assert any(
        "[[auth.users]] #2 'ops' key 'token': a token in the file: for tests only; use "
        "token_env or token_file" in w
        for w in warnings
    )
    assert not any(SECRET in w or "ops-second-token" in w for w in warnings)
    # The leader gets them.
    assert load_config(path).leader.leader_config().auth == auth


def test_a_file_without_auth_has_none(write):
    path = write('[leader]\nlisten = ["tcp://127.0.0.1:0"]\n')
    assert load_config(path).leader.auth is None
    assert load_auth(path) is None
    assert "auth" not in LeaderTable().leader_kwargs()


def test_load_auth_reads_the_auth_table_only(write):
    path = write(f'[auth]\n{USER}token = "{SECRET}"\nsubmit = [">"]\n[[groups]]\nname = "x"\n')
    auth = load_auth(path)  # (the broken group is not its business)
    assert auth is not None and [u.name for u in auth.users] == ["web"]


def test_short_tokens_and_past_expiry_are_warned(write, monkeypatch, caplog):
    monkeypatch.setenv("SHORT", "qz7")
    path = write(f'[auth]\n{USER}token_env = "SHORT"\ntoken_expires = 2000-01-01T00:00:00Z\n')
    with caplog.at_level(logging.WARNING, logger="actors.cluster"):
        load_config(path)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "shorter than 16 characters" in text
    assert "key 'token_expires': 2000-01-01 00:00:00+00:00 is past" in text
    assert "qz7" not in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[auth]\nusers = []\nmax_conections = 1\n', "[auth]: unknown key 'max_conections' (did you mean 'max_connections'?)"),
        ("[auth]\n", "[auth]: no users: add a [[auth.users]] table per identity"),
        ("[auth]\nusers = []\n", "[auth]: no users"),
        ('[auth.users]\nname = "web"\n', "[auth] key 'users': must be an array of tables ([[auth.users]])"),
        ("auth = 3\n", "'auth' must be a table ([auth] and [[auth.users]])"),
        ('[auth]\nmax_connections = 0\n' + USER, "[auth] key 'max_connections': expected an integer >= 1, got 0"),
        ('[auth]\nmax_payload = "lots"\n' + USER, "[auth] key 'max_payload': expected a size in bytes"),
        ("[auth]\nsubmit_rate = -1\n" + USER, "[auth] key 'submit_rate': expected a number >= 0, got -1"),
        ('[[auth.users]]\ntoken_env = "X"\n', "[[auth.users]] #1: missing key 'name'"),
        ("[[auth.users]]\nname = 7\n", "[[auth.users]] #1 key 'name': expected a string, got integer 7"),
        ('[[auth.users]]\nname = "group:web"\ntoken = "' + SECRET + '"\n', "[[auth.users]] #1 key 'name': names starting with 'group:' are the identities the cluster gives its own groups"),
        ('[[auth.users]]\nname = "a\\u0001b"\n', "[[auth.users]] #1 key 'name': 'a\\x01b' is not a valid user name"),
        (USER + 'token = "' + SECRET + '"\nsubmitt = ["a"]\n', "[[auth.users]] #1 'web': unknown key 'submitt' (did you mean 'submit'?)"),
        (USER + 'submit = ["a"]\n', "[[auth.users]] #1 'web': no credential: give token_env or token_file (token, for tests), or cert_subject"),
        (USER + 'token_env = "ACTORS_TEST_UNSET_VARIABLE"\n', "[[auth.users]] #1 'web' key 'token_env': the environment variable 'ACTORS_TEST_UNSET_VARIABLE' is not set (or empty); set it to 'web''s token"),
        (USER + 'token_env = "ACTORS_TEST_EMPTY_VARIABLE"\n', "key 'token_env': the environment variable 'ACTORS_TEST_EMPTY_VARIABLE' is not set (or empty)"),
        (USER + "token_env = 3\n", "[[auth.users]] #1 'web' key 'token_env': expected the name of an environment variable, got integer 3"),
        (USER + 'token_file = "/no/such/token"\n', "[[auth.users]] #1 'web' key 'token_file': cannot read '/no/such/token': No such file or directory"),
        (USER + "token = 12345678901234567890\n", "[[auth.users]] #1 'web' key 'token': expected the token, a non-empty string"),
        (USER + 'token = "  "\n', "key 'token': expected the token, a non-empty string"),
        (USER + 'cert_subject = "CN=a"\ntoken_expires = 1\n', "[[auth.users]] #1 'web' key 'token_expires': 'web' has no token to expire"),
        (USER + f'token = "{SECRET}"\ntoken_expires = "tomorrow"\n', "key 'token_expires': expected a date and time (2030-01-01T00:00:00Z) or a unix time in seconds, got string 'tomorrow'"),
        (USER + f'token = "{SECRET}"\ntoken_expires = 2030-01-01\n', "key 'token_expires': expected a date and time"),
        (USER + 'cert_subject = "resizer"\n', "[[auth.users]] #1 'web' key 'cert_subject': cert_subject 'resizer': expected ATTRIBUTE=value pairs"),
        (USER + "cert_subject = 1\n", "key 'cert_subject': expected a string such as 'CN=resizer', got integer 1"),
        (USER + f'token = "{SECRET}"\nsubmit = "img.>"\n', "[[auth.users]] #1 'web' key 'submit': expected a list of strings, got string 'img.>'"),
        (USER + f'token = "{SECRET}"\nsubscribe = ["a..b"]\n', "[[auth.users]] #1 'web' key 'subscribe': invalid pattern 'a..b': empty token at position 1"),
        (USER + f'token = "{SECRET}"\npublish = ["!a.>.b"]\n', "key 'publish': invalid pattern 'a.>.b'"),
        (USER + f'token = "{SECRET}"\nsubscribe = ["$dlq.>"]\n', "[[auth.users]] #1 'web' key 'subscribe': '$dlq.>': subjects starting with '$' are the system's"),
        (USER + f'token = "{SECRET}"\nadmin = "yes"\n', "[[auth.users]] #1 'web' key 'admin': expected true or false, got string 'yes'"),
        (USER + f'token = "{SECRET}"\nsubmit_burst = 0\n', "[[auth.users]] #1 'web' key 'submit_burst': expected an integer >= 1, got 0"),
        (USER + f'token = "{SECRET}"\n' + USER + 'token = "another-token-0123456789"\n', "[[auth.users]] #2 'web': [[auth.users]] #1 has the same name; names are unique"),
        (USER + f'token = "{SECRET}"\n[[auth.users]]\nname = "ops"\ntoken = "{SECRET}"\n', "[[auth.users]] #2 'ops': its token is also [[auth.users]] #1's; a token names one user"),
        (USER + 'cert_subject = "CN=a,O=b"\n[[auth.users]]\nname = "ops"\ncert_subject = "O=b, CN=a"\n', "[[auth.users]] #2 'ops' key 'cert_subject': [[auth.users]] #1 has the same one ('O=b, CN=a')"),
        ("[[auth.users]]\n[[auth.users]]\n", "[[auth.users]] #1: missing key 'name'"),
    ],
)  # fmt: skip
def test_auth_errors_name_the_user_and_the_key(write, monkeypatch, text, expected):
    monkeypatch.delenv("ACTORS_TEST_UNSET_VARIABLE", raising=False)
    monkeypatch.setenv("ACTORS_TEST_EMPTY_VARIABLE", "")
    assert expected in error_of(write(text))


def test_an_unreadable_or_wrong_token_file_is_named(write, tmp_path):
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    assert f"key 'token_file': '{empty}' is empty" in error_of(
        write(f'[auth]\n{USER}token_file = "{empty}"\n')
    )
    lines = tmp_path / "two.token"
    lines.write_text(f"{SECRET}\nsecond line\n")
    assert f"key 'token_file': '{lines}' is not a token file" in error_of(
        write(f'[auth]\n{USER}token_file = "{lines}"\n')
    )
    assert f"key 'token_file': cannot read '{tmp_path}'" in error_of(
        write(f'[auth]\n{USER}token_file = "{tmp_path}"\n')
    )


def test_no_message_shows_a_token(write, monkeypatch, caplog):
    """Whatever goes wrong near a token, neither the error nor the log shows it."""
    monkeypatch.setenv("WEB_TOKEN", SECRET)
    texts = [
        f'{USER}token_env = "WEB_TOKEN"\n[[auth.users]]\nname = "b"\ntoken = "{SECRET}"\n',
        f'{USER}token = "{SECRET}"\nadmin = 1\n',
        f'{USER}token = "{SECRET}"\ntoken_expires = -5\n',
    ]
    with caplog.at_level(logging.DEBUG):
        for text in texts:
            error_of(write(text))  # (checks the message)
    assert not any(SECRET in r.getMessage() for r in caplog.records)
    auth = load_auth(write(f'{USER}token_env = "WEB_TOKEN"\n'))
    assert auth is not None and SECRET not in repr(auth)


def test_group_identities_serve_and_publish_the_groups_subjects():
    config = ClusterConfig(
        groups=(
            GroupConfig(name="echo", worker="tests.workers:Echo"),
            GroupConfig(name="sq", worker="tests.workers:Echo", subjects=("math.>",)),
        )
    )
    echo, sq = group_identities(config).values()
    assert echo.name == "group:echo" and sq.name == "group:sq"
    assert echo.serve == echo.publish == Permissions.parse(["test.echo"])  # the class's
    assert sq.serve == sq.publish == Permissions.parse(["math.>"])
    assert echo.submit == echo.subscribe == Permissions.NONE and not echo.admin
    assert len(echo.tokens[0].secret) >= 40
    again = group_identities(config)["echo"]
    assert again.tokens != echo.tokens  # fresh at every start


def test_groups_prefer_a_loopback_tcp_listener():
    assert _group_url(["ws://127.0.0.1:1", "tcp://127.0.0.1:2"]) == "tcp://127.0.0.1:2"
    assert _group_url(["tcp://10.0.0.1:1", "tls://127.0.0.1:2"]) == "tcp://10.0.0.1:1"
    assert _group_url(["tls://127.0.0.1:1", "tcp://localhost:2"]) == "tcp://localhost:2"


# --------------------------------------------------------------------------- [leader]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certs(tmp_path, ca):
    """Files: the leader's certificate and key, and the CA's certificate."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {
        "cert": tmp_path / "leader.pem",
        "key": tmp_path / "leader.key",
        "ca": tmp_path / "ca.pem",
    }
    cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    ca.cert_pem.write_to_path(str(files["ca"]))
    return {name: str(path) for name, path in files.items()}


def test_the_leaders_security_keys(write, certs):
    path = write(
        f"""
        [leader]
        listen = ["tls://127.0.0.1:0", "wss://127.0.0.1:0", "tcp://127.0.0.1:0"]
        insecure = true
        allowed_origins = ["https://app.example", "http://localhost:8080", "*"]
        handshake_timeout = 4.5
        max_connections_per_address = 7
        max_subscriptions = 9
        tls_cert = "{certs["cert"]}"
        tls_key = "{certs["key"]}"
        tls_client_ca = "{certs["ca"]}"
        tls_verify_clients = "required"
        tls_ca = "{certs["ca"]}"
        """
    )
    table = load_config(path).leader
    assert table.group_ca == certs["ca"]
    config = table.leader_config()
    assert config.insecure and config.handshake_timeout == 4.5
    assert config.allowed_origins == ("https://app.example", "http://localhost:8080", "*")
    assert config.max_connections_per_address == 7
    assert isinstance(config.ssl_context, ssl.SSLContext)
    assert config.ssl_context.verify_mode == ssl.CERT_REQUIRED
    optional = write(
        f'[leader]\ntls_cert = "{certs["cert"]}"\ntls_key = "{certs["key"]}"\n'
        f'tls_client_ca = "{certs["ca"]}"\n'
    )
    table = load_config(optional).leader
    assert table.tls_context().verify_mode == ssl.CERT_OPTIONAL
    assert table.group_ca == certs["cert"]  # (no tls_ca: the certificate is its own CA)
    plain = LeaderTable().leader_config()
    assert plain.ssl_context is None and not plain.insecure and plain.allowed_origins == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[leader]\nlisten = ["tls://127.0.0.1:80"]\n', "[leader] key 'listen': 'tls://127.0.0.1:80' needs a certificate: set tls_cert and tls_key in [leader] (or --tls-cert and --tls-key)"),
        ('[leader]\nlisten = ["wss://127.0.0.1:80"]\n', "'wss://127.0.0.1:80' needs a certificate"),
        ('[leader]\nlisten = ["tls://127.0.0.1:80", "tcp://127.0.0.1:80"]\n', "[leader] key 'listen': 127.0.0.1:80 is listed twice"),
        ('[leader]\nlisten = ["http://127.0.0.1:80"]\n', "[leader] key 'listen': unsupported transport URL 'http://127.0.0.1:80'"),
        ('[leader]\ntls_key = "k.pem"\n', "[leader] key 'tls_key': needs a certificate: set tls_cert (--tls-cert) too"),
        ('[leader]\ntls_ca = "ca.pem"\n', "[leader] key 'tls_ca': needs a certificate"),
        ('[leader]\ntls_cert = "/no/such.pem"\ntls_key = "/no/such.key"\n', "[leader] key 'tls_cert': /no/such.pem: no such file"),
        ('[leader]\ntls_cert = ""\n', "[leader] key 'tls_cert': expected a file path (a non-empty string), got string ''"),
        ('[leader]\ntls_verify_clients = "always"\n', "[leader] key 'tls_verify_clients': expected one of optional, required; got string 'always'"),
        ('[leader]\ninsecure = "yes"\n', "[leader] key 'insecure': expected true or false, got string 'yes'"),
        ('[leader]\nhandshake_timeout = 0\n', "[leader] key 'handshake_timeout': expected a number > 0, got 0"),
        ('[leader]\nallowed_origins = "*"\n', "[leader] key 'allowed_origins': expected a list of strings"),
        ('[leader]\nallowed_origins = ["https://app.example/path"]\n', "[leader] key 'allowed_origins': 'https://app.example/path' is not an origin: expected scheme://host[:port] with no path"),
        ('[leader]\nallowed_origins = ["app.example"]\n', "'app.example' is not an origin"),
        ('[leader]\nallowed_origins = ["http://h:99999"]\n', "'http://h:99999' is not an origin"),
    ],
)  # fmt: skip
def test_leader_security_errors_name_the_key(write, text, expected):
    assert expected in error_of(write(text))


def test_tls_file_errors_name_the_key_and_the_file(write, certs, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = {
        f'tls_cert = "{garbage}"\ntls_key = "{certs["key"]}"': f"key 'tls_cert': {garbage}: is not PEM",
        f'tls_cert = "{certs["cert"]}"\ntls_key = "{certs["cert"]}"': f"key 'tls_key': {certs['cert']}: holds no private key",
        f'tls_cert = "{certs["cert"]}"\ntls_key = "{certs["key"]}"\ntls_client_ca = "{garbage}"': f"key 'tls_client_ca': {garbage}: is not PEM",
        f'tls_cert = "{certs["cert"]}"\ntls_key = "{certs["key"]}"\ntls_ca = "/no/ca.pem"': "key 'tls_ca': /no/ca.pem: no such file",
        f'tls_cert = "{certs["cert"]}"\ntls_key = "{certs["key"]}"\ntls_verify_clients = "required"': "key 'tls_verify_clients': needs tls_client_ca",
        f'tls_cert = "{certs["cert"]}"': f"key 'tls_cert': {certs['cert']}: holds no private key, and no key file was given",
    }  # fmt: skip
    for keys, expected in cases.items():
        assert f"[leader] {expected}" in error_of(write(f"[leader]\n{keys}\n")), keys


def test_a_key_in_the_certificates_file_needs_no_tls_key(write, ca, tmp_path):
    both = tmp_path / "both.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(both))
    table = load_config(write(f'[leader]\ntls_cert = "{both}"\n')).leader
    assert isinstance(table.tls_context(), ssl.SSLContext)


# --------------------------------------------------------------------------- command line


def test_the_security_options(write, certs):
    config = config_from_args(
        listen=["tls://127.0.0.1:0", "tcp://127.0.0.1:0"],
        insecure=True,
        allow_origins=["https://a.example", "https://a.example", "http://localhost:1"],
        tls_cert=certs["cert"],
        tls_key=certs["key"],
        tls_client_ca=certs["ca"],
    )
    leader = config.leader
    assert leader.insecure
    assert leader.allowed_origins == ("https://a.example", "http://localhost:1")
    assert leader.leader_config().ssl_context.verify_mode == ssl.CERT_OPTIONAL
    assert config.path is None
    # The options add to the file's origins and replace its certificate.
    path = write(
        '[leader]\nallowed_origins = ["https://file.example"]\ntls_cert = "/no/such.pem"\n'
        'tls_key = "/no/such.key"\n'
    )
    config = config_from_args(
        config_path=path,
        allow_origins=["https://cli.example"],
        tls_cert=certs["cert"],
        tls_key=certs["key"],
    )
    assert config.leader.allowed_origins == ("https://file.example", "https://cli.example")
    assert config.leader.tls_cert == certs["cert"] and config.path == path
    # A file's tls:// listener may get its certificate from the options.
    path = write('[leader]\nlisten = ["tls://127.0.0.1:0"]\n')
    config = config_from_args(config_path=path, tls_cert=certs["cert"], tls_key=certs["key"])
    assert config.leader.listen == ("tls://127.0.0.1:0",)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"listen": ["tls://127.0.0.1:0"]}, "--listen: 'tls://127.0.0.1:0' needs a certificate: set tls_cert and tls_key in [leader] (or --tls-cert and --tls-key)"),
        ({"tls_cert": "/no/such.pem", "tls_key": "/no/such.key"}, "--tls-cert: /no/such.pem: no such file"),
        ({"tls_key": "/no/such.key"}, "--tls-key: needs a certificate"),
        ({"tls_client_ca": "ca.pem"}, "--tls-client-ca: needs a certificate"),
        ({"tls_cert": ""}, "--tls-cert: expected a file path"),
        ({"allow_origins": ["evil"]}, "--allow-origin: 'evil' is not an origin"),
    ],
)  # fmt: skip
def test_security_option_errors_name_the_option(options, expected):
    with pytest.raises(ConfigError) as info:
        config_from_args(**options)
    assert expected in info.value.message


def test_an_option_naming_a_bad_file_names_it_with_the_files_table(write, certs, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("x\n")
    path = write(f'[leader]\ntls_cert = "{certs["cert"]}"\ntls_key = "{certs["key"]}"\n')
    with pytest.raises(ConfigError) as info:
        config_from_args(config_path=path, tls_client_ca=str(garbage))
    assert (
        info.value.message
        == f"--tls-client-ca: {garbage}: is not PEM: expected a PEM certificate (-----BEGIN ...-----)"
    )
