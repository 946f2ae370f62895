"""What the stack dump adds to hang handling: py-spy on every rank, through the supervisor's own fan-out.

    sudo .venv/bin/python bench/hang.py --hosts 2 --repeats 5
    sudo .venv/bin/python bench/hang.py --hosts 16 --repeats 5

Brings up (and removes) its own sandbox of --hosts namespace hosts and starts --ranks-per-host stand-in ranks on
each: this Python, `import torch`, then asleep inside a function of the script (what py-spy has to read in a
real rank: the interpreter with torch's libraries mapped). Then times on the head, --repeats rounds, each round
in a fresh order:
  probe   health.probe_pids over every rank: the /proc state probe the supervisor ran before the stack dump
  dump    health.dump_stacks: every rank's `py-spy dump --json --nonblocking` (all of a host's PIDs at once)
  both    the two at once plus stacks.hang_stacks, as the supervisor runs them between a declared hang and the
          teardown (loop._probe)
added = both - probe: the seconds the stack dump adds to the time from a declared hang to the teardown.
Every call opens its own SSH connections, as the supervisor's do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RANK = ("import os, socket, sys, time\n"
        "import torch\n"
        "def stuck_in_data_loader():\n"
        "    open(os.path.join(sys.argv[1], '%s-%s.pid' % (socket.gethostname(), os.getpid())), 'w').close()\n"
        "    time.sleep(3600)\n"
        "stuck_in_data_loader()\n")


async def bench(sb, work: Path, ranks_per_host: int, repeats: int) -> dict:
    from orchestrator.remote.fanout import run_on_async
    from orchestrator.remote.ssh import SshOptions
    from orchestrator.supervisor.health import dump_stacks, probe_pids
    from orchestrator.supervisor.stacks import RankDump, hang_stacks

    ssh = SshOptions(config=str(sb.ssh_config))
    stop = asyncio.Event()
    ranks = [asyncio.ensure_future(run_on_async(sb.hosts, [sys.executable, "-c", RANK, str(work)], ssh=ssh,
                                                stop=stop, run_id=f"benchhang-r{i}")) for i in range(ranks_per_host)]
    expected = len(sb.hosts) * ranks_per_host
    started = time.monotonic()
    while len(list(work.glob("*.pid"))) < expected:
        if time.monotonic() - started > 600:
            raise SystemExit(f"only {len(list(work.glob('*.pid')))} of {expected} ranks started in 600 s")
        await asyncio.sleep(0.2)
    pids: dict[str, list[int]] = {}
    for path in work.glob("*.pid"):
        host, pid = path.stem.rsplit("-", 1)
        pids.setdefault(host, []).append(int(pid))
    ready_s = time.monotonic() - started

    async def probe():
        return await probe_pids(pids, ssh=ssh, python=sys.executable, timeout=60)

    async def dump():
        return await dump_stacks(pids, ssh=ssh, python=sys.executable, timeout=60)

    async def both():
        states, dumps = await asyncio.gather(probe(), dump())
        rank_dumps = [RankDump(i, host, pid, threads=got if isinstance(got, list) else None,
                               error=None if isinstance(got, list) else got)
                      for i, (host, pid, got) in enumerate((h, p, g) for h, d in dumps.items() for p, g in d.items())]
        return hang_stacks(rank_dumps, states)

    times: dict[str, list[float]] = {"probe": [], "dump": [], "both": []}
    last = None
    try:
        for _ in range(repeats):
            order = list(times)
            random.shuffle(order)
            for name in order:
                t0 = time.monotonic()
                result = await {"probe": probe, "dump": dump, "both": both}[name]()
                times[name].append(time.monotonic() - t0)
                if name == "both":
                    last = result
    finally:
        stop.set()
        await asyncio.gather(*ranks, return_exceptions=True)
    return {"hosts": len(sb.hosts), "ranks": expected, "ranks_ready_s": round(ready_s, 1), "repeats": repeats,
            "times": {k: [round(v, 3) for v in vs] for k, vs in times.items()},
            "median": {k: round(statistics.median(vs), 3) for k, vs in times.items()},
            "added_s": round(statistics.median(times["both"]) - statistics.median(times["probe"]), 3),
            "culprit": last["culprit"] if last else None,
            "load": os.getloadavg()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", type=int, default=2)
    ap.add_argument("--ranks-per-host", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from orchestrator.sandbox import Sandbox

    work = Path(f"/tmp/orch-bench-hang-{os.getpid()}")
    work.mkdir(parents=True)
    sb = Sandbox.up(f"benchhang{os.getpid() % 10000}", nodes=args.hosts, prefix="h")
    try:
        row = asyncio.run(bench(sb, work, args.ranks_per_host, args.repeats))
    finally:
        sb.down()
    print(json.dumps(row))
    med = row["median"]
    print(f"\n{row['hosts']} hosts x {args.ranks_per_host} rank(s), medians of {args.repeats}: "
          f"probe {med['probe']:.2f} s, dump {med['dump']:.2f} s, both {med['both']:.2f} s; "
          f"the stack dump adds {row['added_s']:.2f} s "
          f"(load average {row['load'][0]:.1f})")
    print(f"culprit line: {row['culprit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
