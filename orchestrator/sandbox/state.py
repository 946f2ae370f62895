"""What a sandbox created, recorded on disk so `down` removes exactly that (and another process can load it).

    state = SandboxState.load(state_dir("default"))      # raises ConfigError when there is none
    state.host("node3").ip, state.daemons
    state.save()                                          # atomic rewrite of <state dir>/state.json

Layout of a state dir (default /tmp/orchestrator-sandbox/<name>, root: $ORCH_SANDBOX_ROOT):
    state.json          this record
    ssh/                client key, authorized_keys, known_hosts, config
    ns/                 persistent UTS and mount namespace files (a private bind mount)
    hosts/<host>/       host key, sshd_config, logs, private /root, overlay upper dirs
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from orchestrator.errors import ConfigError

STATE_VERSION = 1


def sandbox_root() -> Path:
    return Path(os.environ.get("ORCH_SANDBOX_ROOT", "/tmp/orchestrator-sandbox"))


def state_dir(name: str) -> Path:
    return sandbox_root() / name


@contextlib.contextmanager
def global_lock():
    """Serializes subnet/bridge choice between concurrent `up`s (two pytest processes)."""
    root = sandbox_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass(slots=True)
class HostState:
    name: str
    ip: str
    netns: str
    veth: str
    dir: str
    uts_ns: str
    mnt_ns: str
    sshd_pid: int | None = None

    def nsenter_args(self) -> list[str]:
        """Options for nsenter(1) to enter this host: network, hostname and mounts (not `ip netns exec`, which
        remounts /sys and loses the cgroup mounts that slurmd and dockerd need)."""
        return [f"--net=/run/netns/{self.netns}", f"--uts={self.uts_ns}", f"--mount={self.mnt_ns}"]


@dataclass(slots=True)
class DaemonState:
    host: str | None
    """Host it runs in, or None for the head (root namespaces)."""
    name: str
    pid: int
    starttime: int
    """/proc/<pid>/stat start time: a recycled PID is never signalled."""
    argv: list[str]
    log: str | None = None
    pidfile: str | None = None


@dataclass(slots=True)
class SandboxState:
    name: str
    dir: str
    prefix: str
    bridge: str
    subnet: str
    head_ip: str
    hosts: list[HostState]
    shares: list[str] = field(default_factory=list)
    daemons: list[DaemonState] = field(default_factory=list)
    status: str = "creating"
    """creating -> up; `down` deletes the record last."""
    owner_pid: int = 0
    version: int = STATE_VERSION

    @property
    def path(self) -> Path:
        return Path(self.dir) / "state.json"

    @property
    def ns_dir(self) -> Path:
        return Path(self.dir) / "ns"

    @property
    def ssh_dir(self) -> Path:
        return Path(self.dir) / "ssh"

    def host(self, name: str) -> HostState:
        for h in self.hosts:
            if h.name == name:
                return h
        raise ConfigError("host", name, f"sandbox {self.name!r} has {self.hosts[0].name}..{self.hosts[-1].name}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> SandboxState:
        raw = json.loads(text)
        if raw.get("version") != STATE_VERSION:
            raise ConfigError("state.json version", raw.get("version"), f"this orchestrator reads version {STATE_VERSION}")
        raw["hosts"] = [HostState(**h) for h in raw["hosts"]]
        raw["daemons"] = [DaemonState(**d) for d in raw.get("daemons", [])]
        return cls(**raw)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, directory: Path) -> SandboxState:
        path = Path(directory) / "state.json"
        try:
            return cls.from_json(path.read_text())
        except FileNotFoundError:
            raise ConfigError("--name", directory.name, f"no sandbox recorded at {path}; start one with `orchestrator sandbox up`") from None


def list_sandboxes() -> list[str]:
    root = sandbox_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "state.json").is_file())
