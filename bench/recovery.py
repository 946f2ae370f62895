"""Recovery from a fault of one rank: supervise's warm restart vs its cold restart vs torchrun --max-restarts 1.

    sudo .venv/bin/python bench/recovery.py --runs 3                  # SIGKILL of rank 1, 2 sandbox hosts x 1 process
    sudo .venv/bin/python bench/recovery.py --runs 3 --fault stop     # SIGSTOP of rank 1 (a hang; supervise only)
    sudo .venv/bin/python bench/recovery.py --runs 3 --fault lose     # rank 1's node lost, a spare host (supervise only)
    sudo .venv/bin/python bench/recovery.py --runs 3 --via slurm      # supervise --via slurm in salloc (warm, cold)
    sudo .venv/bin/python bench/recovery.py --runs 3 --via slurm --fault lose   # ... a lost node, a spare, Slurm

Every tool trains the engine's tiny config (--steps 300, a disk checkpoint every 25) on the same 2 sandbox hosts,
runs interleaved (warm cold torchrun, warm cold torchrun, ...) so load drift hits all alike. Once rank 1 has
trained step 100 (read from its heartbeat file), this process SIGKILLs (or SIGSTOPs) it, or loses its node (cable
pulled, then every process on it killed; a third host is the spare: --spare-hosts), and measures, on the head's
clock:
  cold      launch -> the first step of the fresh run (the cold start restarts are compared against)
  detect    fault -> the tool noticed: warm: the node keeper saw the rank exit (node 0's keeper called the node
            lost); cold: supervise's `failure` event;
            torchrun: its `failed (exitcode` log line as it reaches the head through ssh
  abort     fault -> the surviving rank left its broken process group (warm only)
  ready     fault -> every rank (the standby in the dead one's place) joined the new process group (warm only)
  resumed   fault -> the first step after the restart finished (metrics.jsonl line seen by the head)
  lost      steps trained before the fault that had to be trained again (last step - resumed_from)
  match     the losses of every step equal those of an uninterrupted run (1e-5), for the warm restart
warm = `orchestrator supervise` (default --restart auto: warm for the engine; a snapshot every step, /dev/shm);
cold = `supervise --restart cold`; torchrun runs one agent per host over ssh with c10d rendezvous on host 1 and
TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (without it torchrun's restart is flaky); the engine resumes from its newest
checkpoint by itself under cold and torchrun. torchrun is left out of `lose`: its agents do not notice a node that
vanished while its ranks wait in a collective (gloo's timeout is 30 min). Targets (issue): warm resumed <= 1.5 s
median, <= 0.2x torchrun; a lost node with a spare <= 5 s.
With --via slurm the hosts also run slurmd (slurmctld on the head) and warm and cold are `salloc --no-kill
--nodes=N orchestrator supervise --via slurm --hosts ... ...`: each attempt is one srun step; warm repairs the rank
inside the step (a lost node: the spare's keeper, waiting in a one-node step of its own, takes its place), cold
ends the step and starts a new one; no torchrun. After a lost node its slurmd is started again for the next run.
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
STEPS, EVERY, KILL_AT = 300, 25, 100
TOOLS = ("warm", "cold", "torchrun")


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


def run_one(tool: str, sb, work: Path, n: int, fault: str, via: str = "ssh") -> dict:
    run_dir = work / f"{tool}-{n}"
    run_dir.mkdir(parents=True)
    hb = run_dir / "heartbeat"
    hosts, spares = (sb.hosts[:2], sb.hosts[2:]) if fault == "lose" else (sb.hosts, [])
    detect_lines: list[float] = []
    procs = []
    if tool in ("warm", "cold"):
        where = ["--via", "slurm"] if via == "slurm" else ["--failure-grace", "1"]
        salloc = ["salloc", "--no-kill", f"--nodes={len(hosts + spares)}"]  # the job outlives a lost node
        argv = [*(salloc if via == "slurm" else []), sys.executable, "-m", "orchestrator",
                "supervise", *where, "--hosts", ",".join(hosts), "--nproc-per-node", "1", "--ssh-config",
                str(sb.ssh_config), "--python",
                sys.executable, "--run-dir", str(run_dir / "launch"), "--env", "OMP_NUM_THREADS=1", "--backoff", "0",
                "--hang-timeout", "3",
                "--restart", "auto" if tool == "warm" else "cold", "--straggler-action", "off",
                *(["--spare-hosts", ",".join(spares)] if spares else []), "-m", "orchestrator.engine", "--",
                *engine_args(run_dir)]
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
    watch, killed_at, killed_step, lost = Watch(run_dir, hb), None, None, None
    deadline = start + 600
    while time.time() < deadline and any(p.poll() is None for p in procs):
        watch.poll()
        if killed_at is None:
            beat = watch.rank_beat(1)
            if beat and beat["status"] == "training" and beat["step"] >= KILL_AT:
                if fault == "lose":
                    sb.lose(beat["host"])
                    lost = beat["host"]
                else:
                    os.kill(beat["pid"], signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
                killed_at, killed_step = time.time(), beat["step"]
        time.sleep(0.01)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            p.wait(30)
    for host in hosts if fault == "lose" else ():
        sb.link_up(host)
    if lost and via == "slurm":  # its slurmd went with it: the next run needs the node back
        from orchestrator.errors import RemoteError
        from orchestrator.sandbox.slurm import restart_slurmd

        try:
            restart_slurmd(sb, lost)
        except RemoteError as exc:  # the old job still completing there: the next salloc waits for the node
            print(f"warning: {exc}", file=sys.stderr)
    watch.poll()
    first = watch.steps[0][0] if watch.steps else None
    resumed = next(((t, r) for t, r in watch.steps if "resumed_from" in r and t >= (killed_at or 0)), None)
    row = {"tool": tool, "fault": fault, "killed_step": killed_step, "detect_s": None, "abort_s": None,
           "ready_s": None, "cold_s": None}
    if tool in ("warm", "cold"):
        path = run_dir / "events.jsonl"
        evs = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        if not evs:
            print(f"{tool} run {n} wrote no events; see {run_dir}/supervise.log", file=sys.stderr)
            return row | {"completed": False, "resumed_s": None, "lost": None, "match": None}
        launch0 = next(e["time"] for e in evs if e["event"] == "launch")
        row["cold_s"] = first - launch0 if first else None
        warm = next((e for e in evs if e["event"] == "warm_resumed"), None)
        if tool == "warm" and warm is not None and killed_at:
            phases = warm["phases"]
            row |= {k: phases[p] - killed_at if p in phases else None
                    for k, p in (("detect_s", "exit"), ("abort_s", "left"), ("ready_s", "joined"))}
        else:
            detect_at = next((e["time"] for e in evs if e["event"] == "failure"), None)
            row["detect_s"] = detect_at - killed_at if detect_at and killed_at else None
    else:
        row["cold_s"] = first - start if first else None
        row["detect_s"] = detect_lines[0] - killed_at if detect_lines and killed_at else None
    done = {r["step"] for _, r in watch.steps} >= set(range(1, STEPS + 1))
    return row | {
        "completed": done,
        "resumed_s": resumed[0] - killed_at if resumed and killed_at else None,
        "lost": (max(r["step"] for t, r in watch.steps if t <= killed_at) - resumed[1]["resumed_from"])
        if resumed and killed_at else None,
        "losses": {r["step"]: r["loss"] for _, r in watch.steps},  # the last record of each step wins
    }


def median(rows: list[dict], key: str):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def reference_losses(work: Path) -> dict[int, float]:
    """An uninterrupted run of the same command on this machine (torchrun, 2 local processes, gloo)."""
    run_dir = work / "reference"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port=29299",
                    "-m", "orchestrator.engine", *engine_args(run_dir)], check=True, capture_output=True,
                   env=os.environ | {"OMP_NUM_THREADS": "1"})
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--fault", choices=("kill", "stop", "lose"), default="kill")
    ap.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated subset of {','.join(TOOLS)}")
    ap.add_argument("--via", choices=("ssh", "slurm"), default="ssh",
                    help="slurm: supervise --via slurm inside salloc on a sandbox Slurm (warm, cold)")
    ap.add_argument("--json", action="store_true", help="print every run as JSON too")
    args = ap.parse_args()
    tools = [t for t in args.tools.split(",") if t in TOOLS and not (t == "torchrun" and args.fault != "kill")
             and not (t == "torchrun" and args.via == "slurm")]
    sys.path.insert(0, str(ROOT))
    from orchestrator.sandbox import Sandbox
    from orchestrator.sandbox.slurm import start_slurm

    work = Path(f"/tmp/orch-bench-recovery-{os.getpid()}")
    reference = reference_losses(work)
    sb = Sandbox.up(f"benchrec{os.getpid() % 10000}", nodes=3 if args.fault == "lose" else 2, prefix="r")
    rows = []
    try:
        if args.via == "slurm":
            os.environ.update(start_slurm(sb).env())  # SLURM_CONF for salloc; sb.down() stops the daemons
        for n in range(args.runs):
            for tool in tools:
                row = run_one(tool, sb, work, n, args.fault, args.via)
                losses = row.pop("losses", {})
                row["match"] = bool(losses) and set(losses) == set(reference) and all(
                    abs(losses[k] - reference[k]) <= 1e-5 for k in reference)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        sb.down()
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    what = {"kill": "SIGKILL of rank 1", "stop": "SIGSTOP of rank 1", "lose": "loss of rank 1's node (1 spare)"}
    via = ", --via slurm" if args.via == "slurm" else ""
    print(f"\nrecovery from {what[args.fault]} at step >= {KILL_AT} "
          f"(2 hosts x 1 process, tiny, disk checkpoint every {EVERY}{via}), medians of {args.runs} run(s), seconds")
    print(f"{'tool':<9} {'completed':>9} {'match':>6} {'cold':>6} {'detect':>7} {'abort':>6} {'ready':>6} "
          f"{'resumed':>8} {'lost':>5}")
    for tool in tools:
        mine = [r for r in rows if r["tool"] == tool]
        print(f"{tool:<9} {sum(r['completed'] for r in mine)}/{len(mine):<7} {sum(bool(r['match']) for r in mine)}/"
              f"{len(mine):<4} {fmt(median(mine, 'cold_s')):>6} {fmt(median(mine, 'detect_s')):>7} "
              f"{fmt(median(mine, 'abort_s')):>6} {fmt(median(mine, 'ready_s')):>6} "
              f"{fmt(median(mine, 'resumed_s')):>8} {fmt(median(mine, 'lost')):>5}")
    warm = median([r for r in rows if r["tool"] == "warm"], "resumed_s")
    for other in ("cold", "torchrun"):
        theirs = median([r for r in rows if r["tool"] == other], "resumed_s")
        if warm and theirs:
            print(f"warm / {other} time from the fault to the first resumed step: {warm / theirs:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
