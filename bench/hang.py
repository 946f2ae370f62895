"""What the stack and flight recorder dumps add to hang handling, through the supervisor's own fan-out.

    sudo .venv/bin/python bench/hang.py --hosts 2 --repeats 5
    sudo .venv/bin/python bench/hang.py --hosts 16 --repeats 5

Brings up (and removes) its own sandbox of --hosts namespace hosts and starts --ranks-per-host stand-in ranks on
each: this Python, `import torch`, a one-rank gloo group with torch's flight recorder on (2,000 entries, as under
`supervise`) that ran 100 all_reduces, the dumper armed (engine/flight_recorder.py), then asleep inside a function
of the script (what py-spy has to read in a real rank: the interpreter with torch's libraries mapped). Then times
on the head, --repeats rounds, each round in a fresh order:
  probe   health.probe_pids over every rank: the /proc state probe the supervisor ran before the stack dump
  dump    health.dump_stacks: every rank's `py-spy dump --json --nonblocking` (all of a host's PIDs at once)
  flight  the same with each rank's flight recorder dump (SIGUSR2, then its file), as the supervisor asks now
  both    probe and flight at once plus the reports (stacks.hang_stacks, flight.flight_report), as the supervisor
          runs them between a declared hang and the teardown (loop._probe)
added = both - probe: the seconds the dumps add to the time from a declared hang to the teardown. A rank's first
flight recorder dump costs more (torch imports torch._inductor to symbolize the frames): the first `flight` or
`both` round is reported apart. Every call opens its own SSH connections, as the supervisor's do.
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
        "import torch, torch.distributed as dist\n"
        "from orchestrator.engine import flight_recorder\n"
        "dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)\n"
        "for _ in range(100):\n"
        "    dist.all_reduce(torch.ones(4))\n"
        "path = flight_recorder.arm(os.getpid())\n"
        "def stuck_in_data_loader():\n"
        "    with open(os.path.join(sys.argv[1], '%s-%s.pid' % (socket.gethostname(), os.getpid())), 'w') as f:\n"
        "        f.write(path)\n"
        "    time.sleep(3600)\n"
        "stuck_in_data_loader()\n")


async def bench(sb, work: Path, ranks_per_host: int, repeats: int) -> dict:
    from orchestrator.remote.fanout import run_on_async
    from orchestrator.remote.ssh import SshOptions
    from orchestrator.engine.flight_recorder import run_env
    from orchestrator.supervisor.flight import flight_report, with_flight
    from orchestrator.supervisor.health import dump_stacks, probe_pids
    from orchestrator.supervisor.stacks import RankDump, hang_stacks

    ssh = SshOptions(config=str(sb.ssh_config))
    stop = asyncio.Event()
    env = run_env(str(work / "fr" / "rank"), {}) | {"OMP_NUM_THREADS": "1"}
    ranks = [asyncio.ensure_future(run_on_async(sb.hosts, [sys.executable, "-c", RANK, str(work)], ssh=ssh, env=env,
                                                stop=stop, run_id=f"benchhang-r{i}")) for i in range(ranks_per_host)]
    expected = len(sb.hosts) * ranks_per_host
    started = time.monotonic()
    while len(list(work.glob("*.pid"))) < expected:
        if time.monotonic() - started > 600:
            raise SystemExit(f"only {len(list(work.glob('*.pid')))} of {expected} ranks started in 600 s")
        await asyncio.sleep(0.2)
    pids: dict[str, list[int]] = {}
    flight: dict[str, dict[int, str]] = {}
    for path in work.glob("*.pid"):
        host, pid = path.stem.rsplit("-", 1)
        pids.setdefault(host, []).append(int(pid))
        flight.setdefault(host, {})[int(pid)] = path.read_text()
    ready_s = time.monotonic() - started

    async def probe():
        return await probe_pids(pids, ssh=ssh, python=sys.executable, timeout=60)

    async def dump(with_flight_recorders: bool = False):
        return await dump_stacks(pids, ssh=ssh, python=sys.executable, timeout=60,
                                 flight=flight if with_flight_recorders else None)

    async def both():
        states, dumps = await asyncio.gather(probe(), dump(True))
        rank_dumps = [RankDump(i, host, pid, threads=got.get("threads"), error=got.get("error"),
                               flight=got.get("flight"), flight_error=got.get("flight_error"))
                      for i, (host, pid, got) in enumerate((h, p, g) for h, d in dumps.items() for p, g in d.items())]
        return with_flight(hang_stacks(rank_dumps, states), flight_report(rank_dumps))

    times: dict[str, list[float]] = {"probe": [], "dump": [], "flight": [], "both": []}
    first: dict[str, float] = {}
    last = None
    try:
        for _ in range(repeats):
            order = list(times)
            random.shuffle(order)
            for name in order:
                t0 = time.monotonic()
                result = await {"probe": probe, "dump": dump, "flight": lambda: dump(True), "both": both}[name]()
                took = time.monotonic() - t0
                if name in ("flight", "both") and "recorder" not in first:  # every rank's first dump
                    first["recorder"] = round(took, 3)
                    first["round"] = name
                else:
                    times[name].append(took)
                if name == "both":
                    last = result
    finally:
        stop.set()
        await asyncio.gather(*ranks, return_exceptions=True)
    return {"hosts": len(sb.hosts), "ranks": expected, "ranks_ready_s": round(ready_s, 1), "repeats": repeats,
            "times": {k: [round(v, 3) for v in vs] for k, vs in times.items()},
            "median": {k: round(statistics.median(vs), 3) for k, vs in times.items()},
            "added_s": round(statistics.median(times["both"]) - statistics.median(times["probe"]), 3),
            "first_flight_recorder_dump": first,
            "culprit": last["culprit"] if last else None,
            "flight_recorder": last.get("flight_recorder", {}).get("line") if last else None,
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
          f"probe {med['probe']:.2f} s, dump {med['dump']:.2f} s, with flight recorders {med['flight']:.2f} s, "
          f"both {med['both']:.2f} s; the dumps add {row['added_s']:.2f} s; the ranks' first flight recorder "
          f"dump: {row['first_flight_recorder_dump']} (load average {row['load'][0]:.1f})")
    print(f"culprit line: {row['culprit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
