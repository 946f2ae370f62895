"""SSH transport on asyncssh: one head process holds hundreds of sessions (numbers: docs/benchmarks/fanout.md).

    opts = SshOptions(config="ssh_config", user="root", options=("StrictHostKeyChecking=accept-new",))
    transport = SshTransport(opts)
    session = await transport.open("node3", ["python3", "-c", "print(1)"])   # argv quoted here, once
    async for line in session.stdout: ...
    code, signal = await session.wait(); session.close()

OpenSSH semantics kept: `options` (ssh -o) win over the config file (ssh -F, default ~/.ssh/config), and
`user`/`port`/`connect_timeout` win over both. Keepalive: ServerAliveInterval / ServerAliveCountMax from there,
else every 5 s, 3 unanswered = connection lost (255). Host keys are always checked against UserKnownHostsFile
(default ~/.ssh/known_hosts) unless StrictHostKeyChecking says otherwise: `accept-new` records keys of hosts
not yet known and still refuses a changed key; `no`/`off` is the user's explicit choice and is logged as a
warning. asyncssh never prompts, so BatchMode=yes is implied.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import logging
import os
import shlex
import socket
import tempfile
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


def _import_asyncssh():
    """Import asyncssh without the ~0.1-0.2 s its import spends looking for liboqs (optional post-quantum KEX):
    ctypes.util.find_library runs ldconfig, then gcc and ld, twice, on every start of the CLI. A glob of the
    usual library directories answers the same question without a process."""
    import ctypes.util
    import glob

    real = ctypes.util.find_library

    def find_library(name: str):
        if name not in ("oqs", "liboqs"):
            return real(name)
        hits = [p for pattern in ("/usr/lib*/liboqs.so*", "/usr/lib/*-linux-gnu/liboqs.so*", "/usr/local/lib*/liboqs.so*")
                for p in sorted(glob.glob(pattern))]
        return hits[0] if hits else None

    ctypes.util.find_library = find_library
    try:
        import asyncssh
    finally:
        ctypes.util.find_library = real
    return asyncssh


asyncssh = _import_asyncssh()
from asyncssh.config import SSHClientConfig, SSHConfig  # noqa: E402 - after the import above

from orchestrator.errors import ConfigError
from orchestrator.remote.session import ProcessStreams

log = logging.getLogger("orchestrator.remote.ssh")

__all__ = ["SshOptions", "SshTransport", "describe_error", "parse_ssh_option"]

DEFAULT_CONNECT_TIMEOUT_S = 10.0
HANDSHAKE_TIMEOUT_S = 60.0  # SSH handshake + login, after the TCP connect (see SshTransport.open)
# Keepalive when the config sets no ServerAliveInterval / ServerAliveCountMax (OpenSSH and asyncssh send none):
# a host whose link went down is noticed after 15-20 s instead of never (a dead peer sends no FIN or RST).
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT_MAX = 3
_STRICT = "StrictHostKeyChecking"
# -o options that mean nothing to asyncssh but are harmless to drop quietly (pdsh/ansible users pass them)
_IGNORED_OK = {"batchmode", "loglevel", "controlmaster", "controlpath", "controlpersist", "requesttty"}
# Cipher preference when the config names no `Ciphers`: OpenSSH's default set, AES-GCM first. asyncssh's
# chacha20-poly1305 builds two cipher contexts per packet in Python (~1.5 ms of head CPU per short session,
# measured); AES-GCM keeps one per direction and uses AES-NI.
_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes128-ctr",
            "aes192-ctr", "aes256-ctr")


# Two process-wide lessons for asyncssh's OpenSSH config reader, both needed to fan out to hundreds of hosts:
# 1. it ignores StrictHostKeyChecking; registering the keyword makes the ONE parse per host that asyncssh does
#    anyway also give us the host key policy (the reader only records the value; SshTransport acts on it);
# 2. it splits every line of the config with shlex (pure Python, ~50 us a line) on every connection: with one
#    `Host nodeN` block per node that is O(hosts^2) (256 hosts: ~13 s of CPU). Lines repeat from host to host,
#    so the split is cached.
SSHClientConfig._handlers.setdefault(_STRICT.lower(), (_STRICT, SSHConfig._set_string))
asyncssh.config.shlex = types.SimpleNamespace(split=functools.lru_cache(maxsize=1 << 16)(lambda s: tuple(shlex.split(s))))


def parse_ssh_option(text: str) -> tuple[str, str]:
    """'Key=Value' or 'Key Value' (as ssh -o takes it) -> (Key, Value); ConfigError otherwise."""
    key, sep, value = text.strip().replace("=", " ", 1).partition(" ")
    if not sep or not key or not value.strip() or not key.isalnum():
        raise ConfigError("--ssh-option", text, "use Key=Value, e.g. --ssh-option StrictHostKeyChecking=accept-new")
    return key, value.strip()


@dataclass(frozen=True, kw_only=True, slots=True)
class SshOptions:
    """How to reach hosts over SSH; the same meaning as the OpenSSH client flags named below."""

    config: str | None = None
    """OpenSSH client config file (ssh -F); None: ~/.ssh/config when it exists."""
    user: str | None = None
    """Remote user (ssh -l); None: User from the config, else the local user."""
    port: int | None = None
    """Remote port (ssh -p); None: Port from the config, else 22."""
    connect_timeout: float | None = None
    """Seconds for the TCP connect (ssh -o ConnectTimeout); None: the config's, else 10 s. The SSH handshake
    and login after it get up to HANDSHAKE_TIMEOUT_S."""
    options: tuple[str, ...] = ()
    """OpenSSH options as 'Key=Value' (ssh -o), applied before the config file like OpenSSH does."""

    def __post_init__(self) -> None:
        if self.config is not None and not Path(self.config).is_file():
            raise ConfigError("--ssh-config", self.config, "name an existing OpenSSH client config file")
        if self.port is not None and not 0 < self.port < 65536:
            raise ConfigError("--port", self.port, "use a TCP port in 1..65535")
        if self.connect_timeout is not None and not self.connect_timeout > 0:
            raise ConfigError("--connect-timeout", self.connect_timeout, "use a positive number of seconds")
        for text in self.options:
            parse_ssh_option(text)

    def config_paths(self, options_file: str | None) -> list[str]:
        """Config files in precedence order: the -o options (as a file), then -F or ~/.ssh/config."""
        paths = [options_file] if options_file else []
        if self.config:
            paths.append(self.config)
        elif (default := Path("~/.ssh/config").expanduser()).is_file():
            paths.append(str(default))
        return paths


def describe_error(exc: BaseException) -> str:
    """A short, pdsh-like reason for a failed connection: 'connection refused', 'host key verification failed'."""
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return f"host key verification failed ({exc.reason})"
    if isinstance(exc, asyncssh.PermissionDenied):
        return "permission denied (publickey)"
    if isinstance(exc, asyncssh.ConnectionLost):
        return "connection lost"
    if isinstance(exc, asyncssh.DisconnectError):
        return f"disconnected: {exc.reason}"
    if isinstance(exc, socket.gaierror):
        return "could not resolve hostname"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "connection timed out"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "no route to host"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


class _AcceptNewClient(asyncssh.SSHClient):
    """StrictHostKeyChecking=accept-new: asyncssh asks us only about keys not in known_hosts."""

    def __init__(self, known_hosts: list[str], host: str, port: int):
        self._known_hosts, self._host, self._port = known_hosts, host, port

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        existing = [f for f in self._known_hosts if Path(f).is_file()]
        if existing and any(asyncssh.match_known_hosts(existing, self._host, addr, port)[:2]):
            return False  # the host is known with another key: a changed key is refused, as OpenSSH does
        name = self._host if self._port == 22 else f"[{self._host}]:{self._port}"
        Path(self._known_hosts[0]).parent.mkdir(parents=True, exist_ok=True)
        with open(self._known_hosts[0], "a") as f:
            f.write(f"{name} {key.export_public_key().decode().strip()}\n")
        log.warning("%s: new host key recorded in %s (StrictHostKeyChecking=accept-new)", host, self._known_hosts[0])
        return True


class SshSession(ProcessStreams):
    """One remote process on one SSH connection; closing it closes the connection (the agent's control channel)."""

    def __init__(self, conn: asyncssh.SSHClientConnection, proc: asyncssh.SSHClientProcess):
        self._conn, self._proc = conn, proc

    async def wait(self) -> tuple[int | None, str | None]:
        """(exit code, signal name) once the remote process ended; (None, None) if the connection dropped first."""
        await self._proc.wait_closed()
        signal_name = self._proc.exit_signal[0] if self._proc.exit_signal else None
        return self._proc.exit_status, signal_name

    async def drain(self) -> None:
        """Wait until what send() wrote is taken by the connection (flow control for a stream on stdin)."""
        await self._proc.stdin.drain()

    def close(self) -> None:
        self._proc.close()
        self._conn.close()


async def _tcp_connect(host: str, port: int, family: int) -> socket.socket:
    """A connected non-blocking socket to host:port (each resolved address in turn), for asyncssh.connect(sock=)."""
    loop = asyncio.get_running_loop()
    error: BaseException = OSError(errno.EHOSTUNREACH, f"no address for {host}")
    try:  # an address needs no resolver: loop.getaddrinfo would still take a trip through a thread pool
        ip = ipaddress.ip_address(host)
        addresses = [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_STREAM, 0, "", (host, port))]
    except ValueError:
        addresses = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
    for fam, kind, proto, _, addr in addresses:
        sock = socket.socket(fam, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, addr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
        except BaseException:
            sock.close()
            raise
    raise error


def ssh_hostname(host: str, options: SshOptions | None) -> str:
    """The address ssh dials for `host`: its config's HostName (with %h expanded), else the name itself."""
    paths = (options or SshOptions()).config_paths(None)
    return asyncssh.SSHClientConnectionOptions(config=paths or None, host=host).config.get("Hostname") or host


class SshTransport:
    """Opens sessions with asyncssh, one connection per session, all in the caller's event loop."""

    def __init__(self, options: SshOptions = SshOptions()):
        self.options = options
        self._options_file: str | None = None
        self._warned_insecure = False
        self._prepared: dict[str, dict] = {}
        self._known_hosts: dict[tuple[str, ...], asyncssh.SSHKnownHosts] = {}
        parsed = [parse_ssh_option(o) for o in options.options]
        for key, _ in parsed:
            if key.lower() not in SSHClientConfig._handlers and key.lower() not in _IGNORED_OK:
                log.warning("--ssh-option %s is not supported by the asyncssh transport and is ignored", key)
        if parsed:  # -o options become the first config file read, so they win like on the ssh command line
            fd, self._options_file = tempfile.mkstemp(prefix="orch-ssh-options-", suffix=".conf")
            with os.fdopen(fd, "w") as f:
                f.writelines(f"{key} {value}\n" for key, value in parsed)

    def connect_kwargs(self, host: str) -> dict:
        """The asyncssh.connect() arguments for `host` (reads the config and key files, nothing else)."""
        opts = self.options
        paths = opts.config_paths(self._options_file)
        # parse the config once here; config=() below makes asyncssh reuse this parse instead of reading again
        base = asyncssh.SSHClientConnectionOptions(config=paths or None, host=host, username=opts.user or (),
                                                   port=opts.port or ())
        config = base.config
        kwargs: dict = {"host": host, "options": base, "config": ()}
        if config.get("Ciphers") is None:
            kwargs["encryption_algs"] = _CIPHERS
        if config.get("ServerAliveInterval") is None:
            kwargs["keepalive_interval"] = KEEPALIVE_INTERVAL_S
        if config.get("ServerAliveCountMax") is None:
            kwargs["keepalive_count_max"] = KEEPALIVE_COUNT_MAX
        if opts.connect_timeout is not None:
            kwargs["connect_timeout"] = opts.connect_timeout
        elif config.get("ConnectTimeout") is None:
            kwargs["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT_S
        known = list(config.get("UserKnownHostsFile") or [str(Path("~/.ssh/known_hosts").expanduser())])
        known += list(config.get("GlobalKnownHostsFile") or [])
        # A missing file means "no host known yet" (as in OpenSSH), not an error; and never an empty value,
        # which asyncssh would replace with ~/.ssh/known_hosts.
        existing = [f for f in known if os.path.exists(f)]
        strict = str(config.get(_STRICT, "yes")).lower()
        if strict in ("no", "off"):  # known_hosts None: asyncssh checks nothing (open() warns once)
            kwargs["known_hosts"] = None
        else:  # yes / ask (nobody to ask) / accept-new: refuse changed keys, even with UserKnownHostsFile none
            kwargs["known_hosts"] = self._read_known_hosts(tuple(existing))
        if strict == "accept-new":
            port = opts.port or int(config.get("Port", 22))
            kwargs["client_factory"] = lambda: _AcceptNewClient(known, host, port)
        return kwargs

    def _read_known_hosts(self, files: tuple[str, ...]) -> asyncssh.SSHKnownHosts:
        """Parsed once per transport: asyncssh would re-read every file for every connection (O(hosts^2))."""
        if files not in self._known_hosts:
            self._known_hosts[files] = asyncssh.read_known_hosts(list(files)) if files else asyncssh.import_known_hosts("")
        return self._known_hosts[files]

    def prepare(self, hosts: Sequence[str]) -> None:
        """Work out every host's connection settings up front (config, keys, known_hosts: CPU only).

        Done before the first connection starts, so that on a busy head this work cannot eat into the
        connect timeout of the connections already under way."""
        for host in hosts:
            self._prepared[host] = self.connect_kwargs(host)

    async def open(self, host: str, argv: Sequence[str]) -> SshSession:
        """Run argv on host (over a connection with keepalives: see connect_kwargs)."""
        kwargs = self._prepared.pop(host, None) or self.connect_kwargs(host)
        if kwargs["known_hosts"] is None and not self._warned_insecure:
            self._warned_insecure = True
            log.warning("host key checking is OFF (StrictHostKeyChecking=no): hosts are not authenticated")
        options = kwargs["options"]
        timeout = kwargs.pop("connect_timeout", None) or options.connect_timeout or DEFAULT_CONNECT_TIMEOUT_S
        if options.tunnel or options.proxy_command:  # asyncssh's own connect through the jump host / proxy
            kwargs["connect_timeout"] = timeout
        else:
            # The connect timeout is for the TCP connect: that is what tells an unreachable host. The handshake
            # and login then get HANDSHAKE_TIMEOUT_S: with hundreds of them queued on one busy head, asyncssh's
            # timeout over the whole would fail reachable hosts for the head's own slowness.
            kwargs["sock"] = await asyncio.wait_for(_tcp_connect(options.host, options.port, options.family), timeout)
            kwargs["connect_timeout"] = max(HANDSHAKE_TIMEOUT_S, timeout)
        conn = await asyncssh.connect(**kwargs)
        try:
            # bytes: an argument that is no UTF-8 (a Latin-1 file name) reaches the host as the bytes it was
            command = shlex.join(argv).encode("utf-8", "surrogateescape")
            proc = await conn.create_process(command, encoding=None)  # output bytes: decoded by session.lines
        except BaseException:
            conn.close()
            raise
        return SshSession(conn, proc)

    async def aclose(self) -> None:
        if self._options_file:
            os.unlink(self._options_file)
            self._options_file = None
