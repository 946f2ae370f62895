"""Code sync: `orchestrator up`'s workdir copy to N hosts vs one host, vs pdsh + rsync, and re-syncs.

    sudo .venv/bin/python bench/sync.py                      # 16 hosts, the tree: this checkout's orchestrator/
    sudo .venv/bin/python bench/sync.py --hosts 8 --tree /path/to/code --runs 3
    sudo .venv/bin/python bench/sync.py --files 20000 --megabytes 100 --runs 3   # a generated tree of that size
    sudo .venv/bin/python bench/sync.py --files 20000 --megabytes 100 --node-cpus 0.1  # each host 0.1 core of its own

Starts its own sandbox (removed at the end) and measures, with the copies removed from every node before each
fresh measurement (median of --runs, the methods interleaved):

  one host              sync_tree to node1 alone (the unit every other time is divided by)
  N hosts relay         sync_tree to node[1-N]: the head sends the tar once, node to node (the default)
  N hosts parallel      sync_tree(mode="parallel") to node[1-N]: the head sends the tar to every node at once
  re-sync (unchanged)   sync_tree to node[1-N] again: the tree is unchanged, every node already has its digest
  re-sync (1 changed)   one file edited, then sync_tree to node[1-N]: every node has the previous version only,
                        which nothing uses: each node turns it into the new version in place (relay, and parallel)
  re-sync (1 ch.) in use  the same while the previous version's copy is in use (pinned by a sync for a run about
                        to start, as a running run's lock would): each node links a new copy from it
  pdsh+rsync            `pdsh -R exec -w node[1-N] rsync -a -e 'ssh -F CFG' TREE/ %h:DEST/` (the usual hand-made
                        way), fresh and again after one file was edited

Targets: N hosts <= 2x one host; re-sync < 1 s. Each time includes listing and hashing the tree on the head.
All hosts share this machine's cores, so N fresh copies cost N unpacks on the same CPUs. A generated tree
(--files, --megabytes) has 100 files per directory, each file text-like (words of a fixed random vocabulary,
which gzip shrinks about as much as source code), sizes spread from a quarter to 1.75x the mean; it is made
in a temporary directory that is removed at the end.

--node-cpus F gives every host a CPU budget of its own (F cores: a cgroup per host with a CFS quota holding its
sshd, so everything a sync starts there), the same whether it receives alone or beside the others, as N
separate machines would have (bench/images.py's cap_cpus): then the ratios measure the distribution, not N hosts
taking turns on this machine's cores. Keep N x F below the core count (the head needs its share too).
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))

from images import cap_cpus, remove_cgroups  # noqa: E402
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


def ours(tree_dir: Path, hosts, ssh, mode="relay", pin=False):
    """A timed sync; pin=False: no run starts from the copy (what `up` does pins it until its run holds it)."""
    def run():
        results = sync_tree(read_tree(tree_dir), hosts, ssh=ssh, python=sys.executable, dest=DEST, mode=mode,
                            pin=pin)
        bad = [r for r in results.values() if not r.ok]
        if bad:
            raise SystemExit(f"sync failed: {bad}")
    return run


def generate_tree(root: Path, files: int, megabytes: float, seed: int = 0) -> None:
    """`files` text-like files totalling about `megabytes` MB under root, 100 per directory (see the docstring)."""
    rng = random.Random(seed)
    vocabulary = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz_", k=rng.randint(2, 12))) for _ in range(5000)]
    mean = megabytes * 1e6 / files
    for i in range(files):
        path = root / f"d{i // 100:04d}" / f"f{i:05d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        size = int(mean * rng.uniform(0.25, 1.75))
        words, total = [], 0
        while total < size:
            word = rng.choice(vocabulary)
            words.append(word)
            total += len(word) + 1
        path.write_text(" ".join(words)[:size])


def edit_one_file(tree_dir: Path) -> None:
    """A new version of the tree: one line appended to one file (each call a new content, so a new digest)."""
    with (tree_dir / read_tree(tree_dir).files[0]).open("a") as fh:
        fh.write("# edited\n")


def pdsh_rsync(tree_dir: Path, hosts, config: Path):
    argv = ["pdsh", "-S", "-R", "exec", "-f", str(len(hosts)), "-w", ",".join(hosts), "rsync", "-a",
            "--exclude=__pycache__", "-e", f"ssh -F {config}", f"{tree_dir}/", f"%h:{RSYNC_DEST}/"]
    return lambda: subprocess.run(argv, check=True, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=16)
    parser.add_argument("--tree", type=Path, default=None, help="the tree to copy (default: orchestrator/)")
    parser.add_argument("--files", type=int, default=None, help="generate a tree of this many files instead")
    parser.add_argument("--megabytes", type=float, default=100.0, help="the generated tree's total size")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--node-cpus", type=float, default=0.0,
                        help="each host a CPU budget of this many cores, alone or not (0: all share the machine)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (the sandbox needs it)")
    if args.files is not None and args.tree is not None:
        raise SystemExit("--tree and --files exclude each other: copy a tree, or generate one")
    scratch = Path(tempfile.mkdtemp(prefix="bench-sync-")) if args.files is not None else None
    if scratch is not None:
        args.tree = scratch / "tree"
        generate_tree(args.tree, args.files, args.megabytes)
    args.tree = args.tree or ROOT / "orchestrator"
    tree = read_tree(args.tree)
    size = sum((args.tree / f).stat().st_size for f in tree.files)
    sb = Sandbox.up(f"bsync{os.getpid()}", nodes=args.hosts)
    groups: list[Path] = []
    try:
        if args.node_cpus:
            groups = cap_cpus(sb, args.node_cpus)
        hosts, ssh = sb.hosts, SshOptions(config=str(sb.ssh_config))
        # (name, timed call, hosts, before it: "clear" the copies, "edit" one file, "pin, edit": an untimed sync
        # that pins the current copy, then the edit; or nothing)
        methods = (
            ("one host", ours(args.tree, hosts[:1], ssh), hosts[:1], "clear"),
            (f"{len(hosts)} hosts relay", ours(args.tree, hosts, ssh), hosts, "clear"),
            (f"{len(hosts)} hosts parallel", ours(args.tree, hosts, ssh, "parallel"), hosts, "clear"),
            ("re-sync (unchanged)", ours(args.tree, hosts, ssh), hosts, None),
            ("re-sync (1 changed)", ours(args.tree, hosts, ssh), hosts, "edit"),
            ("re-sync (1 ch.) parallel", ours(args.tree, hosts, ssh, "parallel"), hosts, "edit"),
            ("re-sync (1 ch.) in use", ours(args.tree, hosts, ssh), hosts, "pin, edit"),
            ("pdsh+rsync", pdsh_rsync(args.tree, hosts, sb.ssh_config), hosts, "clear"),
            ("pdsh+rsync (1 changed)", pdsh_rsync(args.tree, hosts, sb.ssh_config), hosts, "edit"),
        )
        times: dict[str, list[float]] = {name: [] for name, *_ in methods}
        loads = [os.getloadavg()[0]]
        for _ in range(args.runs):  # interleaved: the machine's other load falls on every method alike
            for name, fn, subset, before in methods:
                if before == "clear":
                    clear(sb, subset)
                elif before == "pin, edit":
                    ours(args.tree, subset, ssh, pin=True)()
                    edit_one_file(args.tree)
                elif before == "edit":
                    edit_one_file(args.tree)
                times[name].append(timed(fn))
                loads.append(os.getloadavg()[0])
        rows = {name: statistics.median(t) for name, t in times.items()}
        unit = rows["one host"]
        print(f"tree {'generated' if scratch else args.tree}: {len(tree.files)} files, {size / 1e6:.1f} MB; "
              f"{len(hosts)} hosts; {f'{args.node_cpus:g} cores per host' if args.node_cpus else 'hosts share all cores'}; "
              f"median of {args.runs}; load average (1 min) {min(loads):.1f}-{max(loads):.1f}")
        for name, seconds in rows.items():
            print(f"  {name:24s} {seconds:7.2f} s   {seconds / unit:5.2f}x one host")
    finally:
        sb.down()
        remove_cgroups(groups)
        if scratch is not None:
            shutil.rmtree(scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
