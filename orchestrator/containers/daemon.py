"""One docker daemon per sandbox host, reachable the way a real node's daemon is (its standard socket).

    from orchestrator.containers.daemon import start_docker
    sb = Sandbox.up("demo", nodes=4)
    start_docker(sb)                      # dockerd in every host; /run/docker.sock inside each host
    sb.exec("node2", ["docker", "info"])  # the host's own daemon (its /run is private)
    docker_host(sb, "node2")              # 'unix://.../hosts/node2/docker.sock': DOCKER_HOST on the head
    sb.down()                             # stops them by PID like every recorded daemon

Each host has a private /run, so the standard socket /run/docker.sock (and dockerd's own containerd under
/run/docker) is per host with no DOCKER_HOST needed inside it; a second socket in the host's scratch dir
lets a user on the head reach it with DOCKER_HOST=docker_host(sb, host). The data root lives in the host's scratch dir on the
head's disk (not on the /var overlay, where overlay2 cannot stack). Rootful with `--iptables=false
--bridge=none`: a rootful daemon with its default networking would set the FORWARD policy to DROP and cut
the sandbox bridge; containers use `--network host`, the way training containers run anyway.

With disk_gb, each host's data root is an ext4 of its own, made with a journal like a real node's disk (a
sparse file, loop-mounted inside the host; gone with the host's mount namespace). This machine's root ext4
has no journal, and ext4 without one avoids reusing inodes freed in the last minutes, scanning past each of
them on every file it creates: loading an image right after removing one (25k files) costs about twice the
CPU there. Benchmarks use disk_gb; tests, which load tiny images, keep the shared default.

    start_docker(sb, disk_gb=8)           # each data root on the host's own journaled ext4 (a node's own disk)
    start_docker(sb, rootless=True)       # dockerd-rootless.sh as user `orchdock` in each host instead
    rootless_socket(sb, "node2")          # '/run/user/UID/docker.sock' inside the host (images load --docker-socket)

Rootless here runs rootlesskit with the host network (DOCKERD_ROOTLESS_ROOTLESSKIT_NET=host, port driver
none: /dev/net/tun is not usable by users on this kind of machine), `--ip-forward=false`. It loads, lists and
removes images; `docker run --network host` is refused by it on this machine (setns into the host network from
the user namespace: operation not permitted), so container launches in the sandbox use the rootful daemon. On
real nodes the provisioning roles set rootless up with slirp4netns / host networking (containers/README.md).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from orchestrator.errors import ConfigError, RemoteError

log = logging.getLogger("orchestrator.containers.daemon")

DAEMON_NAME = "dockerd"
SOCKET = "/run/docker.sock"
ROOTLESS_USER = "orchdock"
ROOTLESS_SCRIPT = "/usr/share/docker.io/contrib/dockerd-rootless.sh"
SUBID_RANGE = "200000:65536"


def dockerd_argv(data_root: str | Path, head_socket: str | Path | None = None) -> list[str]:
    """The daemon's command line inside one host (pure); head_socket: a second socket the head can reach."""
    extra = ["-H", f"unix://{head_socket}"] if head_socket else []
    return ["dockerd", "--data-root", str(data_root), "-H", f"unix://{SOCKET}", *extra, "--iptables=false",
            "--ip6tables=false", "--bridge=none", "--storage-driver", "overlay2", "--log-level", "warn"]


def data_root(sb, host: str) -> Path:
    return sb.host_dir(host) / "docker"


def docker_host(sb, host: str) -> str:
    """DOCKER_HOST for a user on the head to talk to `host`'s daemon (a second socket in the host's dir)."""
    return f"unix://{sb.host_dir(host) / 'docker.sock'}"


