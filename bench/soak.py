"""Soak: the same random faults hit a warm-restarting and a cold-restarting supervised run side by side; ETTR of each.

    sudo .venv/bin/python bench/soak.py --faults 15 --every 240 --seed 1     # ~40 min on 2 busy cores

Two supervised runs of the engine start at once, each on its own 2 sandbox hosts x 1 process with 2 spare hosts:
`--restart warm` (the default for the engine) and `--restart cold`. The tiny model trains at global batch
--global-batch (256: steps of ~0.5 s while both runs share the machine), an asynchronous disk checkpoint every
--checkpoint-every steps (50), --hang-timeout 10. Both runs get the same seeded schedule: fault i lands once every
rank trained past step (i+1) x --every (+ 1-10) and the run recovered from fault i-1; it is one of SIGKILL of a
rank, SIGSTOP of a rank (a hang: under warm restarts its keeper sees it stopped and reports it at once; cold, it
costs --hang-timeout), or a lost node (link down and its processes killed; at most one per spare; warm: a spare
keeper takes its place in-run). At the end, per run: outcome, recoveries (warm and cold), how many faults the event
log diagnosed with the right cause, steps lost, time lost, ETTR (useful step time / wall time,
orchestrator/supervisor/events.py); and the largest difference between the two runs' losses over every step (both
must train exactly the fault-free run's steps).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAUSE = {"kill": "killed", "stop": "hang", "lose": "node_lost"}
MODES = ("warm", "cold")


def events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def recoveries(evs: list[dict]) -> int:
    return sum(e["event"] in ("restart", "warm_resumed") for e in evs)


def beats(run_dir: Path) -> list[dict]:
    found = []
    for p in (run_dir / "heartbeat").glob("*-rank*.json"):
        try:
            found.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            pass
    return found


def schedule(seed: int, faults: int, every: int, spares: int) -> list[tuple[int, str, int]]:
    """(step, kind, rank index) per fault; the same for both runs."""
    rng, plan, lose_budget = random.Random(seed), [], spares
    for i in range(faults):
        kind = rng.choice(["kill", "stop", "lose"] if lose_budget else ["kill", "stop"])
        lose_budget -= kind == "lose"
        plan.append(((i + 1) * every + rng.randint(1, 10), kind, rng.randint(0, 1)))
    return plan


def soak(mode: str, sb, work: Path, plan: list[tuple[int, str, int]], steps: int, checkpoint_every: int,
         batch: int, hang_timeout: float, out: dict) -> None:
    run_dir = work / mode / "run"
    run_dir.mkdir(parents=True)
    hosts, spares = sb.hosts[:2], sb.hosts[2:]
    argv = [sys.executable, "-m", "orchestrator", "supervise", "--hosts", ",".join(hosts), "--nproc-per-node", "1",
            "--spare-hosts", ",".join(spares), "--ssh-config", str(sb.ssh_config), "--connect-timeout", "3",
            "--python", sys.executable, "--run-dir", str(work / mode / "launch"), "--env", "OMP_NUM_THREADS=1",
            "--hang-timeout", str(hang_timeout), "--health-timeout", "5", "--backoff", "0.5", "--backoff-max", "2",
            "--max-restarts", str(len(plan) + 5), "--max-host-failures", "1000", "--no-progress-attempts", "5",
            "--restart", mode, "--straggler-action", "off", "-m", "orchestrator.engine", "--", "--config", "tiny",
            "--steps", str(steps),
            "--set", f"train.global_batch_size={batch}", "--checkpoint-every", str(checkpoint_every), "--async-checkpoint",
            "--keep-checkpoints", "2",
            "--run-dir", str(run_dir)]
    proc = subprocess.Popen(argv, stdout=open(work / mode / "supervisor.log", "w"), stderr=subprocess.STDOUT)
    injected, down, need = [], [], 0
    try:
        for target, kind, index in plan:
            while proc.poll() is None:
                current = beats(run_dir)
                if recoveries(events(run_dir)) >= need and len(current) == 2 and all(
                        b["status"] == "training" and b["step"] >= target for b in current):
                    break
                time.sleep(0.05)
            if proc.poll() is not None:
                break
            beat = sorted(current, key=lambda b: b["rank"])[index]
            if kind == "lose":
                sb.lose(beat["host"])
                down.append(beat["host"])
            else:
                os.kill(beat["pid"], signal.SIGKILL if kind == "kill" else signal.SIGSTOP)
            need = recoveries(events(run_dir)) + 1  # the next fault waits for this one's recovery (not another's)
            injected.append({"kind": kind, "host": beat["host"], "rank": beat["rank"], "step": beat["step"]})
            print(f"{mode} fault {len(injected)}: {kind} {beat['host']}/rank {beat['rank']} at step {beat['step']}",
                  flush=True)
        proc.wait(timeout=3600)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
        for host in down:
            sb.link_up(host)
    evs = events(run_dir)
    causes = [e["cause"] for e in evs if e["event"] == "diagnosis"]
    losses, step_times = {}, []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        losses[record["step"]] = record["loss"]
        step_times.append(float(record.get("step_time_s") or 0.0))
    out[mode] = {"faults": injected, "summary": evs[-1].get("summary", {}) if evs else {}, "losses": losses,
                 "median_step_s": round(statistics.median(step_times), 3) if step_times else None,
                 "right": sum(1 for f, c in zip(injected, causes) if CAUSE[f["kind"]] == c),
                 "unprovoked": len(causes) - len(injected)}  # failures no fault caused (e.g. a hang called falsely)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--faults", type=int, default=15)
    ap.add_argument("--every", type=int, default=240, help="steps between faults (~0.5 s each: ~120 s of training)")
    ap.add_argument("--global-batch", type=int, default=256,
                    help="the tiny model's global batch (default 256: steps of ~0.5 s while both runs share 2 cores)")
    ap.add_argument("--hang-timeout", type=float, default=10.0,
                    help="supervise --hang-timeout (default 10: on 2 cores shared with other jobs a step can stall for "
                         "3 s; the SIGSTOPped ranks do not wait for it under warm restarts)")
    ap.add_argument("--checkpoint-every", type=int, default=50, help="steps between disk checkpoints (default 50)")
    ap.add_argument("--modes", default=",".join(MODES), help="warm,cold (default) or one of them")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    modes = [m for m in MODES if m in args.modes.split(",")]
    sys.path.insert(0, str(ROOT))
    from orchestrator.sandbox import Sandbox

    plan = schedule(args.seed, args.faults, args.every, spares=2)
    steps = (args.faults + 1) * args.every + 20
    work = Path(f"/tmp/orch-bench-soak-{os.getpid()}")
    boxes = {mode: Sandbox.up(f"soak{mode[0]}{os.getpid() % 10000}", nodes=4, prefix=f"{mode[0]}k") for mode in modes}
    results: dict[str, dict] = {}
    try:
        threads = [threading.Thread(target=soak, args=(mode, boxes[mode], work, plan, steps, args.checkpoint_every,
                                                       args.global_batch, args.hang_timeout, results))
                   for mode in modes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for sb in boxes.values():
            sb.down()
    print(json.dumps({m: {k: v for k, v in r.items() if k != "losses"} for m, r in results.items()}, indent=1))
    step_s = results.get("warm", {}).get("median_step_s")
    print(f"\nsoak: {args.faults} faults ({', '.join(k for _, k, _ in plan)}), every ~{args.every} steps "
          f"(~{args.every * step_s:.0f} s of training at the warm run's median step of {step_s} s)" if step_s else "",
          f"seed {args.seed}, disk checkpoint every {args.checkpoint_every} steps (async)")
    print(f"{'mode':<5} {'outcome':<8} {'last step':>9} {'warm':>5} {'cold':>5} {'causes':>7} {'steps lost':>10} "
          f"{'time lost s':>11} {'wall s':>7} {'ETTR':>6}")
    for mode in modes:
        r = results.get(mode, {})
        s = r.get("summary", {})
        print(f"{mode:<5} {str(s.get('outcome')):<8} {str(s.get('last_step')) + '/' + str(steps):>9} "
              f"{s.get('warm_restarts', 0):>5} {s.get('restarts', 0):>5} "
              f"{str(r.get('right')) + '/' + str(len(r.get('faults', []))):>7} {str(s.get('steps_lost')):>10} "
              f"{str(s.get('time_lost_s')):>11} {str(s.get('wall_s')):>7} {str(s.get('ettr')):>6}")
    if all(m in results for m in MODES):  # both ran
        a, b = results["warm"]["losses"], results["cold"]["losses"]
        same = set(a) == set(b) == set(range(1, steps + 1))
        diff = max(abs(a[k] - b[k]) for k in a) if same else None
        print(f"every step trained by both: {same}; largest loss difference warm vs cold: {diff}")
    return 0 if all(results.get(m, {}).get("summary", {}).get("outcome") == "done" for m in modes) else 1


if __name__ == "__main__":
    sys.exit(main())
