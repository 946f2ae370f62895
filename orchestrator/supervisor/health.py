"""Health checks between attempts: is the host reachable, does the check command pass; and a process probe
that tells a stopped or stuck rank from the ranks waiting for it.

    health = await check_hosts(["n1", "n2"], ssh=ssh, command=["nvidia-smi", "-L"], timeout=20)
    health        # {"n1": "ok", "n2": "unreachable: connection refused"}
    states = await probe_pids({"n2": [4242, 4243]}, ssh=ssh)
    states        # {"n2": {4242: "T", 4243: "S"}}   (state letters of /proc/PID/stat; "gone" when it exited)
    await kill_pids({"n2": [4242]}, ssh=ssh)          # ["n2"]: the hosts where SIGKILL was sent (warm restarts)

    dumps = await dump_stacks({"n2": [4242, 4243]}, ssh=ssh, python="/opt/venv/bin/python", timeout=20)
    dumps         # {"n2": {4242: [{"thread_name": "MainThread", "frames": [...]}, ...], 4243: "py-spy: ..."}}

dump_stacks runs `py-spy dump --pid PID --json --nonblocking` for every PID of a host at once (nonblocking: the
rank is never paused, and a SIGSTOPped one is read all the same; each dump is killed after 3/4 of `timeout`).
py-spy is looked up next to the node's Python (a venv with py-spy installed) and then on PATH; reading another
process's memory needs root or the same user with ptrace allowed (kernel.yama.ptrace_scope 0).

All three run through the fan-out (the same SSH transport and node-side agent as the run), under their own run
ids, so a check that hangs is killed with its session. The check command is an argv list (no shell); on GPU
nodes e.g. `nvidia-smi -L`, in tests a command the test controls. Exit 0 = healthy.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence

from orchestrator.contracts import new_run_id
from orchestrator.remote.fanout import run_on_async

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


# One JSON line per PID: {"pid": P, "threads": [...]} (py-spy's threads, frames without locals) or {"pid": P,
# "error": "..."}; the dumps run in parallel, so a host's answer takes one dump's time, at most the deadline.
_DUMP = ("import json, os, shutil, subprocess, sys, time\n"
         "deadline = time.monotonic() + float(sys.argv[1])\n"
         "spy = os.path.join(os.path.dirname(sys.executable), 'py-spy')\n"
         "spy = spy if os.access(spy, os.X_OK) else shutil.which('py-spy')\n"
         "if spy is None:\n"
         "    why = 'py-spy not found next to %s or on PATH' % sys.executable\n"
         "    for p in sys.argv[2:]:\n"
         "        print(json.dumps({'pid': int(p), 'error': why}))\n"
         "    sys.exit(0)\n"
         "KEEP = ('name', 'filename', 'short_filename', 'line')\n"
         "procs = [(int(p), subprocess.Popen([spy, 'dump', '--pid', p, '--json', '--nonblocking'],\n"
         "                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)) for p in sys.argv[2:]]\n"
         "for pid, proc in procs:\n"
         "    try:\n"
         "        out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))\n"
         "    except subprocess.TimeoutExpired:\n"
         "        proc.kill()\n"
         "        proc.wait()\n"
         "        print(json.dumps({'pid': pid, 'error': 'py-spy timed out after %s s' % sys.argv[1]}))\n"
         "        continue\n"
         "    try:\n"
         "        threads = json.loads(out)\n"
         "    except ValueError:\n"
         "        why = [l for l in err.decode(errors='replace').splitlines() if l.strip()] or [\n"
         "            'exit %d' % proc.returncode]\n"
         "        print(json.dumps({'pid': pid, 'error': 'py-spy: ' + why[0]}))\n"
         "        continue\n"
         "    for t in threads:\n"
         "        t['frames'] = [{k: f.get(k) for k in KEEP} for f in t.get('frames') or []]\n"
         "    print(json.dumps({'pid': pid, 'threads': threads}))\n")


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
                      python: str | Callable[[str], str] = "python3") -> dict[str, dict[int, list | str]]:
    """host -> {pid: py-spy's threads (a list), or why there are none (a string)}; a host that did not answer
    has that reason for each of its PIDs."""
    result = await _run_script(pids, _DUMP, tag="-stacks", args=(f"{timeout * 0.75:g}",), ssh=ssh,
                               transport=transport, timeout=timeout, python=python)
    dumps: dict[str, dict[int, list | str]] = {}
    for host, r in result.items():
        answers: dict[int, list | str] = {}
        for line in r.tail:
            try:
                record = json.loads(line)
                answers[int(record["pid"])] = record["threads"] if "threads" in record else str(record["error"])
            except (ValueError, KeyError, TypeError):
                continue  # not one of ours (a warning of the node's Python): the PID stays unanswered
        why = r.error or (f"exit {r.code}: {r.tail[-1] if r.tail else ''}".strip(": ") if not r.ok else
                          "no answer from the dump")
        dumps[host] = {pid: answers.get(pid, why) for pid in pids[host]}
    return dumps


def _py(python: str | Callable[[str], str], host: str) -> str:
    return python(host) if callable(python) else python


async def _run_script(pids: dict[str, list[int]], script: str, *, tag: str, args: Sequence[str] = (), ssh, transport,
                      timeout: float, python: str | Callable[[str], str]) -> dict:
    """`PYTHON -c SCRIPT ARGS PID...` on every host with PIDs, through the fan-out; its per-host results."""
    hosts = [h for h, p in pids.items() if p]
    if not hosts:
        return {}
    return await run_on_async(hosts, lambda h: [_py(python, h), "-c", script, *args, *map(str, pids[h])], ssh=ssh,
                              transport=transport, timeout=timeout, python=python, run_id=new_run_id() + tag,
                              tail_lines=max(len(p) for p in pids.values()) + 5)
