"""The health gate: `orchestrator check` with three injected faults, an all-pairs test beside it, clean gates.

    sudo .venv/bin/python bench/check.py                          # 16 hosts: faults, all pairs, 20 clean gates
    sudo .venv/bin/python bench/check.py --hosts 64 --clean 0 --no-all-pairs
    sudo .venv/bin/python bench/check.py --json runs/bench-check.json

Starts its own sandbox (N hosts, removed at the end) and, on it:

1. faults: a 10 Mbit/s token bucket on one host's link, a 5% CPU quota on another's sshd (every session it
   starts inherits it), a full 1 MiB tmpfs over the workdir of a third (orchestrator.sandbox.faults); then one
   `orchestrator check` as users run it (a fresh process, --json): its wall time, rounds, and whether it named
   exactly those three hosts with the right cause (network / cpu / disk);
2. all pairs (with the faults still on): every pair of the nodes that passed the node checks measured by the
   same pair test, N-1 rounds of N/2 concurrent pairs (the circle method): rounds, pair tests, wall time;
3. clean gates: the faults undone, --clean gates in a row; any failed node is a false verdict.

The node probes run two at a time (--fanout 2): the hosts share this machine's cores (see
tests/integration/test_check.py). Every fault is undone, even on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.check.bisect import round_robin  # noqa: E402
from orchestrator.check.judge import CheckThresholds, Reference, link_problem  # noqa: E402
from orchestrator.check.runner import CheckSpec, measure_pairs  # noqa: E402
from orchestrator.remote import SshOptions  # noqa: E402
from orchestrator.sandbox import Sandbox  # noqa: E402
from orchestrator.sandbox.faults import cap_cpu, fill_disk, slow_link  # noqa: E402


def gate(sb, n: int, workdir: str) -> tuple[float, int, dict]:
    argv = [sys.executable, "-m", "orchestrator", "check", "--hosts", f"node[1-{n}]", "--ssh-config", str(sb.ssh_config),
            "--python", sys.executable, "--workdir", workdir, "--fanout", "2", "--json"]
    start = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    took = time.monotonic() - start
    if not out.stdout.strip():
        raise RuntimeError(f"check printed no JSON (exit {out.returncode}): {out.stderr[-2000:]}")
    return took, out.returncode, json.loads(out.stdout)


def all_pairs(sb, nodes: list[str]) -> dict:
    """Every pair of `nodes`, one circle-method round at a time, each round's pairs at once."""
    spec, pythons = CheckSpec(), {h: sys.executable for h in nodes}
    ssh = SshOptions(config=str(sb.ssh_config))
    rounds = round_robin(nodes)
    links = {}
    start = time.monotonic()
    for k, pairs in enumerate(rounds, 1):
        measured, _, _ = asyncio.run(measure_pairs(pairs, spec, pythons, backend="gloo", port=32000 + 2 * k,
                                                   round_id=f"allpairs{k}", ssh=ssh))
        links.update(measured)
        print(f"  all pairs: round {k}/{len(rounds)} done at {time.monotonic() - start:.0f} s", flush=True)
    took = time.monotonic() - start
    ref = Reference.of(links.values())
    slow = {p for p, link in links.items() if link_problem(link, ref, CheckThresholds())}
    # a node is bad when most of its pairs are slow
    bad = sorted(h for h in nodes if sum(h in p for p in slow) > (len(nodes) - 1) / 2)
    return {"rounds": len(rounds), "pair_tests": len(links), "seconds": round(took, 1), "bad": bad}


def run(n: int, clean: int, do_all_pairs: bool) -> dict:
    sb = Sandbox.up(f"bench-check-{os.getpid()}", nodes=n, prefix="node")
    workdir = tempfile.mkdtemp(prefix="orch-bench-check-")
    result: dict = {"hosts": n}
    faults = {"network": f"node{max(2, n // 5)}", "cpu": f"node{max(3, n // 2)}", "disk": f"node{n - 1}"}
    try:
        with contextlib.ExitStack() as undo:
            undo.callback(slow_link(sb, faults["network"], rate="10mbit"))
            undo.callback(cap_cpu(sb, faults["cpu"], quota=0.05))
            undo.callback(fill_disk(sb, faults["disk"], workdir))
            took, rc, doc = gate(sb, n, workdir)
            reasons = {node["host"]: node["reasons"] for node in doc["nodes"]}
            named = {cause: bool(reasons[host]) and reasons[host][0].startswith(cause) for cause, host in faults.items()}
            result["faults"] = {"seconds": round(took, 1), "exit": rc, "failed": {h: reasons[h] for h in doc["failed"]},
                                "injected": faults,
                                "named_right": named, "exactly_those": sorted(doc["failed"]) == sorted(faults.values()),
                                "rounds": doc["network"]["rounds"], "pair_tests": len(doc["network"]["pairs"]),
                                "all_pairs_rounds": doc["network"]["all_pairs_rounds"], "timings": doc["timings"]}
            print(f"faults: {took:.1f} s, exit {rc}, named right {named}, {doc['network']['rounds']} rounds; failed:",
                  *(f"  {h}: {'; '.join(reasons[h])}" for h in doc["failed"]), sep="\n", flush=True)
            if do_all_pairs:
                nodes = [h for h in sb.hosts if h not in (faults["cpu"], faults["disk"])]
                result["all_pairs"] = all_pairs(sb, nodes)
                print(f"all pairs: {result['all_pairs']}", flush=True)
        times, false = [], []
        for i in range(clean):
            took, rc, doc = gate(sb, n, workdir)
            times.append(round(took, 1))
            if rc != 0:
                false.append({"gate": i + 1, "exit": rc, "failed": {h["host"]: h["reasons"] for h in doc["nodes"]
                                                                   if h["status"] != "pass"}})
            print(f"clean gate {i + 1}/{clean}: {took:.1f} s, exit {rc}", flush=True)
        if clean:
            result["clean"] = {"gates": clean, "false_verdicts": false, "seconds": times,
                               "median_s": sorted(times)[len(times) // 2]}
    finally:
        sb.down()
        os.rmdir(workdir)
    return result


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through the finally blocks: faults undone, sandbox down


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=16)
    ap.add_argument("--clean", type=int, default=20, help="clean gates in a row after the faults are undone")
    ap.add_argument("--no-all-pairs", action="store_true", help="skip the all-pairs comparison")
    ap.add_argument("--json", metavar="FILE", help="also write the results here")
    args = ap.parse_args()
    result = run(args.hosts, args.clean, not args.no_all_pairs)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
