"""Image distribution: `orchestrator images load` (relay) vs naive `ssh HOST docker load < img.tar` loops.

    sudo .venv/bin/python bench/images.py                       # ~1.3 GB image (python + the venv), 8 hosts
    sudo .venv/bin/python bench/images.py --hosts 8 --uplink-mbit 1000 --runs 1 --pause-while /path/QUIET

Starts its own sandbox (N hosts, one dockerd each; removed at the end), builds the image tar with
orchestrator.containers.image (python3 + libraries + this venv with torch: the CPU test image), and optionally
shapes the head's uplink with a tbf qdisc on the sandbox bridge (the head's port; node-to-node traffic crosses
the bridge without passing it), as a real head's single NIC would be. Then, with the image removed from every
node before each measurement:

  one host     `ssh node1 docker load < img.tar` (the unit every other time is divided by)
  relay        `orchestrator images load img.tar --hosts node[1-N]` (chain: the head sends the tar once)
  parallel     N x `ssh nodeI docker load < img.tar` at once from the head
  sequential   for each host: `ssh nodeI docker load < img.tar`
  floor        N x `docker load -i img.tar` at once, each inside its node from the local disk (no network):
               what N loads cost on this machine's shared cores and disk whatever the distribution

Prints seconds, the ratio to one host and the machine's CPU use (busy core-seconds, every process's) per
method, and how busy the cores were with others' work just before each measurement. Target:
relay <= 2x one host. All hosts of the sandbox share this machine's cores and disk, so read the
relay against the floor (docs/benchmarks/images.md).

--node-cpus F gives every node a CPU budget of its own (F cores; a cgroup per node with a CFS quota, holding its
sshd and dockerd and so everything they start), the same whether it loads alone or beside the others, as N
separate machines of equal size would have: then the ratios measure the distribution, not N nodes taking
turns on this machine's cores. Keep N x F below the core count (the head needs its share too).

Each node's docker data root is an ext4 of its own with a journal, as on a real node's disk (--node-disk-gb,
containers/daemon.py: node_disk). On this machine's shared root ext4, which has no journal, ext4 scans past
every inode freed in the last 6 minutes (while its inode table block is dirty) on each file it creates, so
a load that follows the removal of the image (25k files) costs up to twice the CPU; with --node-disk-gb 0
give --settle 400 to measure there without that.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def clear(sb, image_id: str) -> None:
    for h in sb.hosts:
        sb.exec(h, ["docker", "image", "rm", "-f", image_id])


def ssh_load(cfg: Path, host: str, tar: str) -> subprocess.Popen:
    with open(tar, "rb") as f:
        return subprocess.Popen(["ssh", "-F", str(cfg), host, "docker", "load", "-q"], stdin=f,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def busy_seconds() -> float:
    """Core-seconds this machine spent not idle (all processes: sshd, relays, dockerd), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def timed(fn) -> tuple[float, float]:
    t, busy = time.monotonic(), busy_seconds()
    fn()
    return time.monotonic() - t, busy_seconds() - busy


