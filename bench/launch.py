"""Start-up and teardown of a multi-node torchrun job: `orchestrator launch` vs plain pdsh + torchrun.

    sudo .venv/bin/python bench/launch.py --nodes 4 --nproc 2 --runs 5

Both start the same job (orchestrator.launch.examples.allreduce, gloo) on the same sandbox hosts with the same
interpreter; runs are interleaved (A B A B ...) so load drift hits both alike. Reported per tool, as medians:
  wall      command start -> command exit (every rank did its all_reduce and exited)
  first     command start -> the first RESULT line on the head (ranks are running)
Then one Ctrl-C test each: SIGINT to the launcher while the ranks sleep; when the job's last process on the hosts
is gone, and how many are left 5 s later (pdsh: ssh without a tty leaves remote commands running; launch: its agents kill them).
pdsh + torchrun is the usual hand-rolled way: one identical command per host, c10d rendezvous on the first host
(no per-host --node-rank needed). DeepSpeed's own launcher is not compared here: it needs `deepspeed` installed.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = "orchestrator.launch.examples.allreduce"


def timed(argv: list[str], env: dict[str, str], on_first=None) -> tuple[float, float | None, int]:
    start = time.monotonic()
    first: list[float] = []
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    for line in proc.stdout:
        if "RESULT " in line and not first:
            first.append(time.monotonic() - start)
    rc = proc.wait()
    return time.monotonic() - start, first[0] if first else None, rc


def launch_argv(hosts: list[str], nproc: int, ssh_config: Path, run_id: str, *job: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", "launch", "--hosts", ",".join(hosts), "--nproc-per-node",
            str(nproc), "--ssh-config", str(ssh_config), "--python", sys.executable, "--run-id", run_id,
            "--run-dir", "/tmp/orch-bench-runs", "--env", "OMP_NUM_THREADS=1", "-m", MODULE, "--", *job]


def pdsh_argv(hosts: list[str], nproc: int, port: int, run_id: str, *job: str) -> list[str]:
    remote = shlex.join(["env", "OMP_NUM_THREADS=1", sys.executable, "-m", "torch.distributed.run",
                         f"--nnodes={len(hosts)}", f"--nproc-per-node={nproc}", "--rdzv-backend=c10d",
                         f"--rdzv-endpoint={hosts[0]}:{port}", f"--rdzv-id={run_id}", "-m", MODULE, *job])
    return ["pdsh", "-R", "ssh", "-f", "64", "-w", ",".join(hosts), remote]


def job_processes(sb, marker: str) -> list[int]:
    """PIDs on the hosts of this job: torchrun (marker in its command line) and its ranks (marker in their env
    as TORCHELASTIC_RUN_ID with c10d, or our ORCH_RUN_ID)."""
    tokens = [f"ORCH_RUN_ID={marker}".encode(), f"TORCHELASTIC_RUN_ID={marker}".encode()]
    pids = []
    for host in sb.hosts:
        for pid in sb.pids(host):
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes() or any(t in env for t in tokens):
                    pids.append(pid)
            except OSError:
                pass
    return pids


def ctrl_c(argv: list[str], env: dict[str, str], sb, marker: str, ranks: int) -> tuple[int, float]:
    """Start, wait until every rank printed RESULT, SIGINT the launcher (twice for pdsh), count leftovers at +5 s."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    seen = []
    threading.Thread(target=lambda: [seen.append(l) for l in proc.stdout if "RESULT " in l], daemon=True).start()
    deadline = time.monotonic() + 300
    while len(seen) < ranks and time.monotonic() < deadline:
        time.sleep(0.2)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    if proc.poll() is None and argv[0] == "pdsh":
        proc.send_signal(signal.SIGINT)  # pdsh: the second ^C within 1 s aborts
    proc.wait(timeout=60)
    exit_s = time.monotonic() - t0
    while job_processes(sb, marker) and time.monotonic() - t0 < 5.0:
        time.sleep(0.1)
    gone_s = time.monotonic() - t0
    time.sleep(max(0.0, 5.0 - (time.monotonic() - t0)))
    left = job_processes(sb, marker)
    for pid in left:  # what the launcher left behind is ours to clean up (we started it), by PID
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return len(left), exit_s, gone_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per tool (0: only the Ctrl-C test)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/launch.py needs root (it brings up a sandbox)")
    sys.path.insert(0, str(ROOT))
    from orchestrator.sandbox import Sandbox

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PDSH_SSH_ARGS_APPEND": ""}
    sb = Sandbox.up(f"bl{os.getpid() % 10000}", nodes=args.nodes)
    env["PDSH_SSH_ARGS_APPEND"] = f"-F {sb.ssh_config}"
    hosts = sb.hosts
    results: dict[str, dict[str, list[float]]] = {"launch": {"wall": [], "first": []}, "pdsh": {"wall": [], "first": []}}
    try:
        for i in range(args.runs):
            for tool in ("launch", "pdsh"):
                run_id = f"bench-{tool}-{i}-{os.getpid()}"
                argv = (launch_argv(hosts, args.nproc, sb.ssh_config, run_id) if tool == "launch"
                        else pdsh_argv(hosts, args.nproc, 29400 + i, run_id))
                wall, first, rc = timed(argv, env)
                if rc != 0:
                    print(f"{tool} run {i}: exit {rc}", file=sys.stderr)
                results[tool]["wall"].append(wall)
                results[tool]["first"].append(first if first is not None else float("nan"))
                print(f"run {i} {tool:6s} wall {wall:6.2f} s  first rank output {first or float('nan'):6.2f} s",
                      flush=True)
        left = {}
        left["launch"] = ctrl_c(launch_argv(hosts, args.nproc, sb.ssh_config, f"bench-cc-l-{os.getpid()}", "--sleep", "600"),
                                env, sb, f"bench-cc-l-{os.getpid()}", len(hosts) * args.nproc)
        left["pdsh"] = ctrl_c(pdsh_argv(hosts, args.nproc, 29399, f"bench-cc-p-{os.getpid()}", "--sleep", "600"),
                              env, sb, f"bench-cc-p-{os.getpid()}", len(hosts) * args.nproc)
    finally:
        sb.down()
    print(f"\n{args.nodes} hosts x {args.nproc} processes, {args.runs} interleaved runs, load avg "
          f"{os.getloadavg()[0]:.1f} (2 cores)")
    if args.runs == 0:
        results = {}
    else:
        print(f"{'':8s} {'wall median':>12s} {'first-output median':>20s}")
    med = {t: {k: statistics.median(v) for k, v in r.items()} for t, r in results.items()}
    for tool in med:
        print(f"{tool:8s} {med[tool]['wall']:10.2f} s {med[tool]['first']:18.2f} s")
    if med:
        print(f"ratio launch/pdsh: wall {med['launch']['wall'] / med['pdsh']['wall']:.2f}x, "
              f"first output {med['launch']['first'] / med['pdsh']['first']:.2f}x")
    for tool, (n, exit_s, gone_s) in left.items():
        gone = f"all gone after {gone_s:.2f} s" if not n else "still running"
        print(f"Ctrl-C {tool:6s}: launcher exited after {exit_s:.2f} s; job processes {gone}; left 5 s later: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
