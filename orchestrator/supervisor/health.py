"""Health checks between attempts: is the host reachable, does the check command pass; and a process probe
that tells a stopped or stuck rank from the ranks waiting for it.

    health = await check_hosts(["n1", "n2"], ssh=ssh, command=["nvidia-smi", "-L"], timeout=20)
    health        # {"n1": "ok", "n2": "unreachable: connection refused"}
    states = await probe_pids({"n2": [4242, 4243]}, ssh=ssh)
    states        # {"n2": {4242: "T", 4243: "S"}}   (state letters of /proc/PID/stat; "gone" when it exited)
    await kill_pids({"n2": [4242]}, ssh=ssh)          # ["n2"]: the hosts where SIGKILL was sent (warm restarts)

    dumps = await dump_stacks({"n2": [4242, 4243]}, ssh=ssh, python="/opt/venv/bin/python", timeout=20,
                              flight={"n2": {4243: "/runs/r1/flight-recorder/rank1"}})
    dumps         # {"n2": {4242: {"threads": [{"thread_name": "MainThread", "frames": [...]}, ...]},
                  #         4243: {"error": "py-spy: ...", "flight": {"pg_status": ..., "entries": ...}}}}

dump_stacks runs rank_dump.py on every host with PIDs: `py-spy dump --pid PID --json --nonblocking` for all of
them at once (nonblocking: the rank is never paused, and a SIGSTOPped one is read all the same; each dump is
killed after 3/4 of `timeout`), and the flight recorder dump of the ranks that armed one (SIGUSR2, then the file
it writes). py-spy is looked up next to the node's Python (a venv with py-spy installed) and then on PATH;
reading another process's memory needs root or the same user with ptrace allowed (kernel.yama.ptrace_scope 0).

All three run through the fan-out (the same SSH transport and node-side agent as the run), under their own run
ids, so a check that hangs is killed with its session. The check command is an argv list (no shell); on GPU
nodes e.g. `nvidia-smi -L`, in tests a command the test controls. Exit 0 = healthy.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from orchestrator.contracts import new_run_id
from orchestrator.inline import python_source
from orchestrator.remote.fanout import run_on_async
from orchestrator.supervisor import rank_dump

__all__ = ["check_hosts", "dump_stacks", "kill_pids", "probe_pids"]

log = logging.getLogger("orchestrator.supervisor.health")

_PROBE = ("import sys\n"
          "for p in sys.argv[1:]:\n"
          "    try:\n"
          "        s = open('/proc/%s/stat' % p).read().rsplit(')', 1)[1].split()[0]\n"
          "    except OSError:\n"
          "        s = 'gone'\n"
          "    print(p, s)\n")

_KILL = ("import os, signal, sys\n"
         "for p in sys.argv[1:]:\n"
         "    try:\n"
         "        os.kill(int(p), signal.SIGKILL)\n"
         "    except OSError:\n"
         "        pass\n")


async def check_hosts(hosts: Sequence[str], *, ssh=None, transport=None, command: Sequence[str] | None = None,
                      timeout: float = 20.0, python: str | Callable[[str], str] = "python3") -> dict[str, str]:
    """host -> "ok", or why not ("unreachable: ...", "check failed: exit 1: <last line>")."""
    if not hosts:
        return {}
    argv = list(command) if command else ["true"]
    result = await run_on_async(list(hosts), argv, ssh=ssh, transport=transport, timeout=timeout, python=python,
                                run_id=new_run_id() + "-health")
    health = {}
    for host, r in result.items():
        if r.error is not None:
            health[host] = f"unreachable: {r.error}"
        elif r.exit_code != 0:
            last = r.tail[-1] if r.tail else ""
            health[host] = f"check failed: exit {r.exit_code}" + (f": {last}" if last else "")
        else:
            health[host] = "ok"
    return health


async def probe_pids(pids: dict[str, list[int]], *, ssh=None, transport=None, timeout: float = 10.0,
                     python: str | Callable[[str], str] = "python3") -> dict[str, dict[int, str]]:
    """host -> {pid: state letter}; hosts that did not answer are left out."""
    result = await _run_script(pids, _PROBE, tag="-probe", ssh=ssh, transport=transport, timeout=timeout,
                               python=python)
    states: dict[str, dict[int, str]] = {}
    for host, r in result.items():
        if r.ok:
            states[host] = {int(p): s for p, s in (line.split() for line in r.tail if len(line.split()) == 2)}
    return states


async def kill_pids(pids: dict[str, list[int]], *, ssh=None, transport=None, timeout: float = 10.0,
                    python: str | Callable[[str], str] = "python3") -> list[str]:
    """SIGKILL the given processes; the hosts that answered (a process already gone counts as killed)."""
    result = await _run_script(pids, _KILL, tag="-kill", ssh=ssh, transport=transport, timeout=timeout,
                               python=python)
    return [host for host, r in result.items() if r.ok]


async def dump_stacks(pids: dict[str, list[int]], *, ssh=None, transport=None, timeout: float = 20.0,
                      python: str | Callable[[str], str] = "python3",
                      flight: dict[str, dict[int, str]] | None = None) -> dict[str, dict[int, dict]]:
    """host -> {pid: {"threads": py-spy's threads} or {"error": why none}, with "flight" (the flight recorder's
    summary) or "flight_error" for the PIDs in flight (host -> {pid: the path it dumps to})}; a host that did not
    answer has that reason for each of its PIDs."""
    flight = flight or {}
    result = await _run_script(pids, python_source(Path(rank_dump.__file__)), tag="-stacks",
                               args=(f"{timeout * 0.75:g}",), ssh=ssh, transport=transport, timeout=timeout,
                               python=python, pid_arg=lambda h, p: f"{p}={flight[h][p]}" if p in flight.get(h, {})
                               else str(p))
    dumps: dict[str, dict[int, dict]] = {}
    for host, r in result.items():
        answers: dict[int, dict] = {}
        for line in r.tail:
            try:
                record = json.loads(line)
                answers[int(record.pop("pid"))] = record
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # not one of ours (a warning of the node's Python): the PID stays unanswered
        why = r.error or (f"exit {r.code}: {r.tail[-1] if r.tail else ''}".strip(": ") if not r.ok else
                          "no answer from the dump")
        dumps[host] = {pid: answers.get(pid, {"error": why}) for pid in pids[host]}
    return dumps


def _py(python: str | Callable[[str], str], host: str) -> str:
    return python(host) if callable(python) else python


async def _run_script(pids: dict[str, list[int]], script: str, *, tag: str, args: Sequence[str] = (), ssh, transport,
                      timeout: float, python: str | Callable[[str], str],
                      pid_arg: Callable[[str, int], str] = lambda host, pid: str(pid)) -> dict:
    """`PYTHON -c SCRIPT ARGS PID...` on every host with PIDs (pid_arg(host, pid) each), through the fan-out; its
    per-host results."""
    hosts = [h for h, p in pids.items() if p]
    if not hosts:
        return {}
    return await run_on_async(hosts, lambda h: [_py(python, h), "-c", script, *args, *(pid_arg(h, p) for p in pids[h])],
                              ssh=ssh, transport=transport, timeout=timeout, python=python, run_id=new_run_id() + tag,
                              tail_lines=max(len(p) for p in pids.values()) + 5)
