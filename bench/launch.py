"""Start-up and Ctrl-C behaviour of multi-node jobs: `orchestrator launch` vs the usual hand-rolled launchers.

    sudo .venv/bin/python bench/launch.py --pair torchrun --nodes 4 --nproc 2 --runs 5
    sudo .venv/bin/python bench/launch.py --pair deepspeed --nodes 2 --nproc 1 --runs 3   # needs deepspeed

Pairs (same job, same interpreter, same sandbox hosts; runs interleaved A B A B so load drift hits both alike):
  torchrun   `orchestrator launch` vs pdsh -R ssh + one identical torchrun per host (c10d rendezvous on host 1)
  deepspeed  `orchestrator launch --launcher deepspeed` vs DeepSpeed's own runner (`deepspeed --hostfile`, pdsh)
The job is orchestrator.launch.examples.allreduce (gloo). Reported as medians:
  wall      command start -> command exit (every rank did its all_reduce and exited)
  first     command start -> the first RESULT line on the head (ranks are running)
Then a Ctrl-C test per tool: two jobs A and B of that tool on the same hosts; once every rank of both runs,
SIGINT to A's launcher; report when A's last process on the hosts was gone, how many of A are left 5 s later,
and how many of B's processes survived (B is innocent: all of them should).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = "orchestrator.launch.examples.allreduce"
PAIRS = {"torchrun": ("launch", "pdsh"), "deepspeed": ("launch-ds", "deepspeed")}


@dataclass
class Job:
    argv: list[str]
    tokens: list[bytes]
    """env entries (b"NAME=value") or command-line fragments that mark this job's processes on the hosts."""


def make_job(tool: str, sb, nproc: int, n: int, *job_args: str) -> Job:
    """The n-th job of `tool` (n picks a unique run id / port)."""
    hosts, tag, port = sb.hosts, f"bench-{tool}-{n}-{os.getpid()}", 29100 + n
    if tool in ("launch", "launch-ds"):
        argv = [sys.executable, "-m", "orchestrator", "launch", "--hosts", ",".join(hosts), "--nproc-per-node",
                str(nproc), "--ssh-config", str(sb.ssh_config), "--python", sys.executable, "--run-id", tag,
                "--run-dir", "/tmp/orch-bench-runs", "--env", "OMP_NUM_THREADS=1", "--master-port", str(port)]
        argv += ["--launcher", "deepspeed"] if tool == "launch-ds" else []
        return Job(argv + ["-m", MODULE, "--", *job_args], [f"ORCH_RUN_ID={tag}".encode()])
    if tool == "pdsh":
        remote = shlex.join(["env", "OMP_NUM_THREADS=1", sys.executable, "-m", "torch.distributed.run",
                             f"--nnodes={len(hosts)}", f"--nproc-per-node={nproc}", "--rdzv-backend=c10d",
                             f"--rdzv-endpoint={hosts[0]}:{port}", f"--rdzv-id={tag}", "-m", MODULE, *job_args])
        return Job(["pdsh", "-R", "ssh", "-f", "64", "-w", ",".join(hosts), remote],
                   [f"TORCHELASTIC_RUN_ID={tag}".encode(), tag.encode()])
    hostfile = Path(f"/tmp/orch-bench-{os.getpid()}.hostfile")
    hostfile.write_text("".join(f"{h} slots={nproc}\n" for h in hosts))
    argv = [str(Path(sys.executable).with_name("deepspeed")), "--hostfile", str(hostfile), "--no_ssh_check",
            "--master_addr", hosts[0], "--master_port", str(port), "--module", MODULE, *job_args]
    return Job(argv, [f"MASTER_PORT={port}".encode(), f"--master_port={port}".encode()])


def job_processes(sb, job: Job) -> list[int]:
    pids = []
    for host in sb.hosts:
        for pid in sb.pids(host):
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if any(t in env or t in cmdline for t in job.tokens):
                pids.append(pid)
    return pids


def start(job: Job, env: dict[str, str]) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen(job.argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                            cwd=ROOT, start_new_session=True)  # own session: a terminal ^C hits only this bench
    seen: list[str] = []
    threading.Thread(target=lambda: [seen.append(l) for l in proc.stdout if "RESULT " in l], daemon=True).start()
    return proc, seen


