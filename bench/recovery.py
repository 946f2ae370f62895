"""Recovery from SIGKILL of one rank: `orchestrator supervise` vs torchrun --max-restarts 1, same fault, same hosts.

    sudo .venv/bin/python bench/recovery.py --runs 2            # 2 sandbox hosts x 1 process, tiny engine

Both tools train the engine's tiny config (--steps 30, a checkpoint every 5) on the same 2 sandbox hosts, runs
interleaved (A B A B) so load drift hits both alike. Once rank 1 has trained step 8 (read from its heartbeat
file), this process SIGKILLs it and measures, on the head's clock:
  cold      launch -> the first step of the fresh run (the cold start both restarts are compared against)
  detect    kill -> the tool noticed: supervise's `failure` event; torchrun's `failed (exitcode` log line as it
            reaches the head through ssh
  resumed   kill -> the first step after the restart finished (metrics.jsonl line seen by the head)
  lost      steps trained before the kill that had to be trained again (last step - resumed_from)
  ratio     resumed / cold (target <= 1.5; detect target <= 1 s)
torchrun runs one agent per host over ssh with c10d rendezvous on host 1 and TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
(without it torchrun's restart is flaky); the engine resumes from its newest checkpoint on its own in both.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY, KILL_AT = 30, 5, 8


def engine_args(run_dir: Path) -> list[str]:
    return ["--config", "tiny", "--steps", str(STEPS), "--checkpoint-every", str(EVERY), "--run-dir", str(run_dir)]


class Watch:
    """Head-side clock for a run dir: when each metrics line and heartbeat appeared."""

    def __init__(self, run_dir: Path, heartbeat_dir: Path):
        self.run_dir, self.heartbeat_dir = run_dir, heartbeat_dir
        self.offset, self.steps = 0, []  # (seen_at, record)

    def poll(self) -> None:
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        with path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        now = time.time()
        for line in data[:end].splitlines():
            self.steps.append((now, json.loads(line)))

    def rank_beat(self, rank: int) -> dict | None:
        for path in self.heartbeat_dir.glob(f"*-rank{rank}.json"):
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                return None
        return None


def run_one(tool: str, sb, work: Path, n: int) -> dict:
    run_dir = work / f"{tool}-{n}"
    run_dir.mkdir(parents=True)
    hb = run_dir / "heartbeat"
    hosts = sb.hosts
    detect_lines: list[float] = []
    procs = []
    if tool == "supervise":
        argv = [sys.executable, "-m", "orchestrator", "supervise", "--hosts", ",".join(hosts), "--nproc-per-node", "1",
                "--ssh-config", str(sb.ssh_config), "--python", sys.executable, "--run-dir", str(run_dir / "launch"),
                "--env", "OMP_NUM_THREADS=1", "--backoff", "0", "--failure-grace", "1",
                "-m", "orchestrator.engine", "--", *engine_args(run_dir)]
        procs.append(subprocess.Popen(argv, stdout=open(run_dir / "supervise.log", "w"), stderr=subprocess.STDOUT))
    else:
        port = 29300 + n
        for host in hosts:
            remote = shlex.join(["env", "OMP_NUM_THREADS=1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1",
                                 f"ORCH_HEARTBEAT_DIR={hb}", sys.executable, "-m", "torch.distributed.run",
                                 f"--nnodes={len(hosts)}", "--nproc-per-node=1", "--rdzv-backend=c10d",
                                 f"--rdzv-endpoint={hosts[0]}:{port}", f"--rdzv-id=bench-{n}-{os.getpid()}",
                                 "--max-restarts=1", "--monitor-interval=0.2", "-m", "orchestrator.engine",
                                 *engine_args(run_dir)])
            p = subprocess.Popen(["ssh", "-F", str(sb.ssh_config), host, remote], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
            procs.append(p)

            def read(p=p):
                for line in p.stdout:
                    if "failed (exitcode" in line and not detect_lines:
                        detect_lines.append(time.time())
            threading.Thread(target=read, daemon=True).start()
    start = time.time()
    watch, killed_at, killed_step = Watch(run_dir, hb if tool == "torchrun" else run_dir / "heartbeat"), None, None
    deadline = start + 600
    while time.time() < deadline and any(p.poll() is None for p in procs):
        watch.poll()
        if killed_at is None:
            beat = watch.rank_beat(1)
            if beat and beat["status"] == "training" and beat["step"] >= KILL_AT:
                os.kill(beat["pid"], signal.SIGKILL)
                killed_at, killed_step = time.time(), beat["step"]
        time.sleep(0.02)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            p.wait(30)
    watch.poll()
    first = watch.steps[0][0] if watch.steps else None
    resumed = next(((t, r) for t, r in watch.steps if "resumed_from" in r), None)
    if tool == "supervise":
        path = run_dir / "events.jsonl"
        evs = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        if not evs:
            print(f"supervise run {n} wrote no events; see {run_dir}/supervise.log", file=sys.stderr)
            return {"tool": tool, "completed": False, "cold_s": None, "detect_s": None, "resumed_s": None,
                    "lost": None, "killed_step": killed_step}
        launch0 = next(e["time"] for e in evs if e["event"] == "launch")
        detect_at = next((e["time"] for e in evs if e["event"] == "failure"), None)
        cold = first - launch0 if first else None
    else:
        detect_at = detect_lines[0] if detect_lines else None
        cold = first - start if first else None
    done = {r["step"] for _, r in watch.steps} >= set(range(1, STEPS + 1))
    return {
        "tool": tool, "completed": done, "cold_s": cold,
        "detect_s": detect_at - killed_at if detect_at and killed_at else None,
        "resumed_s": resumed[0] - killed_at if resumed and killed_at else None,
        "lost": (max(r["step"] for t, r in watch.steps if t <= killed_at) - resumed[1]["resumed_from"])
        if resumed and killed_at else None,
        "killed_step": killed_step,
    }


def median(rows: list[dict], key: str):
    values = [r[key] for r in rows if r[key] is not None]
    return statistics.median(values) if values else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print every run as JSON too")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from orchestrator.sandbox import Sandbox

    work = Path(f"/tmp/orch-bench-recovery-{os.getpid()}")
    sb = Sandbox.up(f"benchrec{os.getpid() % 10000}", nodes=2, prefix="r")
    rows = []
    try:
        for n in range(args.runs):
            for tool in ("supervise", "torchrun"):
                rows.append(run_one(tool, sb, work, n))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        sb.down()
    print(f"\nrecovery from SIGKILL of rank 1 at step >= {KILL_AT} (2 hosts x 1 process, tiny, ckpt every {EVERY}),"
          f" medians of {args.runs} run(s)")
    print(f"{'tool':<10} {'completed':>9} {'cold s':>8} {'detect s':>9} {'resumed s':>10} {'lost':>5} {'resumed/cold':>13}")
    for tool in ("supervise", "torchrun"):
        mine = [r for r in rows if r["tool"] == tool]
        cold, resumed = median(mine, "cold_s"), median(mine, "resumed_s")
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        print(f"{tool:<10} {sum(r['completed'] for r in mine)}/{len(mine):<7} {fmt(cold):>8} "
              f"{fmt(median(mine, 'detect_s')):>9} {fmt(resumed):>10} {fmt(median(mine, 'lost')):>5} "
              f"{fmt(resumed / cold if cold and resumed else None):>13}")
    sup = [r for r in rows if r["tool"] == "supervise"]
    tr = [r for r in rows if r["tool"] == "torchrun"]
    if median(sup, "resumed_s") and median(tr, "resumed_s"):
        print(f"supervise/torchrun time to first resumed step: {median(sup, 'resumed_s') / median(tr, 'resumed_s'):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
