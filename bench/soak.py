"""Soak: a supervised engine run takes N random faults (default 15) and must still finish; ETTR reported.

    sudo .venv/bin/python bench/soak.py --faults 15 --seed 1        # ~10 min on 2 busy cores

2 sandbox hosts x 1 process run the tiny engine (a checkpoint every 10 steps) with 2 spare hosts. Each fault
waits until the current attempt trained 11-20 steps past its resume point (so every attempt saves progress),
then injects one of: SIGKILL of a random rank, SIGSTOP of a random rank (a hang, --hang-timeout 5), or a lost
node (link down + its processes killed; at most as many as there are spares, the link comes back later but the
supervisor keeps the host excluded). At the end: outcome, restarts, causes, steps lost, time lost, ETTR (useful
step time / wall time; see orchestrator/supervisor/events.py) and how many faults the event log diagnosed
with the right cause.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVERY = 10
CAUSE = {"kill": "killed", "stop": "hang", "lose": "node_lost"}


def events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--faults", type=int, default=15)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from orchestrator.sandbox import Sandbox

    rng = random.Random(args.seed)
    steps = (args.faults + 2) * 2 * EVERY
    work = Path(f"/tmp/orch-bench-soak-{os.getpid()}")
    run_dir = work / "run"
    run_dir.mkdir(parents=True)
    sb = Sandbox.up(f"benchsoak{os.getpid() % 10000}", nodes=4, prefix="k")
    hosts, spares = sb.hosts[:2], sb.hosts[2:]
    argv = [sys.executable, "-m", "orchestrator", "supervise", "--hosts", ",".join(hosts), "--nproc-per-node", "1",
            "--spare-hosts", ",".join(spares), "--ssh-config", str(sb.ssh_config), "--connect-timeout", "3",
            "--python", sys.executable, "--run-dir", str(work / "launch"), "--env", "OMP_NUM_THREADS=1",
            "--hang-timeout", "5", "--health-timeout", "5", "--backoff", "0.5", "--backoff-max", "2",
            "--max-restarts", str(args.faults + 5), "--max-host-failures", "1000", "--no-progress-attempts", "5",
            "-m", "orchestrator.engine", "--", "--config", "tiny", "--steps", str(steps), "--checkpoint-every",
            str(EVERY), "--keep-checkpoints", "2", "--run-dir", str(run_dir)]
    log = open(work / "supervisor.log", "w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    injected, lost_budget, down = [], len(spares), []
    try:
        while len(injected) < args.faults and proc.poll() is None:
            launches = [e for e in events(run_dir) if e["event"] == "launch"]
            if len(launches) != len(injected) + 1:
                time.sleep(0.1)
                continue
            target = (launches[-1]["resume_step"] or 0) + EVERY + rng.randint(1, EVERY)
            beats = []
            while proc.poll() is None:
                beats = []
                for p in (run_dir / "heartbeat").glob("*-rank*.json"):
                    try:
                        beats.append(json.loads(p.read_text()))
                    except (OSError, ValueError):
                        pass
                if len(beats) == launches[-1]["world_size"] and all(
                        b["status"] == "training" and b["step"] >= target for b in beats):
                    break
                time.sleep(0.05)
            if proc.poll() is not None:
                break
            kind = rng.choice(["kill", "stop", "lose"] if lost_budget else ["kill", "stop"])
            beat = rng.choice(beats)
            if kind == "lose":
                lost_budget -= 1
                host = beat["host"]
                sb.lose(host)
                down.append(host)
            else:
                os.kill(beat["pid"], signal.SIGKILL if kind == "kill" else signal.SIGSTOP)
            injected.append({"kind": kind, "host": beat["host"], "rank": beat["rank"], "step": beat["step"],
                             "time": time.time()})
            print(f"fault {len(injected)}: {kind} {beat['host']}/rank {beat['rank']} at step {beat['step']}",
                  flush=True)
        proc.wait(timeout=1800)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
        for host in down:
            sb.link_up(host)
        sb.down()
    evs = events(run_dir)
    summary = evs[-1].get("summary", {}) if evs else {}
    causes = [e["cause"] for e in evs if e["event"] == "diagnosis"]
    right = sum(1 for f, c in zip(injected, causes) if CAUSE[f["kind"]] == c)
    print(json.dumps({"faults": injected, "summary": summary}, indent=1))
    print(f"\nsoak: {len(injected)} faults ({', '.join(f['kind'] for f in injected)}), outcome "
          f"{summary.get('outcome')}, last step {summary.get('last_step')}/{steps}, restarts {summary.get('restarts')},"
          f" right cause {right}/{len(injected)}, steps lost {summary.get('steps_lost')}, time lost "
          f"{summary.get('time_lost_s')} s of {summary.get('wall_s')} s, ETTR {summary.get('ettr')}")
    return 0 if summary.get("outcome") == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
