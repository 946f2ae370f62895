"""Code sync: `orchestrator up`'s workdir copy to N hosts vs one host, vs pdsh + rsync, and an unchanged re-sync.

    sudo .venv/bin/python bench/sync.py                      # 16 hosts, the tree: this checkout's orchestrator/
    sudo .venv/bin/python bench/sync.py --hosts 8 --tree /path/to/code --runs 3

Starts its own sandbox (removed at the end) and measures, with the copies removed from every node before each
fresh measurement (median of --runs, the methods interleaved):

  one host     sync_tree to node1 alone (the unit every other time is divided by)
  N hosts      sync_tree to node[1-N] (one SSH session per node, all at once)
  re-sync      sync_tree to node[1-N] again: the tree is unchanged, every node already has its digest
  pdsh+rsync   `pdsh -R exec -w node[1-N] rsync -a -e 'ssh -F CFG' TREE/ %h:DEST/` (the usual hand-made way)

Targets: N hosts <= 2x one host; re-sync < 1 s. Each time includes listing and hashing the tree on the head.
All hosts share this machine's cores, so N fresh copies cost N unpacks on the same CPUs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.job.sync import read_tree, sync_tree  # noqa: E402
from orchestrator.remote import SshOptions  # noqa: E402
from orchestrator.sandbox import Sandbox  # noqa: E402

DEST = "/root/.cache/orchestrator/code"
RSYNC_DEST = "/root/bench-rsync"


def clear(sb, hosts):
    for host in hosts:
        sb.exec(host, ["rm", "-rf", DEST, RSYNC_DEST], check=True)


def timed(fn) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def ours(tree_dir: Path, hosts, ssh):
    def run():
        results = sync_tree(read_tree(tree_dir), hosts, ssh=ssh, python=sys.executable, dest=DEST)
        bad = [r for r in results.values() if not r.ok]
        if bad:
            raise SystemExit(f"sync failed: {bad}")
    return run


def pdsh_rsync(tree_dir: Path, hosts, config: Path):
    argv = ["pdsh", "-S", "-R", "exec", "-f", str(len(hosts)), "-w", ",".join(hosts), "rsync", "-a",
            "--exclude=__pycache__", "-e", f"ssh -F {config}", f"{tree_dir}/", f"%h:{RSYNC_DEST}/"]
    return lambda: subprocess.run(argv, check=True, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=16)
    parser.add_argument("--tree", type=Path, default=ROOT / "orchestrator")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (the sandbox needs it)")
    tree = read_tree(args.tree)
    size = sum((args.tree / f).stat().st_size for f in tree.files)
    sb = Sandbox.up(f"bsync{os.getpid()}", nodes=args.hosts)
    try:
        hosts, ssh = sb.hosts, SshOptions(config=str(sb.ssh_config))
        methods = (
            ("one host", ours(args.tree, hosts[:1], ssh), hosts[:1], True),
            (f"{len(hosts)} hosts", ours(args.tree, hosts, ssh), hosts, True),
            ("re-sync (unchanged)", ours(args.tree, hosts, ssh), hosts, False),
            ("pdsh+rsync", pdsh_rsync(args.tree, hosts, sb.ssh_config), hosts, True),
        )
        times: dict[str, list[float]] = {name: [] for name, *_ in methods}
        for _ in range(args.runs):  # interleaved: the machine's other load falls on every method alike
            for name, fn, subset, fresh in methods:
                if fresh:
                    clear(sb, subset)
                times[name].append(timed(fn))
        rows = {name: statistics.median(t) for name, t in times.items()}
        unit = rows["one host"]
        print(f"tree {args.tree}: {len(tree.files)} files, {size / 1e6:.1f} MB; {len(hosts)} hosts; "
              f"median of {args.runs}")
        for name, seconds in rows.items():
            print(f"  {name:22s} {seconds:7.2f} s   {seconds / unit:5.2f}x one host")
    finally:
        sb.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
