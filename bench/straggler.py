"""Straggler detection: steps to name a host capped mid-run, its replacement, false alarms, the reporting's cost.

    sudo .venv/bin/python bench/straggler.py                       # all three parts, 3-host sandbox of its own
    sudo .venv/bin/python bench/straggler.py --parts overhead --overhead-runs 5
    sudo .venv/bin/python bench/straggler.py --parts clean --clean-minutes 30      # false alarms over 30 minutes

Parts (the tiny engine, 2 ranks, gloo; OMP_NUM_THREADS=1):
  overhead  the engine with the rank-local timing on and off (ORCH_STEP_TIMING=1/0, heartbeat on in both), runs
            interleaved on/off on this machine (torchrun, 2 processes): median step time of each run; plus the
            cost of what timing adds per step measured alone (the clock, the totals, the longer heartbeat file),
            as a share of the median step
  clean     `orchestrator supervise` on 2 sandbox hosts with no fault, a checkpoint every 20 steps, detection
            in "name" mode: the straggler events the supervisor wrote (false alarms) and, from a detector this
            bench runs over the same heartbeat files, the largest slowdown any host reached (the noise floor: a
            threshold above it gives no false alarm)
  fault     the same with a spare; once rank 1 trained step 60 its host goes into a CFS quota (cap_cpu): steps
            from the cap to the straggler event, whether the spare replaced it, the run's end, and the median
            step time before the cap, while capped, and after the replacement (ratio to before)
"""

from __future__ import annotations

import argparse
import contextlib
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
PY = sys.executable


def engine(run_dir: Path, steps: int, every: int) -> list[str]:
    return ["-m", "orchestrator.engine", "--", "--config", "tiny", "--steps", str(steps), "--checkpoint-every",
            str(every), "--run-dir", str(run_dir)]


def median_step_ms(records: list[dict]) -> float | None:
    values = [r["step_time_s"] for r in records if "checkpoint_stall_s" not in r]
    return round(1e3 * statistics.median(values), 2) if values else None


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ---- overhead -----------------------------------------------------------------------------------------------
def overhead_run(work: Path, timing: bool, n: int, steps: int) -> float:
    run_dir = work / f"overhead-{'on' if timing else 'off'}-{n}"
    env = os.environ | {"OMP_NUM_THREADS": "1", "ORCH_HEARTBEAT_DIR": str(run_dir / "heartbeat"),
                        "ORCH_STEP_TIMING": "1" if timing else "0"}
    subprocess.run([PY, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "orchestrator.engine",
                    "--config", "tiny", "--steps", str(steps), "--run-dir", str(run_dir)], env=env, check=True,
                   capture_output=True, cwd=ROOT)
    return median_step_ms(read_jsonl(run_dir / "metrics.jsonl")[10:])  # past the warm-up


def timing_cost_us() -> dict:
    """Per-step cost of what timing adds, alone: the clock and the totals; the heartbeat record's JSON with and
    without the 3 fields; a whole beat (write + rename) with and without them, alternating batches (medians)."""
    import torch

    from orchestrator.engine.heartbeat import Heartbeat
    from orchestrator.engine.train import _LocalClock

    clock, n = _LocalClock(torch, torch.device("cpu")), 20000
    with tempfile.TemporaryDirectory() as tmp:
        hb = Heartbeat(Path(tmp), 0, 0, 2, compute_group="pp0")
        begin = time.perf_counter()
        for _ in range(n):
            clock.start()
            clock.stop()
            hb.add_compute(clock.seconds())
        clock_us = (time.perf_counter() - begin) / n * 1e6
        record = {"rank": 0, "local_rank": 0, "world_size": 2, "host": "node1", "pid": 1, "step": 1,
                  "status": "training", "time": time.time()}
        longer = record | {"compute_s": 1.2345678, "compute_steps": 1234, "compute_group": "pp0"}
        batches: dict[str, list[float]] = {"json_without": [], "json_with": [], "beat_without": [], "beat_with": []}
        for _ in range(20):
            for label, rec in (("json_without", record), ("json_with", longer)):
                begin = time.perf_counter()
                for _ in range(2000):
                    json.dumps(rec)
                batches[label].append((time.perf_counter() - begin) / 2000 * 1e6)
            for label, steps in (("beat_without", 0), ("beat_with", 1)):
                hb.compute_steps = steps
                begin = time.perf_counter()
                for i in range(100):
                    hb.beat(step=i)
                batches[label].append((time.perf_counter() - begin) / 100 * 1e6)
    return {"clock_us": round(clock_us, 2)} | {k: round(statistics.median(v), 2) for k, v in batches.items()}


