"""Start-up under Slurm: `orchestrator slurm-launch` (what `launch --via slurm` and launchers/srun-torchrun run) vs
a hand-written `srun ... torchrun ...` line, inside one allocation.

    sudo .venv/bin/python bench/slurm.py --nodes 4 --nproc 2 --runs 7          # starts its own sandbox Slurm
    SLURM_CONF=... .venv/bin/python bench/slurm.py --no-sandbox --runs 7      # an existing cluster

Measured per run: command start -> every rank running (each rank prints its wall-clock start time at the top of
the program; the head takes the latest of the nodes*nproc times). Same program, same interpreter, same static
rendezvous (first node, node rank from SLURM_NODEID) for both; runs interleaved A B A B so load drift hits both
alike. Prints medians and the ratio ours / hand-written (target <= 1.1).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Each rank records its start in a file of a directory every host sees (/tmp is shared in the sandbox).
RANK_PROGRAM = """import os, sys, time
t = time.time()
with open(os.path.join(sys.argv[1], "rank-" + os.environ["RANK"]), "w") as fh:
    fh.write(repr(t))
"""


def ours(script: str, nproc: int, out_dir: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", "slurm-launch", "--nproc-per-node", str(nproc), "--", script, out_dir]


def hand_written(script: str, nproc: int, nnodes: int, first_node: str, out_dir: str) -> list[str]:
    torchrun = (f"exec {shlex.quote(sys.executable)} -m torch.distributed.run --nnodes={nnodes} "
                f"--node-rank=$SLURM_NODEID --nproc-per-node={nproc} --master-addr={first_node} --master-port=29400 "
                f"{shlex.quote(script)} {shlex.quote(out_dir)}")
    return ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "bash", "-c", torchrun]


def time_to_all_ranks(argv: list[str], world: int, out_dir: Path) -> float:
    for f in out_dir.glob("rank-*"):
        f.unlink()
    start = time.time()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    starts = [float(f.read_text()) for f in out_dir.glob("rank-*")]
    if out.returncode or len(starts) != world:
        raise SystemExit(f"bench: {argv[:4]}... exit {out.returncode}, {len(starts)}/{world} ranks:\n{out.stderr[-2000:]}")
    return max(starts) - start


def inside(args) -> None:
    from orchestrator import slurm

    alloc = slurm.require_allocation("bench")
    world = len(alloc.nodes) * args.nproc
    work = Path(tempfile.mkdtemp(prefix="bench-slurm-", dir="/tmp"))
    script = work / "rank.py"
    script.write_text(RANK_PROGRAM)
    tools = {"slurm-launch": ours(str(script), args.nproc, str(work)),
             "srun+torchrun": hand_written(str(script), args.nproc, len(alloc.nodes), alloc.first_node, str(work))}
    times: dict[str, list[float]] = {name: [] for name in tools}
    time_to_all_ranks(tools["srun+torchrun"], world, work)  # warm-up: page cache, slurmd
    for i in range(args.runs):
        order = list(tools) if i % 2 == 0 else list(reversed(tools))
        for name in order:
            times[name].append(time_to_all_ranks(tools[name], world, work))
    shutil.rmtree(work)
    print(f"{len(alloc.nodes)} nodes x {args.nproc} ranks, {args.runs} interleaved runs each "
          f"(command start -> every rank running, seconds)")
    for name, values in times.items():
        print(f"  {name:15s} median {statistics.median(values):6.2f}  min {min(values):6.2f}  max {max(values):6.2f}")
    ratio = statistics.median(times["slurm-launch"]) / statistics.median(times["srun+torchrun"])
    print(f"ratio slurm-launch / srun+torchrun (medians): {ratio:.2f}x  (target <= 1.10)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--no-sandbox", action="store_true", help="Use the cluster SLURM_CONF points at.")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.inside:
        return inside(args)
    inner = [sys.executable, str(Path(__file__).resolve()), "--inside", "--nproc", str(args.nproc), "--runs", str(args.runs)]
    salloc = ["salloc", f"--nodes={args.nodes}", f"--gpus-per-node={args.nproc}", *inner]
    if args.no_sandbox:
        raise SystemExit(subprocess.call(salloc))
    from orchestrator.sandbox.cluster import Sandbox
    from orchestrator.sandbox.slurm import start_slurm

    sb = Sandbox.up(f"bench-slurm-{os.getpid()}", nodes=args.nodes)
    try:
        cluster = start_slurm(sb, gpus_per_node=args.nproc)
        rc = subprocess.call(salloc, env={**os.environ, **cluster.env()}, cwd=ROOT)
    finally:
        sb.down()
    raise SystemExit(rc)


if __name__ == "__main__":
    main()
