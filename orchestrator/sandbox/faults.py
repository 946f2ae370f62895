"""Degrade one sandbox host (a slow link, a slow CPU, a full disk), for health-gate tests and benchmarks.

    with ExitStack() as undo:
        undo.callback(slow_link(sb, "node3", rate="10mbit"))       # tc tbf on the head side of its cable
        undo.callback(cap_cpu(sb, "node5", quota=0.2))             # all it runs (and will start) in a CFS quota
        undo.callback(fill_disk(sb, "node7", "/tmp/job"))          # a full 1 MiB tmpfs over that path, there only
        ...                                                        # each call returns its undo

Each function returns the function that undoes it; nothing outlives the sandbox's processes except a cgroup
(removed by the undo). The link limit shapes what the bridge sends to the host (one direction is enough to slow
every collective); the CPU quota holds the host's sshd and every process running there (a job slows down
mid-run), and every session started afterwards inherits it; the tmpfs lives in the host's own mount
namespace, so the head and the other hosts still see the real directory.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.errors import ConfigError

__all__ = ["slow_link", "cap_cpu", "fill_disk"]

Undo = Callable[[], None]
PERIOD_US = 100_000


def slow_link(sb, host: str, *, rate: str = "10mbit") -> Undo:
    """Rate-limit the host's link (token bucket: this kernel has no netem)."""
    veth = sb.state.host(host).veth
    subprocess.run(["tc", "qdisc", "add", "dev", veth, "root", "tbf", "rate", rate, "burst", "32kbit",
                    "latency", "400ms"], check=True, capture_output=True)
    return lambda: subprocess.run(["tc", "qdisc", "del", "dev", veth, "root"], capture_output=True)


def _cpu_root() -> tuple[Path, bool]:
    """(where cpu cgroups go, cgroup v2?)."""
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return Path("/sys/fs/cgroup"), True
    return Path("/sys/fs/cgroup/cpu"), False


def _cgroup_of(pid: int, v2: bool) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (v2 and controllers == "") or (not v2 and "cpu" in controllers.split(",")):
            return path
    return "/"


def cap_cpu(sb, host: str, *, quota: float = 0.2) -> Undo:
    """Give the host `quota` of one core: its sshd, then every other process running there, move into a cgroup
    with a CFS quota (sessions started later inherit it)."""
    sshd = sb.state.host(host).sshd_pid
    if not sshd:
        raise ConfigError("host", host, "has no recorded sshd to put under a CPU quota")
    root, v2 = _cpu_root()
    home = root / _cgroup_of(sshd, v2).lstrip("/")
    group = root / f"orch-fault-{sb.name}-{host}"
    group.mkdir(exist_ok=True)
    if v2:
        (root / "cgroup.subtree_control").write_text("+cpu")
        (group / "cpu.max").write_text(f"{int(quota * PERIOD_US)} {PERIOD_US}")
    else:
        (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(int(quota * PERIOD_US)))
    for pid in [sshd, *(p for p in sb.pids(host) if p != sshd)]:  # sshd first: what it forks meanwhile follows
        try:
            (group / "cgroup.procs").write_text(str(pid))
        except OSError:  # exited meanwhile
            if pid == sshd:
                raise

    def undo() -> None:
        for _ in range(100):  # sessions started under the quota may take a moment to exit
            for pid in (group / "cgroup.procs").read_text().split():
                try:
                    (home / "cgroup.procs").write_text(pid)
                except OSError:  # exited meanwhile
                    pass
            try:
                group.rmdir()
                return
            except OSError:
                time.sleep(0.05)

    return undo


def fill_disk(sb, host: str, path: str, *, size: str = "1m") -> Undo:
    """Mount a tmpfs of `size` over `path` inside the host and fill it: writes there fail with ENOSPC."""
    script = ('mkdir -p "$1" && mount -t tmpfs -o size="$2" orch-fault "$1" && '
              '{ dd if=/dev/zero of="$1/fill" bs=64k 2>/dev/null; true; }')  # dd ends with ENOSPC: full
    sb.exec(host, ["sh", "-c", script, "sh", path, size], check=True)
    return lambda: sb.exec(host, ["umount", path])