def start_docker(sb, hosts: list[str] | None = None, *, timeout: float = 60.0, rootless: bool = False,
                 data_roots: dict[str, Path] | None = None, disk_gb: int | None = None) -> dict[str, float]:
    """Start dockerd in each host (all by default) and wait until every one answers; seconds to ready per host.

    data_roots: host -> data root instead of the default (a tiny tmpfs to simulate a full disk).
    disk_gb: the default data root on a journaled ext4 of this size of the host's own (node_disk)."""
    if shutil.which("dockerd") is None or (rootless and not Path(ROOTLESS_SCRIPT).exists()):
        raise ConfigError("dockerd", "not found", "install the docker engine (apt-get install docker.io rootlesskit uidmap)")
    hosts = list(hosts or sb.hosts)
    started, sockets = {}, {}
    for host in hosts:
        root = (data_roots or {}).get(host) or (node_disk(sb, host, disk_gb) if disk_gb else data_root(sb, host))
        root.mkdir(parents=True, exist_ok=True)
        if rootless:
            sockets[host] = _start_rootless(sb, host, root)
        else:
            sockets[host] = SOCKET
            sb.start_daemon(host, dockerd_argv(root, sb.host_dir(host) / "docker.sock"), name=DAEMON_NAME)
        started[host] = time.monotonic()
    with ThreadPoolExecutor(max_workers=min(16, len(hosts) or 1)) as pool:
        ready = dict(zip(hosts, pool.map(lambda h: _wait_ready(sb, h, started[h], timeout, sockets[h]), hosts)))
    failed = [h for h, t in ready.items() if t is None]
    if failed:
        raise RemoteError(f"docker daemon did not answer in {timeout:g} s on {', '.join(failed)};"
                          f" see {sb.state.dir}/daemons/<host>-{DAEMON_NAME}.log")
    return ready


def node_disk(sb, host: str, gb: int) -> Path:
    """The docker data root on `host`'s own journaled ext4 (made once, kept across daemon restarts)."""
    image, mount = sb.host_dir(host) / "disk.img", sb.host_dir(host) / "disk"
    if sb.exec(host, ["mountpoint", "-q", str(mount)]).returncode != 0:
        mount.mkdir(parents=True, exist_ok=True)
        with open(image, "wb") as f:
            f.truncate(gb << 30)  # sparse: takes only what docker writes
        # inode tables and journal written now, not by ext4lazyinit in the background of a measurement
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(image)],
                       check=True, capture_output=True)
        sb.exec(host, ["mount", "-o", "loop", str(image), str(mount)], check=True)
    return mount / "docker"  # made by dockerd inside the host: the head does not see the host's mounts


def _start_rootless(sb, host: str, root: Path) -> str:
    """A user of this host only (its /etc is copy-on-write) runs dockerd-rootless.sh; returns its socket."""
    home = sb.host_dir(host) / ROOTLESS_USER
    if sb.exec(host, ["id", "-u", ROOTLESS_USER]).returncode != 0:
        sb.exec(host, ["useradd", "-M", "-d", str(home), "-s", "/bin/sh", ROOTLESS_USER], check=True)
        sb.exec(host, ["sh", "-c", f'for f in /etc/subuid /etc/subgid; do echo "$1:{SUBID_RANGE}" >> $f; done',
                       "sh", ROOTLESS_USER], check=True)
    uid = int(sb.exec(host, ["id", "-u", ROOTLESS_USER], check=True).stdout)
    runtime = f"/run/user/{uid}"
    for path in (home, root):
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, uid, uid)
    sb.exec(host, ["install", "-d", "-m", "700", "-o", str(uid), "-g", str(uid), runtime], check=True)
    argv = ["runuser", "-u", ROOTLESS_USER, "--", "env", "-i", f"HOME={home}", f"USER={ROOTLESS_USER}",
            f"XDG_RUNTIME_DIR={runtime}", "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "DOCKERD_ROOTLESS_ROOTLESSKIT_NET=host", "DOCKERD_ROOTLESS_ROOTLESSKIT_PORT_DRIVER=none", ROOTLESS_SCRIPT,
            "--data-root", str(root), "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--bridge=none",
            "--log-level", "warn"]
    sb.start_daemon(host, argv, name=DAEMON_NAME)
    return f"{runtime}/docker.sock"


def rootless_socket(sb, host: str) -> str:
    uid = int(sb.exec(host, ["id", "-u", ROOTLESS_USER], check=True).stdout)
    return f"/run/user/{uid}/docker.sock"


def _wait_ready(sb, host: str, t0: float, timeout: float, socket: str = SOCKET) -> float | None:
    while time.monotonic() - t0 < timeout:
        done = sb.exec(host, ["docker", "-H", f"unix://{socket}", "version", "--format", "{{.Server.Version}}"])
        if done.returncode == 0:
            return round(time.monotonic() - t0, 3)
        time.sleep(0.2)
    return None


def stop_docker(sb, host: str) -> bool:
    """Stop one host's daemon (fault injection: an unreachable daemon); `down` stops the others."""
    stopped = sb.stop_daemon(DAEMON_NAME, host, timeout=20)
    subprocess.run(sb.nsenter_argv(host, ["rm", "-f", SOCKET]), check=False)
    return stopped
