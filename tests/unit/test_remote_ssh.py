"""SshOptions validation and how OpenSSH settings become asyncssh.connect() arguments (no network)."""

from __future__ import annotations

import asyncio
import errno
import socket

import asyncssh
import pytest

from orchestrator.errors import ConfigError
from orchestrator.remote.ssh import SshOptions, SshTransport, describe_error, parse_ssh_option


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "ssh_config"
    path.write_text(f"""\
Host gpu1
    HostName 10.0.0.1
    Port 2201
Host gpu*
    User alice
    UserKnownHostsFile {tmp_path}/known_hosts
    ConnectTimeout 7
Host lab*
    StrictHostKeyChecking no
Host new*
    StrictHostKeyChecking accept-new
    UserKnownHostsFile {tmp_path}/kh_new
Host nofile*
    UserKnownHostsFile none
""")
    return str(path)


@pytest.mark.parametrize("text, expected", [
    ("StrictHostKeyChecking=no", ("StrictHostKeyChecking", "no")),
    ("ConnectTimeout 3", ("ConnectTimeout", "3")),
    ("IdentityFile=/k/a=b", ("IdentityFile", "/k/a=b")),
])
def test_parse_ssh_option(text, expected):
    assert parse_ssh_option(text) == expected


@pytest.mark.parametrize("text", ["Foo", "=x", "Key=", "a;b=c", ""])
def test_parse_ssh_option_rejects(text):
    with pytest.raises(ConfigError, match="--ssh-option"):
        parse_ssh_option(text)


@pytest.mark.parametrize("kwargs, field", [
    ({"config": "/nonexistent/ssh_config"}, "--ssh-config"),
    ({"port": 0}, "--port"),
    ({"port": 70000}, "--port"),
    ({"connect_timeout": 0}, "--connect-timeout"),
    ({"options": ("bad",)}, "--ssh-option"),
])
def test_ssh_options_validation(kwargs, field):
    with pytest.raises(ConfigError) as err:
        SshOptions(**kwargs)
    assert err.value.field == field


def test_config_file_is_honoured(config, tmp_path):
    (tmp_path / "known_hosts").write_text("gpu1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHfEWoO8lmtz3uvaWYzJkWtWvOWlCMMx1qJiOmbqfDEz\n")
    kw = SshTransport(SshOptions(config=config)).connect_kwargs("gpu1")
    options = kw["options"]
    assert (kw["host"], kw["config"]) == ("gpu1", ())  # () = reuse the parse in `options`, do not read again
    assert (options.host, options.port, options.username) == ("10.0.0.1", 2201, "alice")
    assert "connect_timeout" not in kw and options.connect_timeout == 7
    assert len(kw["known_hosts"].match("gpu1", "10.0.0.1", None)[0]) == 1  # our file, parsed once


def test_missing_known_hosts_file_trusts_nobody(config):
    kw = SshTransport(SshOptions(config=config)).connect_kwargs("gpu1")  # the file does not exist
    assert isinstance(kw["known_hosts"], asyncssh.SSHKnownHosts) and kw["known_hosts"].match("gpu1", "", None)[0] == []


def test_command_line_wins_over_config(config):
    transport = SshTransport(SshOptions(config=config, user="bob", port=22, connect_timeout=2,
                                        options=("StrictHostKeyChecking=no",)))
    kw = transport.connect_kwargs("gpu1")
    assert (kw["options"].username, kw["options"].port, kw["connect_timeout"]) == ("bob", 22, 2)
    assert kw["known_hosts"] is None  # the user's explicit choice
    assert open(transport._options_file).read() == "StrictHostKeyChecking no\n"
    asyncio.run(transport.aclose())


def test_many_host_blocks_are_split_once(tmp_path):
    """One `Host nodeN` block per node must not cost O(hosts^2) shlex splits."""
    import shlex as real_shlex

    path = tmp_path / "big"
    path.write_text("".join(f"Host n{i}\n    HostName 10.1.{i // 250}.{i % 250 + 1}\n" for i in range(300)))
    calls = []
    original = real_shlex.split
    real_shlex.split = lambda s: calls.append(s) or original(s)
    try:
        transport = SshTransport(SshOptions(config=str(path)))
        hosts = [transport.connect_kwargs(f"n{i}")["options"].host for i in (5, 250, 299)]
    finally:
        real_shlex.split = original
    assert hosts == ["10.1.0.6", "10.1.1.1", "10.1.1.50"]
    assert len(calls) <= 600  # each distinct line once (the cache may already hold some)


def test_ssh_option_comes_before_config(config):
    """ssh -o wins over -F: the options file is read first and OpenSSH config is first-value-wins."""
    kw = SshTransport(SshOptions(config=config, options=("StrictHostKeyChecking=yes",))).connect_kwargs("lab1")
    assert kw["known_hosts"] is not None


def test_host_keys_checked_by_default_even_with_no_known_hosts_file(config):
    kw = SshTransport(SshOptions(config=config)).connect_kwargs("nofile1")
    assert kw["known_hosts"]  # never None: asyncssh would skip checking
    assert SshTransport(SshOptions(config=config)).connect_kwargs("lab1")["known_hosts"] is None


def test_accept_new_installs_the_recording_client(config, tmp_path):
    kw = SshTransport(SshOptions(config=config)).connect_kwargs("new1")
    assert isinstance(kw["known_hosts"], asyncssh.SSHKnownHosts) and callable(kw["client_factory"])
    assert kw["client_factory"]()._known_hosts == [f"{tmp_path}/kh_new"]


def test_default_connect_timeout_without_config(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("")
    assert SshTransport(SshOptions(config=str(empty))).connect_kwargs("x")["connect_timeout"] == 10.0


@pytest.mark.parametrize("exc, text", [
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "connection refused"),
    (asyncio.TimeoutError(), "connection timed out"),
    (OSError(errno.EHOSTUNREACH, "No route to host"), "no route to host"),
    (socket.gaierror(-2, "Name or service not known"), "could not resolve hostname"),
    (asyncssh.PermissionDenied("nope"), "permission denied (publickey)"),
    (asyncssh.HostKeyNotVerifiable("Host key is not trusted"), "host key verification failed (Host key is not trusted)"),
    (asyncssh.ConnectionLost("gone"), "connection lost"),
])
def test_describe_error(exc, text):
    assert describe_error(exc) == text


def test_keepalive_defaults_and_the_users_server_alive_options(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("")
    kw = SshTransport(SshOptions(config=str(empty))).connect_kwargs("x")
    assert (kw["keepalive_interval"], kw["keepalive_count_max"]) == (5, 3)
    config = tmp_path / "cfg"
    config.write_text("Host x\n    ServerAliveInterval 30\n")
    kw = SshTransport(SshOptions(config=str(config), options=("ServerAliveCountMax=9",))).connect_kwargs("x")
    assert "keepalive_interval" not in kw and "keepalive_count_max" not in kw  # asyncssh reads them from the config
    assert (kw["options"].keepalive_interval, kw["options"].keepalive_count_max) == (30, 9)