def timed(job: Job, env: dict[str, str]) -> tuple[float, float | None, int]:
    t0 = time.monotonic()
    first: list[float] = []
    proc = subprocess.Popen(job.argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    for line in proc.stdout:
        if "RESULT " in line and not first:
            first.append(time.monotonic() - t0)
    rc = proc.wait()
    return time.monotonic() - t0, first[0] if first else None, rc


def kill_pids(pids: list[int]) -> None:
    """What a launcher left behind is ours to remove (this bench started it): by PID, never by name."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def ctrl_c(tool: str, sb, nproc: int, env: dict[str, str]) -> dict[str, float | int]:
    a, b = (make_job(tool, sb, nproc, n, "--sleep", "600") for n in (90, 91))
    (pa, seen_a), (pb, seen_b) = start(a, env), start(b, env)
    ranks = len(sb.hosts) * nproc
    deadline = time.monotonic() + 300
    while (len(seen_a) < ranks or len(seen_b) < ranks) and time.monotonic() < deadline:
        time.sleep(0.2)
    b_before = len(job_processes(sb, b))
    t0 = time.monotonic()
    pa.send_signal(signal.SIGINT)
    if tool == "pdsh":
        time.sleep(0.3)
        pa.send_signal(signal.SIGINT)  # pdsh: a second ^C within 1 s aborts
    pa.wait(timeout=60)
    exit_s = time.monotonic() - t0
    while job_processes(sb, a) and time.monotonic() - t0 < 5.0:
        time.sleep(0.1)
    gone_s = time.monotonic() - t0
    time.sleep(max(0.0, 5.0 - (time.monotonic() - t0)))
    left_a, alive_b = job_processes(sb, a), job_processes(sb, b)
    pb.send_signal(signal.SIGINT)
    try:
        pb.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pb.kill()
    time.sleep(2)
    kill_pids(left_a + job_processes(sb, b))
    return {"exit_s": exit_s, "gone_s": gone_s if not left_a else float("nan"), "left_a": len(left_a),
            "b_before": b_before, "b_alive": len(alive_b)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", choices=sorted(PAIRS), default="torchrun")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per tool (0: only the Ctrl-C test)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/launch.py needs root (it brings up a sandbox)")
    sys.path.insert(0, str(ROOT))
    from orchestrator.sandbox import Sandbox

    tools = PAIRS[args.pair]
    sb = Sandbox.up(f"bl{os.getpid() % 10000}", nodes=args.nodes)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PDSH_SSH_ARGS_APPEND": f"-F {sb.ssh_config}"}
    times: dict[str, dict[str, list[float]]] = {t: {"wall": [], "first": []} for t in tools}
    cc = {}
    try:
        for i in range(args.runs):
            for tool in tools:
                wall, first, rc = timed(make_job(tool, sb, args.nproc, i), env)
                times[tool]["wall"].append(wall)
                times[tool]["first"].append(first if first is not None else float("nan"))
                print(f"run {i} {tool:9s} wall {wall:6.2f} s  first rank output {first or float('nan'):6.2f} s"
                      f"{'' if rc == 0 else f'  (exit {rc})'}", flush=True)
        for tool in tools:
            cc[tool] = ctrl_c(tool, sb, args.nproc, env)
    finally:
        sb.down()
    print(f"\n{args.pair}: {args.nodes} hosts x {args.nproc} processes, {args.runs} interleaved runs, "
          f"load avg {os.getloadavg()[0]:.1f} (2 cores)")
    if args.runs:
        med = {t: {k: statistics.median(v) for k, v in r.items()} for t, r in times.items()}
        print(f"{'':10s} {'wall median':>12s} {'first-output median':>20s}")
        for tool in tools:
            print(f"{tool:10s} {med[tool]['wall']:10.2f} s {med[tool]['first']:18.2f} s")
        ours, anchor = tools
        print(f"ratio {ours}/{anchor}: wall {med[ours]['wall'] / med[anchor]['wall']:.2f}x, "
              f"first output {med[ours]['first'] / med[anchor]['first']:.2f}x")
    for tool, r in cc.items():
        print(f"Ctrl-C {tool:9s}: launcher exited after {r['exit_s']:.2f} s; its processes gone after "
              f"{r['gone_s']:.2f} s, left 5 s later: {r['left_a']}; other job of the same tool: "
              f"{r['b_alive']} of {r['b_before']} processes survived")
    return 0


if __name__ == "__main__":
    sys.exit(main())
