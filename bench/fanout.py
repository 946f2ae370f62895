"""Fan-out: `orchestrator run` vs `pdsh -R ssh` vs `clush` on sandbox hosts; wall time and head memory.

    sudo .venv/bin/python bench/fanout.py                                   # 16/64 hosts timing, 64/256 memory
    sudo .venv/bin/python bench/fanout.py --runs 7 --time-hosts 16,64 --mem-hosts 64,256

Starts its own sandbox (orchestrator.sandbox, max of the host counts, removed at the end) and then measures:

1. wall time of `true` on N hosts, each tool as a fresh command (interpreter start-up included), fan-out 64,
   plus the head's CPU time (user+sys of the tool and its head-side children: pdsh's ssh clients too) and the
   whole machine's busy CPU time (/proc/stat: head + every sandbox node's sshd, shell and agent), with the
   same OpenSSH client config (sandbox ssh_config: host keys checked, curve25519 KEX) for all three;
   `orchestrator` is `run` as users get it (the sh agent), `orch-python` the same with `--agent python`,
   `orch-no-keepalive` the same with `-o ServerAliveInterval=0` (what the default SSH keepalive costs);
   one warm-up round, then --runs rounds with the tool order rotated each round (load drift hits all alike);
2. head memory per held session: each tool holds N sessions running `sleep 30` (fan-out N so all are open at
   once); once every remote sleep runs, PSS (from /proc/PID/smaps_rollup) is summed over the tool's whole
   process tree on the head (pdsh: pdsh + its N ssh clients; ours: one Python process) and divided by N.

Prints medians, min/max and the ratios ours/pdsh and ours/clush. Targets: wall time <= 1.0x pdsh on
64 hosts, memory per session <= 1.0x pdsh.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def tool_argv(tool: str, n: int, cfg: Path, fanout: int, command: list[str]) -> list[str]:
    nodes = f"node[1-{n}]"
    if tool.startswith("orch"):
        agent = {"orch-python": ["--agent", "python"], "orch-no-keepalive": ["-o", "ServerAliveInterval=0"]}.get(tool, [])
        return [sys.executable, "-m", "orchestrator", "run", "-w", nodes, "--ssh-config", str(cfg), "-f", str(fanout),
                *agent, "--", *command]
    if tool == "pdsh":
        return ["pdsh", "-R", "ssh", "-f", str(fanout), "-w", nodes, *command]
    return ["clush", "-f", str(fanout), "-w", nodes, *command]


def tool_env(cfg: Path, clush_dir: Path) -> dict[str, str]:
    return {**os.environ, "PDSH_SSH_ARGS": f"-F {cfg} -x -l%u %h", "CLUSTERSHELL_CFGDIR": str(clush_dir),
            "PYTHONPATH": str(ROOT)}


def write_clush_conf(directory: Path, cfg: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "clush.conf").write_text(
        f"[Main]\nfanout: 64\nconnect_timeout: 15\ncommand_timeout: 0\ncolor: never\nfd_max: 8192\n"
        f"history_size: 100\nnode_count: yes\nverbosity: 1\nssh_user: root\nssh_path: /usr/bin/ssh\n"
        f"ssh_options: -F {cfg}\n")


def machine_busy_s() -> float:
    """CPU seconds this machine has been busy (all cores; /proc/stat, everything but idle and iowait)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """(wall seconds, head CPU seconds: user+sys of the tool and all its head-side children, machine busy CPU)."""
    before, busy = resource.getrusage(resource.RUSAGE_CHILDREN), machine_busy_s()
    start = time.perf_counter()
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - start
    after, busy = resource.getrusage(resource.RUSAGE_CHILDREN), machine_busy_s() - busy
    if out.returncode:
        raise SystemExit(f"bench: {' '.join(argv[:6])} ... exit {out.returncode}:\n{out.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), busy


def tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in os.listdir(f"/proc/{p}/task") if os.path.exists(f"/proc/{p}/task") else []:
            try:
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
            except OSError:
                pass
    return found


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def remote_sleeps(arg: str) -> list[int]:
    """PIDs of `sleep <arg>` anywhere on the machine (sandbox hosts share the PID space)."""
    found = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", arg.encode()]:
                    found.append(int(p))
            except OSError:
                pass
    return found


def held_memory(tool: str, n: int, cfg: Path, env: dict[str, str]) -> tuple[float, int]:
    """(MB of PSS per held session, head-side processes) with n sessions running `sleep 30` (a unique arg)."""
    arg = f"30.{os.getpid()}{n}{len(tool)}"  # `sleep 30.<unique>`: tells this run's remote sleeps apart
    head = subprocess.Popen(tool_argv(tool, n, cfg, n, ["sleep", arg]), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(remote_sleeps(arg)) < n:
            if head.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"bench: {tool} holds {len(remote_sleeps(arg))}/{n} sessions: {head.stderr.read()[-2000:]}")
            time.sleep(0.2)
        time.sleep(1.0)  # let the last sessions finish their set-up allocations
        pids = tree(head.pid)
        return sum(pss_kb(p) for p in pids) / 1024 / n, len(pids)
    finally:
        # ours: the dead-man switch ends the remote sleeps; pdsh leaves them: kill what this benchmark started
        for pid in [*reversed(tree(head.pid)), *remote_sleeps(arg)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        head.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--time-hosts", default="16,64")
    ap.add_argument("--mem-hosts", default="64,256")
    args = ap.parse_args()
    time_hosts = [int(x) for x in args.time_hosts.split(",") if x]
    mem_hosts = [int(x) for x in args.mem_hosts.split(",") if x]
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root (it creates sandbox hosts)")
    from orchestrator.sandbox import Sandbox

    tools = ["orchestrator", "pdsh", "clush", "orch-python", "orch-no-keepalive"]
    t0 = time.monotonic()
    sb = Sandbox.up(f"bfan{os.getpid()}", nodes=max(time_hosts + mem_hosts))
    print(f"sandbox: {len(sb.hosts)} hosts up in {time.monotonic() - t0:.1f} s", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
            cfg = sb.ssh_config
            write_clush_conf(Path(tmp) / "clush", cfg)
            env = tool_env(cfg, Path(tmp) / "clush")
            walls: dict[tuple[str, int], list[float]] = {}
            cpus: dict[tuple[str, int], list[float]] = {}
            busy: dict[tuple[str, int], list[float]] = {}
            for n in time_hosts:
                for tool in tools:
                    timed(tool_argv(tool, n, cfg, 64, ["true"]), env)  # warm-up: page cache, sshd forks
                for i in range(args.runs):
                    for tool in tools[i % len(tools):] + tools[:i % len(tools)]:
                        wall, cpu, machine = timed(tool_argv(tool, n, cfg, 64, ["true"]), env)
                        walls.setdefault((tool, n), []).append(wall)
                        cpus.setdefault((tool, n), []).append(cpu)
                        busy.setdefault((tool, n), []).append(machine)
            print(f"\nwall time of `true`, fan-out 64, {args.runs} interleaved runs each (seconds)")
            for n in time_hosts:
                for tool in tools:
                    w = walls[(tool, n)]
                    print(f"  {n:4d} hosts  {tool:13s} median {statistics.median(w):6.3f}  min {min(w):6.3f}"
                          f"  max {max(w):6.3f}   head CPU {statistics.median(cpus[(tool, n)]):6.3f}"
                          f"  machine CPU {statistics.median(busy[(tool, n)]):6.3f}")
                med = {t: statistics.median(walls[(t, n)]) for t in tools}
                print(f"  {n:4d} hosts  ratio orchestrator/pdsh {med['orchestrator'] / med['pdsh']:.2f}x"
                      f"  orchestrator/clush {med['orchestrator'] / med['clush']:.2f}x"
                      f"  orch-python/pdsh {med['orch-python'] / med['pdsh']:.2f}x"
                      f"  orchestrator/orch-no-keepalive {med['orchestrator'] / med['orch-no-keepalive']:.2f}x")
            print("\nhead memory per held session (`sleep 30`, PSS summed over the head-side process tree)")
            for n in mem_hosts:
                mem = {}
                for tool in ("orchestrator", "pdsh"):
                    mem[tool] = held_memory(tool, n, cfg, env)
                    print(f"  {n:4d} sessions  {tool:13s} {mem[tool][0]:6.3f} MB/session"
                          f"  ({mem[tool][0] * n:7.1f} MB in {mem[tool][1]} processes)", flush=True)
                print(f"  {n:4d} sessions  ratio orchestrator/pdsh {mem['orchestrator'][0] / mem['pdsh'][0]:.2f}x")
    finally:
        sb.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