def local_load(sb, host: str, tar: str) -> subprocess.Popen:
    return subprocess.Popen(sb.nsenter_argv(host, ["docker", "load", "-q", "-i", tar]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_quiet(flag: str | None) -> float:
    """Wait while `flag` exists; then the cores busy over 5 s with nothing of ours running (other users' work:
    the load average would still count our previous measurement)."""
    while flag and os.path.exists(flag):
        time.sleep(5)
    busy = busy_seconds()
    time.sleep(5)
    return (busy_seconds() - busy) / 5


def cap_cpus(sb, cpus: float) -> list[Path]:
    """Put each node's processes (sshd, dockerd, containerd: what they start inherits it) into a cgroup of its
    own with a quota of `cpus` cores. cgroup v2 (cpu.max) or v1's cpu controller (cfs quota). Returns the cgroups."""
    period = 100_000
    v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    root = Path("/sys/fs/cgroup" if v2 else "/sys/fs/cgroup/cpu") / f"orch-{sb.name}"
    root.mkdir(exist_ok=True)
    if v2:
        (root.parent / "cgroup.subtree_control").write_text("+cpu")
        (root / "cgroup.subtree_control").write_text("+cpu")
    groups = []
    for host in sb.hosts:
        group = root / host
        group.mkdir(exist_ok=True)
        if v2:
            (group / "cpu.max").write_text(f"{int(cpus * period)} {period}")
        else:
            (group / "cpu.cfs_period_us").write_text(str(period))
            (group / "cpu.cfs_quota_us").write_text(str(int(cpus * period)))
        for pid in sb.pids(host):
            try:
                (group / "cgroup.procs").write_text(str(pid))
            except OSError:  # exited meanwhile, or a kernel thread
                pass
        groups.append(group)
    return groups + [root]


def remove_cgroups(groups: list[Path]) -> None:
    for group in groups:  # children first; empty once the sandbox is down (its processes were stopped)
        for _ in range(50):
            try:
                group.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)


def wait_all(procs) -> None:
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise RuntimeError(f"docker load failed: {err.decode()[-300:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--uplink-mbit", type=int, default=1000, help="head uplink rate (0: unshaped)")
    ap.add_argument("--image", help="use this image tar instead of building one")
    ap.add_argument("--node-disk-gb", type=int, default=8,
                    help="each node's data root on its own journaled ext4 of this size (0: the shared root fs)")
    ap.add_argument("--settle", type=float, default=0.0,
                    help="seconds to wait after removing the image (see above)")
    ap.add_argument("--node-cpus", type=float, default=0.0,
                    help="each node a CPU budget of this many cores, alone or not (0: all share the machine)")
    ap.add_argument("--cases", default="one host,relay,parallel,sequential,floor",
                    help="comma-separated subset of the methods ('one host' is always measured: the unit)")
    ap.add_argument("--pause-while", metavar="FILE",
                    help="before each measurement wait while FILE exists (a shared machine's quiet flag)")
    args = ap.parse_args()

    from orchestrator.containers.daemon import start_docker
    from orchestrator.containers.image import build_test_image, read_image_tar
    from orchestrator.sandbox import Sandbox

    work = Path(tempfile.mkdtemp(prefix="bench-images-"))
    t = time.monotonic()
    info = read_image_tar(args.image) if args.image else build_test_image(work / "img.tar", tag="orch-bench:cpu",
                                                                           venv=sys.prefix)
    print(f"image {info.image_id[:19]} {info.size / 1e9:.2f} GB (built in {time.monotonic() - t:.1f} s)", flush=True)
    sb = Sandbox.up(f"bench{os.getpid()}-img", nodes=args.hosts)
    groups: list[Path] = []
    try:
        start_docker(sb, disk_gb=args.node_disk_gb or None)
        if args.node_cpus:
            groups = cap_cpus(sb, args.node_cpus)
        if args.uplink_mbit:
            subprocess.run(["tc", "qdisc", "add", "dev", sb.state.bridge, "root", "tbf", "rate",
                            f"{args.uplink_mbit}mbit", "burst", "4mb", "latency", "100ms"], check=True)
        cfg, hosts = sb.ssh_config, sb.hosts
        cases = {
            "one host": lambda: wait_all([ssh_load(cfg, hosts[0], info.path)]),
            "relay": lambda: subprocess.run([sys.executable, "-m", "orchestrator", "images", "load", info.path,
                                             "--hosts", ",".join(hosts), "--ssh-config", str(cfg), "--json"],
                                            check=True, stdout=subprocess.DEVNULL),
            "parallel": lambda: wait_all([ssh_load(cfg, h, info.path) for h in hosts]),
            "sequential": lambda: [wait_all([ssh_load(cfg, h, info.path)]) for h in hosts],
            "floor": lambda: wait_all([local_load(sb, h, info.path) for h in hosts]),
        }
        wanted = {"one host", *(c.strip() for c in args.cases.split(","))}
        cases = {name: fn for name, fn in cases.items() if name in wanted}
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        others: list[float] = []
        for _ in range(args.runs):
            for name, fn in cases.items():
                clear(sb, info.image_id)
                subprocess.run(["sync"], check=True)
                time.sleep(args.settle)
                others.append(wait_quiet(args.pause_while))
                times[name].append(timed(fn))
                print(f"  {name:<11} {times[name][-1][0]:7.1f} s  {times[name][-1][1]:6.1f} core-s  "
                      f"(cores busy before: {others[-1]:.2f})", flush=True)
        unit = statistics.median(t for t, _ in times["one host"])
        print(f"\n{args.hosts} hosts, image {info.size / 1e9:.2f} GB, head uplink "
              f"{str(args.uplink_mbit) + ' Mbit/s' if args.uplink_mbit else 'unshaped'}, {os.cpu_count()} cores, "
              f"{f'{args.node_cpus:g} cores per node' if args.node_cpus else 'nodes share all cores'}, "
              f"cores busy with other work before each measurement {min(others):.2f}-{max(others):.2f}")
        print(f"{'method':<12} {'seconds':>8} {'x one host':>11} {'core-s':>7}")
        for name, ts in times.items():
            med = statistics.median(t for t, _ in ts)
            print(f"{name:<12} {med:8.1f} {med / unit:11.2f} {statistics.median(c for _, c in ts):7.1f}")
    finally:
        Sandbox.load(sb.name).down()
        remove_cgroups(groups)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
