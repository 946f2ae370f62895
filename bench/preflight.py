"""What `--preflight` adds to a launch: `orchestrator launch` with and without it, on a few sandbox hosts.

    sudo .venv/bin/python bench/preflight.py                       # 2, 4 and 8 hosts, 5 pairs of launches each
    sudo .venv/bin/python bench/preflight.py --hosts 4 --reps 3 --json runs/bench-preflight.json

Starts its own sandbox (the largest host count, removed at the end). For each host count, REPS pairs of launches
of a one-line script (1 process per host, torchrun, gloo not used by the script), alternating with and without
--preflight so load drifts hit both alike; each a fresh `orchestrator launch` process as users run it. The
figure is the median wall time with minus the median without, and the gate's own timings (node checks,
network) from its report. Nodes probe with the check's default fanout, as --preflight does.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.sandbox import Sandbox  # noqa: E402


def launch(sb, n: int, work: Path, run_id: str, preflight: bool) -> tuple[float, dict | None]:
    argv = [sys.executable, "-m", "orchestrator", "launch", "--hosts", f"node[1-{n}]", "--nproc-per-node", "1",
            "--ssh-config", str(sb.ssh_config), "--python", sys.executable, "--workdir", str(work),
            "--run-dir", str(work / "runs"), "--run-id", run_id, "--env", "OMP_NUM_THREADS=1", "--json",
            *(["--preflight"] if preflight else []), "--", str(work / "hello.py")]
    start = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    took = time.monotonic() - start
    if out.returncode != 0:
        raise RuntimeError(f"launch exit {out.returncode}: {out.stderr[-2000:]}")
    return took, json.loads(out.stdout).get("preflight")


def run(counts: list[int], reps: int) -> dict:
    sb = Sandbox.up(f"bench-preflight-{os.getpid()}", nodes=max(counts), prefix="node")
    work = Path(tempfile.mkdtemp(prefix="orch-bench-preflight-"))
    (work / "hello.py").write_text("import socket; print('hello from', socket.gethostname())\n")
    result: dict = {"load_before": os.getloadavg()[0]}
    try:
        for n in counts:
            plain, gated, gates = [], [], []
            for i in range(reps):
                for preflight in (i % 2 == 0, i % 2 == 1):  # alternate which goes first
                    took, report = launch(sb, n, work, f"b{n}-{i}-{int(preflight)}", preflight)
                    (gated if preflight else plain).append(round(took, 2))
                    if report:
                        gates.append(report["timings"])
                    print(f"{n} hosts, rep {i + 1}/{reps}, preflight {preflight}: {took:.1f} s", flush=True)
            result[str(n)] = {"without_s": plain, "with_s": gated,
                              "added_s": round(statistics.median(gated) - statistics.median(plain), 1),
                              "gate_total_s": [g["total_s"] for g in gates],
                              "gate_nodes_s": [g["nodes_s"] for g in gates],
                              "gate_network_s": [g.get("network_s") for g in gates]}
            print(f"{n} hosts: adds {result[str(n)]['added_s']} s (median)", flush=True)
        result["load_after"] = os.getloadavg()[0]
    finally:
        sb.down()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return result


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through the finally: sandbox down


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--reps", type=int, default=5, help="pairs of launches (with and without) per host count")
    ap.add_argument("--json", metavar="FILE", help="also write the results here")
    args = ap.parse_args()
    text = json.dumps(run(args.hosts, args.reps), indent=1)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
