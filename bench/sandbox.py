"""Sandbox bring-up and tear-down time: `Sandbox.up(nodes=N)` until every sshd answers, then `down`.

    sudo .venv/bin/python bench/sandbox.py                      # 16, 64, 256 hosts, 3 rounds each
    sudo .venv/bin/python bench/sandbox.py --hosts 16 --runs 5

Each round brings the sizes up in turn (interleaved, so load drift hits all sizes alike) and checks one real
`ssh -F <config> <last host> true` before `down`. Prints per size the median/min/max of up and down and the
median of each phase of up (network, files, hosts, ready). The machine's load average is printed too: on a
shared 2-core machine it dominates the numbers. There is no anchor tool for this; targets: 16 hosts in a few
seconds, 256 hosts under 60 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.sandbox import Sandbox  # noqa: E402


def one_round(n: int) -> dict[str, float]:
    sb = Sandbox.up(f"bench{os.getpid()}-{n}", nodes=n)
    try:
        check = subprocess.run(["ssh", "-F", str(sb.ssh_config), sb.hosts[-1], "true"], timeout=60)
        assert check.returncode == 0, f"ssh to {sb.hosts[-1]} failed"
    finally:
        t = time.monotonic()
        sb.down()
        down = time.monotonic() - t
    return {"up": sb.timings["total"], "down": down, **{k: sb.timings[k] for k in ("network", "files", "hosts", "ready")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", default="16,64,256", help="comma-separated sandbox sizes")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(x) for x in args.hosts.split(",")]
    results: dict[int, list[dict[str, float]]] = {n: [] for n in sizes}
    print(f"load average before: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    for r in range(args.runs):
        for n in sizes:
            results[n].append(one_round(n))
            print(f"round {r + 1} n={n}: up {results[n][-1]['up']:.2f} s, down {results[n][-1]['down']:.2f} s"
                  f" (load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"\n{'hosts':>6} {'up med':>8} {'up min':>8} {'up max':>8} {'down med':>9}  phases of up (median s)")
    for n, rows in results.items():
        up, down = [x["up"] for x in rows], [x["down"] for x in rows]
        phases = " ".join(f"{k}={statistics.median(x[k] for x in rows):.2f}" for k in ("network", "files", "hosts", "ready"))
        print(f"{n:>6} {statistics.median(up):>8.2f} {min(up):>8.2f} {max(up):>8.2f} {statistics.median(down):>9.2f}  {phases}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
