"""Kernel plumbing for sandbox hosts: bridge, network/UTS/mount namespaces, overlays, and taking them down.

    check_host_tools()                          # root + ip/nsenter/mount/sshd, else ConfigError
    conflicts = existing_conflicts(plan)        # names already on this machine -> up refuses
    create_network(plan)                        # one `ip -batch`: bridge, netns, veth pairs
    start_hosts([host_spec(...), ...])          # hostinit.py: namespaces, hostname, mounts, sshd (syscalls)
    kill_namespace_processes(netns_names)       # SIGTERM, then SIGKILL, everything living in those netns
    delete_network(state)                       # netns and bridge (veths go with their netns)

Only names recorded in a sandbox's state are ever touched. Processes are found by the inode of their network
namespace (what `ip netns pids` does), never by name.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from orchestrator.errors import ConfigError, RemoteError
from orchestrator.sandbox.plan import OVERLAY_DIRS, SandboxPlan
from orchestrator.sandbox.state import HostState, SandboxState

log = logging.getLogger("orchestrator.sandbox.netns")

NETNS_DIR = Path("/run/netns")
REQUIRED_TOOLS = {"ip": "iproute2", "nsenter": "util-linux", "mount": "mount", "/usr/sbin/sshd": "openssh-server"}
HOSTINIT = Path(__file__).with_name("hostinit.py")
MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def check_host_tools() -> None:
    if os.geteuid() != 0:
        raise ConfigError("user", f"uid {os.geteuid()}",
                          "the sandbox needs root (network namespaces, a bridge and mounts); run it with sudo or as root")
    for tool, package in REQUIRED_TOOLS.items():
        if not shutil.which(tool):
            raise ConfigError("tool", tool, f"install the Debian package {package} (see requirements/apt.txt)")


def _ip_json(*args: str) -> list[dict]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


def used_subnets() -> set[str]:
    """IPv4 networks already in use in the root namespace (addresses and routes)."""
    nets = {r["dst"] for r in _ip_json("-4", "route") if r.get("dst") not in (None, "default")}
    for link in _ip_json("-4", "addr"):
        nets |= {f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])}
    return nets


def existing_conflicts(plan: SandboxPlan) -> list[str]:
    """Names `plan` would create that already exist on this machine."""
    links = {link["ifname"] for link in _ip_json("link")}
    found = [f"bridge {plan.bridge}"] if plan.bridge in links else []
    found += [f"link {h.veth}" for h in plan.hosts if h.veth in links]
    found += [f"netns {h.netns}" for h in plan.hosts if (NETNS_DIR / h.netns).exists()]
    return found


def _ip_batch(lines: list[str], *, force: bool = False) -> subprocess.CompletedProcess:
    argv = ["ip", *(["-force"] if force else []), "-batch", "-"]
    return subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True, text=True)


def create_network(plan: SandboxPlan) -> None:
    prefixlen = plan.subnet.split("/")[1]
    lines = [f"link add {plan.bridge} type bridge", f"addr add {plan.head_ip}/{prefixlen} dev {plan.bridge}",
             f"link set {plan.bridge} up"]
    for h in plan.hosts:
        lines += [f"netns add {h.netns}", f"link add {h.veth} type veth peer name eth0 netns {h.netns}",
                  f"link set {h.veth} master {plan.bridge} up"]
    out = _ip_batch(lines)
    if out.returncode:
        raise RemoteError(f"sandbox network set-up failed: {out.stderr.strip()}")


def make_private_mount(directory: Path) -> None:
    """Persistent mount-namespace files must sit on a private mount (else the kernel refuses the bind)."""
    directory.mkdir(parents=True, exist_ok=True)
    if not is_mountpoint(directory):
        subprocess.run(["mount", "--bind", str(directory), str(directory)], check=True)
        subprocess.run(["mount", "--make-private", str(directory)], check=True)


def is_mountpoint(path: Path) -> bool:
    return str(path) in mounts_under(path)


def mounts_under(path: Path) -> list[str]:
    """Mount points in this mount namespace at or below `path` (from /proc/self/mountinfo)."""
    prefix = str(path).rstrip("/")
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4].encode().decode("unicode_escape")
        if target == prefix or target.startswith(prefix + "/"):
            found.append(target)
    return found


def host_spec(state: SandboxState, host: HostState, *, sshd_config: Path) -> dict:
    """What hostinit.py does for one host: namespaces, hostname, address, mounts, then sshd."""
    hdir = Path(host.dir)
    prefixlen = state.subnet.split("/")[1]
    return {
        "name": host.name, "netns": str(NETNS_DIR / host.netns), "uts_file": host.uts_ns, "mnt_file": host.mnt_ns,
        "ip_batch": f"addr add {host.ip}/{prefixlen} dev eth0\nlink set lo up\nlink set eth0 up\n",
        # a few whole directories of namespace files (this and every other sandbox), whatever their size
        "drop_mounts": [str(NETNS_DIR), *sorted(str(p) for p in Path(state.dir).parent.glob("*/ns"))],
        "overlays": [[d, str(hdir / "ovl" / f"up{d.replace('/', '_')}"), str(hdir / "ovl" / f"wk{d.replace('/', '_')}")]
                     for d in OVERLAY_DIRS],
        "root_dir": str(hdir / "root"),
        "shares": [[share, str(hdir / "share" / str(i))] for i, share in enumerate(state.shares)],
        "sshd_argv": ["/usr/sbin/sshd", "-f", str(sshd_config), "-E", str(hdir / "sshd.log")],
    }


def start_hosts(specs: list[dict], *, workers: int = 4) -> dict[str, str | None]:
    """Run hostinit.py in `workers` processes side by side; {host: None if up, else the error}."""
    chunks = [c for c in (specs[i::workers] for i in range(workers)) if c]

    def run(chunk: list[dict]) -> dict[str, str | None]:
        out = subprocess.run([sys.executable, "-I", "-S", str(HOSTINIT)], input=json.dumps(chunk),
                             capture_output=True, text=True)
        try:
            return json.loads(out.stdout)
        except ValueError:
            return {s["name"]: f"hostinit failed (exit {out.returncode}): {out.stderr.strip()[-500:]}" for s in chunk}

    results: dict[str, str | None] = {}
    with ThreadPoolExecutor(max_workers=len(chunks) or 1) as pool:
        for part in pool.map(run, chunks):
            results.update(part)
    return results


def prepare_host_dirs(state: SandboxState, host: HostState, etc_files: dict[str, str]) -> None:
    """Directories the setup script mounts, and files placed in the /etc overlay's upper dir (the host's own)."""
    hdir = Path(host.dir)
    for d in OVERLAY_DIRS:
        for kind in ("up", "wk"):
            (hdir / "ovl" / f"{kind}{d.replace('/', '_')}").mkdir(parents=True, exist_ok=True)
    (hdir / "root").mkdir(mode=0o700, exist_ok=True)
    for i, _ in enumerate(state.shares):
        (hdir / "share" / str(i)).mkdir(parents=True, exist_ok=True)
    etc_upper = hdir / "ovl" / "up_etc"
    for name, text in etc_files.items():
        (etc_upper / name).write_text(text)
    Path(host.uts_ns).touch()
    Path(host.mnt_ns).touch()


def netns_pids(netns_names: list[str]) -> dict[str, list[int]]:
    """{netns: [pid, ...]} for every process whose network namespace is one of `netns_names`."""
    by_inode = {}
    for name in netns_names:
        try:
            st = os.stat(NETNS_DIR / name)
        except FileNotFoundError:
            continue
        by_inode[(st.st_dev, st.st_ino)] = name
    found: dict[str, list[int]] = {name: [] for name in by_inode.values()}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:  # exited, or a zombie
            continue
        name = by_inode.get((st.st_dev, st.st_ino))
        if name is not None:
            found[name].append(int(entry.name))
    return found


def kill_namespace_processes(netns_names: list[str], *, grace: float = 2.0, deadline: float = 10.0) -> list[int]:
    """SIGTERM every process in these namespaces, SIGKILL what is left after `grace`; returns survivors."""
    sig, start = signal.SIGTERM, time.monotonic()
    while True:
        pids = [p for ps in netns_pids(netns_names).values() for p in ps if p != os.getpid()]
        if not pids:
            return []
        elapsed = time.monotonic() - start
        if elapsed > deadline:
            return pids
        if elapsed > grace:
            sig = signal.SIGKILL
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def unmount_files(paths: list[str]) -> None:
    """Lazy unmount, in threads: dropping the last reference to a namespace waits for an RCU grace period in the
    kernel, and those waits overlap when the umounts run side by side (256 hosts: ~10x faster than in a row)."""
    def one(p: str) -> None:
        if _libc.umount2(p.encode(), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOENT):  # not a mount point / already gone
                log.warning("umount %s: %s", p, os.strerror(err))

    with ThreadPoolExecutor(max_workers=min(32, max(1, len(paths)))) as pool:
        list(pool.map(one, paths))


def delete_network(state: SandboxState) -> None:
    lines = [f"netns del {h.netns}" for h in state.hosts if (NETNS_DIR / h.netns).exists()]
    links = {link["ifname"] for link in _ip_json("link")}
    lines += [f"link del {h.veth}" for h in state.hosts if h.veth in links]
    if state.bridge in links:
        lines.append(f"link del {state.bridge}")
    if lines:
        out = _ip_batch(lines, force=True)
        # a veth may vanish between listing and deleting (its netns went first): that is the goal, not an error
        errors = [e for e in out.stderr.splitlines() if not e.startswith(("Cannot find device", "Command failed"))]
        if errors:
            log.warning("sandbox %s: network clean-up: %s", state.name, "; ".join(errors))


def set_link(veth: str, up: bool) -> None:
    subprocess.run(["ip", "link", "set", veth, "up" if up else "down"], check=True, capture_output=True)