# ---- supervised runs --------------------------------------------------------------------------------------------
class Floor:
    """A detector of our own over the run's heartbeat files: the largest slowdown each host reached, and every
    window it closed (one JSON line each in `log`: time, step, host -> [steps, slowdown])."""

    def __init__(self, steps: int, log: Path):
        from orchestrator.supervisor.straggler import StragglerDetector, StragglerOptions

        self.detector = StragglerDetector(StragglerOptions(threshold=1e9, steps=steps))
        self.peak: dict[str, float] = {}
        self.beats: dict[str, dict] = {}
        self.log, self.last = log.open("a"), {}

    def poll(self, heartbeat_dir: Path) -> None:
        from orchestrator.engine.heartbeat import read_heartbeats

        self.beats = read_heartbeats(heartbeat_dir)
        self.detector.observe(self.beats)
        for host, value in self.detector.slowdowns().items():
            self.peak[host] = max(self.peak.get(host, 0.0), value)
        hosts = {b.get("host") for b in self.beats.values()}
        newest = {h: w[-1] for h in hosts if h and (w := self.detector.windows(h))}
        if newest and any(self.last.get(h) is not w for h, w in newest.items()):
            self.last = newest
            step = max((int(b.get("step", 0)) for b in self.beats.values()), default=0)
            self.log.write(json.dumps({"t": round(time.time(), 2), "step": step,
                                       **{h: [w.steps, round(w.slowdown, 4)] for h, w in newest.items()}}) + "\n")
            self.log.flush()


