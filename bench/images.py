"""Image distribution: `orchestrator images load` (relay) vs naive `ssh HOST docker load < img.tar` loops.

    sudo .venv/bin/python bench/images.py                       # ~1.3 GB image (python + the venv), 8 hosts
    sudo .venv/bin/python bench/images.py --hosts 8 --uplink-mbit 1000 --runs 1

Starts its own sandbox (N hosts, one dockerd each; removed at the end), builds the image tar with
orchestrator.containers.image (python3 + libraries + this venv with torch: the CPU test image), and optionally
shapes the head's uplink with a tbf qdisc on the sandbox bridge (the head's port; node-to-node traffic crosses
the bridge without passing it), as a real head's single NIC would be. Then, with the image removed from every
node before each measurement:

  one host     `ssh node1 docker load < img.tar` (the unit every other time is divided by)
  relay        `orchestrator images load img.tar --hosts node[1-N]` (chain: the head sends the tar once)
  parallel     N x `ssh nodeI docker load < img.tar` at once from the head
  sequential   for each host: `ssh nodeI docker load < img.tar`

Prints seconds and the ratio to one host. Target (issue 6): relay <= 2x one host. All hosts of the sandbox
share this machine's cores and disk, so N docker loads cost N times the CPU whatever the distribution:
read the ratios with that in mind (docs/benchmarks/images.md).
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


def timed(fn) -> float:
    t = time.monotonic()
    fn()
    return time.monotonic() - t


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
    try:
        start_docker(sb)
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
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):
            for name, fn in cases.items():
                clear(sb, info.image_id)
                times[name].append(timed(fn))
                print(f"  {name:<11} {times[name][-1]:7.1f} s", flush=True)
        unit = statistics.median(times["one host"])
        print(f"\n{args.hosts} hosts, image {info.size / 1e9:.2f} GB, head uplink "
              f"{str(args.uplink_mbit) + ' Mbit/s' if args.uplink_mbit else 'unshaped'}, load avg "
              f"{os.getloadavg()[0]:.1f}")
        print(f"{'method':<12} {'seconds':>8} {'x one host':>11}")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"{name:<12} {med:8.1f} {med / unit:11.2f}")
    finally:
        Sandbox.load(sb.name).down()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
