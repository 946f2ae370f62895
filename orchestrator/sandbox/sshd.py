"""SSH material for sandbox hosts: keys (generated in-process), known_hosts, client config, readiness probe.

    pub = write_keypair(Path("ssh/id_ed25519"), comment="sandbox-client")   # -> "ssh-ed25519 AAAA..."
    write_ssh_files(state)              # client key, authorized_keys, per-host host keys and sshd_config,
                                        # known_hosts, ssh config; returns {host: sshd_config path}
    wait_for_sshd(state, timeout=30)    # every host answers with an SSH banner, else RemoteError

Keys come from the `cryptography` library (a dependency of asyncssh): 256 host keys take milliseconds, where 256
ssh-keygen processes take seconds on two cores.
"""

from __future__ import annotations

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.errors import RemoteError
from orchestrator.sandbox.plan import SandboxPlan, render_known_hosts, render_ssh_config, render_sshd_config
from orchestrator.sandbox.state import SandboxState


def write_keypair(path: Path, *, comment: str) -> str:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    Path(f"{path}.pub").write_text(f"{public} {comment}\n")
    return public


def ssh_paths(state: SandboxState) -> dict[str, Path]:
    d = state.ssh_dir
    return {"identity": d / "id_ed25519", "authorized_keys": d / "authorized_keys", "known_hosts": d / "known_hosts",
            "config": d / "config"}


def write_ssh_files(state: SandboxState, plan: SandboxPlan) -> dict[str, Path]:
    paths = ssh_paths(state)
    state.ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    client_pub = write_keypair(paths["identity"], comment=f"orchestrator-sandbox-{state.name}")
    paths["authorized_keys"].write_text(client_pub + "\n")
    os.chmod(paths["authorized_keys"], 0o600)
    known, configs = [], {}
    for host in state.hosts:
        hdir = Path(host.dir)
        hdir.mkdir(parents=True, exist_ok=True)
        host_key = hdir / "ssh_host_ed25519_key"
        known.append((host.name, host.ip, write_keypair(host_key, comment=host.name)))
        configs[host.name] = hdir / "sshd_config"
        configs[host.name].write_text(render_sshd_config(ip=host.ip, host_key=str(host_key), pidfile=str(hdir / "sshd.pid"),
                                                         authorized_keys=str(paths["authorized_keys"]), hostname=host.name))
    paths["known_hosts"].write_text(render_known_hosts(known))
    paths["config"].write_text(render_ssh_config(plan, identity=str(paths["identity"]),
                                                 known_hosts=str(paths["known_hosts"])))
    return configs


def _banner(ip: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((ip, 22), timeout=1.0) as s:
                s.settimeout(2.0)
                if s.recv(8).startswith(b"SSH-"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def wait_for_sshd(state: SandboxState, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with ThreadPoolExecutor(max_workers=min(64, len(state.hosts))) as pool:
        ready = list(pool.map(lambda h: _banner(h.ip, deadline), state.hosts))
    missing = [h.name for h, ok in zip(state.hosts, ready) if not ok]
    if missing:
        raise RemoteError(f"sandbox {state.name}: sshd did not answer within {timeout:.0f} s on {', '.join(missing)}"
                          f" (logs: {state.dir}/hosts/<host>/sshd.log)")


def read_pidfile(path: Path, *, timeout: float = 5.0) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return int(path.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            time.sleep(0.02)
    return None
