"""A local package mirror for hosts without a route out: a flat apt repository plus a wheel directory,
served over HTTP from the head.

    from orchestrator.provision.localrepo import build_mirror, plan_debs, serve
    plan_debs(["docker.io", "rdma-core"])       # what the head would install: ["containerd=1.6.20~ds1-1+deb12u3", ...]
    build_mirror(".cache/install/repo", roles_dir="playbooks/roles", roles=["common", "rdma"],
                 wheels=["nvidia-nccl-cu12==2.32.3"])   # apt-get download (cached), pip download, Packages + Release
    server = serve(".cache/install/repo", bind="10.80.255.254")   # python -m http.server; server.url, server.stop()
    # hosts: common_apt_mirror_url=server.url, common_apt_mirror_trusted=true (see playbooks/roles/common)

The hosts start from the head's own package state (their /usr, /var are copy-on-write views of the head's, or
the same release), so "what the head would install" is exactly what the mirror must hold.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from urllib.parse import quote

from orchestrator.errors import ConfigError, RemoteError

log = logging.getLogger("orchestrator.provision.localrepo")

__all__ = ["role_packages", "parse_simulation", "plan_debs", "fetch_debs", "fetch_wheels", "build_flat_repo",
           "build_mirror", "serve", "RepoServer"]

def role_packages(roles_dir: str | os.PathLike, roles: list[str], family: str = "Debian") -> list[str]:
    """The packages the roles install on `family` (their vars/<family>.yml `*_packages` lists): what a mirror needs."""
    import yaml

    packages = []
    for role in roles:
        path = Path(roles_dir) / role / "vars" / f"{family}.yml"
        if path.exists():
            for key, value in (yaml.safe_load(path.read_text()) or {}).items():
                if key.endswith("_packages") and isinstance(value, list):
                    packages += [p for p in value if "{{" not in p]
    return packages


_INST = re.compile(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) ")


def parse_simulation(text: str) -> list[str]:
    """`apt-get install -s` output -> ["name=version", ...] for every package apt would (up|down)grade or install."""
    return [f"{m.group(1)}={m.group(2)}" for line in text.splitlines() if (m := _INST.match(line))]


def plan_debs(packages: list[str]) -> list[str]:
    """Every package (with dependencies) the head would need to install `packages`, as name=version."""
    proc = subprocess.run(["apt-get", "install", "-s", "--no-install-recommends", *packages],
                          capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
    if proc.returncode:
        raise ConfigError("packages", " ".join(packages), f"apt cannot resolve them: {proc.stderr.strip()[-300:]}")
    return parse_simulation(proc.stdout)


def _deb_name(spec: str) -> str:
    """name=1:2.3-1 -> the file name prefix apt-get download writes: name_1%3a2.3-1_"""
    name, _, version = spec.partition("=")
    return f"{name}_{quote(version, safe='+~.-').replace('%3A', '%3a')}_"


def fetch_debs(specs: list[str], repo_dir: str | os.PathLike) -> list[str]:
    """apt-get download the specs not yet cached in repo_dir; returns the ones downloaded."""
    repo = Path(repo_dir)
    repo.mkdir(parents=True, exist_ok=True)
    cached = {p.name for p in repo.glob("*.deb")}
    missing = [s for s in specs if not any(name.startswith(_deb_name(s)) for name in cached)]
    if missing:
        log.info("downloading %d packages into %s", len(missing), repo)
        proc = subprocess.run(["apt-get", "download", *missing], cwd=repo, capture_output=True, text=True)
        if proc.returncode:
            raise RemoteError(f"apt-get download failed: {proc.stderr.strip()[-500:]}")
    return missing


def fetch_wheels(requirements: list[str], wheel_dir: str | os.PathLike) -> None:
    """pip download each requirement (no dependencies) into wheel_dir unless a wheel of that name-version is there."""
    target = Path(wheel_dir)
    target.mkdir(parents=True, exist_ok=True)
    for req in requirements:
        name, _, version = req.partition("==")
        if not list(target.glob(f"{name.replace('-', '_')}-{version or ''}*.whl")):
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(target), req], check=True)


def build_flat_repo(repo_dir: str | os.PathLike) -> Path:
    """Write Packages, Packages.gz and a Release (with hashes) for a flat repo: `deb [trusted=yes] URL ./`."""
    repo = Path(repo_dir)
    packages = subprocess.run(["dpkg-scanpackages", "--multiversion", "."], cwd=repo, capture_output=True, check=True).stdout
    (repo / "Packages").write_bytes(packages)
    (repo / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
    lines = ["Origin: orchestrator", "Label: orchestrator local mirror", "Suite: local", "Codename: local",
             f"Date: {formatdate(usegmt=True)}", "SHA256:"]
    for name in ("Packages", "Packages.gz"):
        data = (repo / name).read_bytes()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {name}")
    (repo / "Release").write_text("\n".join(lines) + "\n")
    return repo


def build_mirror(repo_dir: str | os.PathLike, *, roles_dir: str | os.PathLike, roles: list[str],
                 wheels: list[str] = ()) -> Path:
    """Everything the roles install (with dependencies) plus `wheels` (pip requirements) -> a flat repo in repo_dir."""
    fetch_debs(plan_debs(role_packages(roles_dir, roles)), repo_dir)
    if wheels:
        fetch_wheels(list(wheels), Path(repo_dir) / "wheels")
    return build_flat_repo(repo_dir)


@dataclass
class RepoServer:
    """A running `python -m http.server`; stop() ends it by PID."""

    process: subprocess.Popen
    url: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _free_port(bind: str) -> int:
    with socket.socket() as s:
        s.bind((bind, 0))
        return s.getsockname()[1]


def serve(directory: str | os.PathLike, *, bind: str, port: int | None = None, timeout: float = 10.0) -> RepoServer:
    """Serve `directory` on http://bind:port/ (a free port when None) until stop(); waits until it answers."""
    port = port or _free_port(bind)
    process = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", bind, "--directory", os.fspath(directory),
                                str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    server = RepoServer(process, f"http://{bind}:{port}/")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RemoteError(f"http.server on {bind}:{port} exited with {process.returncode}")
        try:
            with socket.create_connection((bind, port), timeout=0.5):
                return server
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise RemoteError(f"http.server on {bind}:{port} did not answer within {timeout:g} s")