def supervised(sb, work: Path, name: str, hosts: list[str], spare: str | None, *, steps: int, every: int,
               threshold: float, window: int, action: str, cap: tuple[str, float, int] | None,
               minutes: float = 15) -> dict:
    from orchestrator.sandbox.faults import cap_cpu

    run_dir = work / name
    run_dir.mkdir(parents=True)
    argv = [PY, "-m", "orchestrator", "supervise", "--hosts", ",".join(hosts), "--nproc-per-node", "1",
            "--ssh-config", str(sb.ssh_config), "--python", PY, "--run-dir", str(run_dir / "launch"),
            "--env", "OMP_NUM_THREADS=1", "--backoff", "0", "--straggler-threshold", str(threshold),
            "--straggler-steps", str(window), "--straggler-action", action,
            *(["--spare-hosts", spare] if spare else []), *engine(run_dir, steps, every)]
    proc = subprocess.Popen(argv, stdout=open(run_dir / "supervise.log", "w"), stderr=subprocess.STDOUT, cwd=ROOT)
    floor, capped_step, capped_at = Floor(window, run_dir / "windows.jsonl"), None, None
    with contextlib.ExitStack() as undo:
        deadline = time.time() + minutes * 60
        while proc.poll() is None and time.time() < deadline:
            floor.poll(run_dir / "heartbeat")
            if cap and capped_step is None:
                beat = next((b for b in floor.beats.values() if b.get("rank") == 1), None)
                if beat and beat.get("status") == "training" and beat["step"] >= cap[2]:
                    undo.callback(cap_cpu(sb, cap[0], quota=cap[1]))
                    capped_step, capped_at = beat["step"], time.time()
            time.sleep(0.2)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
    evs = read_jsonl(run_dir / "events.jsonl")
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    named = [e for e in evs if e["event"] == "straggler"]
    replaced = [e for e in evs if e["event"] == "replace"]
    resumed = next((i for i, r in enumerate(metrics) if "resumed_from" in r), len(metrics))
    out = {"run": name, "outcome": evs[-1]["event"] if evs else None,
           "steps_done": len({r["step"] for r in metrics}), "steps": steps,
           "named": [(e["host"], e["slowdown"], e["step"]) for e in named],
           "replaced": [(e["host"], e["spare"]) for e in replaced],
           "noise_floor": {h: round(v, 3) for h, v in floor.peak.items()}}
    if cap:
        first = named[0] if named else None
        before = [r for r in metrics[:resumed] if r["step"] <= (capped_step or 0)][10:]  # past the warm-up
        during = [r for r in metrics[:resumed] if r["step"] > (capped_step or 0) + 1]
        after = metrics[resumed + 5:]  # past the relaunch's warm-up
        out |= {"capped_step": capped_step, "detect_steps": first["step"] - capped_step if first else None,
                "detect_s": round(next(e["time"] for e in named) - capped_at, 1) if first else None,
                "step_ms_before": median_step_ms(before), "step_ms_capped": median_step_ms(during),
                "step_ms_after": median_step_ms(after)}
        if out["step_ms_before"] and out["step_ms_after"]:
            out["after_vs_before"] = round(out["step_ms_after"] / out["step_ms_before"], 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="overhead,clean,fault")
    ap.add_argument("--overhead-runs", type=int, default=3, help="runs of each (on, off), interleaved")
    ap.add_argument("--overhead-steps", type=int, default=300)
    ap.add_argument("--clean-runs", type=int, default=1)
    ap.add_argument("--clean-steps", type=int, default=400)
    ap.add_argument("--clean-minutes", type=float, default=None,
                    help="run each clean run this long instead (stopped by Ctrl-C), e.g. 30")
    ap.add_argument("--clean-threshold", type=float, default=1.10, help="the supervisor's, in the clean runs")
    ap.add_argument("--threshold", type=float, default=2.0, help="the supervisor's, in the fault run")
    ap.add_argument("--window", type=int, default=50, help="--straggler-steps")
    ap.add_argument("--quota", type=float, default=0.05, help="the capped host's share of one core")
    ap.add_argument("--fault-steps", type=int, default=300)
    ap.add_argument("--fault-runs", type=int, default=1)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    parts = args.parts.split(",")
    work = Path(f"/tmp/orch-bench-straggler-{os.getpid()}")
    work.mkdir(parents=True)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    if "overhead" in parts:
        rows = {True: [], False: []}
        for n in range(args.overhead_runs):
            for timing in (True, False):
                rows[timing].append(overhead_run(work, timing, n, args.overhead_steps))
                print(json.dumps({"timing": timing, "run": n, "median_step_ms": rows[timing][-1]}), flush=True)
        on, off = statistics.median(rows[True]), statistics.median(rows[False])
        cost = timing_cost_us()
        added = cost["clock_us"] + cost["json_with"] - cost["json_without"]  # the write is one small file either way
        print(json.dumps({"overhead": {"step_ms_on": on, "step_ms_off": off, "on_vs_off": round(on / off, 4),
                                       **cost, "added_us_per_step": round(added, 1),
                                       "added_share_of_step": round(added / (off * 1e3), 5)}}), flush=True)
    if "clean" in parts or "fault" in parts:
        from orchestrator.sandbox import Sandbox

        sb = Sandbox.up(f"benchslow{os.getpid() % 10000}", nodes=3, prefix="s")
        try:
            a, b, spare = sb.hosts
            for n in range(args.clean_runs if "clean" in parts else 0):
                steps = args.clean_steps if args.clean_minutes is None else 10**6
                print(json.dumps(supervised(sb, work, f"clean-{n}", [a, b], None, steps=steps, every=20,
                                            threshold=args.clean_threshold, window=args.window, action="name",
                                            cap=None, minutes=args.clean_minutes or 15)), flush=True)
            for n in range(args.fault_runs if "fault" in parts else 0):
                print(json.dumps(supervised(sb, work, f"fault-{n}", [a, b], spare, steps=args.fault_steps, every=20,
                                            threshold=args.threshold, window=args.window, action="replace",
                                            cap=(b, args.quota, 60))), flush=True)
        finally:
            sb.down()
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
