"""`orchestrator supervise` under fault injection on real sandbox hosts (sshd, torchrun, gloo, the tiny engine).

Each case starts a supervised run of the engine (12 steps, a checkpoint every 3) on 2 hosts x 1 process of the
session sandbox (its last hosts, so link faults stay away from the hosts other tests use), injects one fault
from this process (signals by the PID in the rank's heartbeat file; a lost node = its run processes killed and
its link taken down via the Sandbox API), and checks: the run finished every step, a resume never lost more
than one checkpoint interval, and events.jsonl names the right cause and reaction.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(240)]

STEPS, EVERY = 12, 3


@pytest.fixture(scope="module")
def hosts(sandbox):
    """Three hosts at the end of the session sandbox: two run, one is the spare when a case needs one."""
    names = sandbox.hosts[-3:]
    yield names
    for host in names:  # a case that pulled a cable plugs it back, even when it failed
        sandbox.link_up(host)


def supervise(sandbox, run_dir: Path, hosts: list[str], *args: str, program: list[str] | None = None,
              steps: int = STEPS) -> subprocess.Popen:
    program = program or ["-m", "orchestrator.engine", "--", "--config", "tiny", "--steps", str(steps),
                          "--checkpoint-every", str(EVERY), "--run-dir", str(run_dir)]
    argv = [sys.executable, "-m", "orchestrator", "supervise", "--hosts", ",".join(hosts), "--nproc-per-node", "1",
            "--ssh-config", str(sandbox.ssh_config), "--connect-timeout", "3", "--python", sys.executable,
            "--run-dir", str(run_dir / "launch"), "--env", "OMP_NUM_THREADS=1", "--backoff", "0.5",
            "--health-timeout", "5", *args, *program]
    log = open(run_dir.parent / f"{run_dir.name}.supervisor.log", "w")
    run_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True)


def events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(predicate, timeout: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def heartbeat(run_dir: Path, rank: int, min_step: int) -> dict | None:
    """Rank's heartbeat once it is training at or past min_step (attempt 0: nothing was resumed yet)."""
    path = next((run_dir / "heartbeat").glob(f"*-rank{rank}.json"), None)
    try:
        beat = json.loads(path.read_text()) if path else None
    except (OSError, ValueError):
        return None
    return beat if beat and beat["status"] == "training" and beat["step"] >= min_step else None


def finish(proc: subprocess.Popen, run_dir: Path, timeout: float = 200.0) -> list[dict]:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    return events(run_dir)


def check_completed(run_dir: Path, evs: list[dict], *, steps: int = STEPS, max_gap: int = EVERY) -> None:
    """Every step trained, each resume at most max_gap steps behind the last step before it, exit 0 event."""
    log = (run_dir.parent / f"{run_dir.name}.supervisor.log").read_text()
    assert evs[-1]["event"] == "done", log[-3000:]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {m["step"] for m in metrics} == set(range(1, steps + 1))
    last = 0
    for m in metrics:
        if "resumed_from" in m:
            assert last - m["resumed_from"] <= max_gap, (last, m)
        last = m["step"]
    assert evs[-1]["summary"]["last_step"] == steps


def one(evs: list[dict], kind: str) -> dict:
    found = [e for e in evs if e["event"] == kind]
    assert len(found) == 1, (kind, evs)
    return found[0]


def test_sigkill_of_one_rank(sandbox, hosts, tmp_path):
    run_dir = tmp_path / "kill"
    proc = supervise(sandbox, run_dir, hosts[:2])
    beat = wait_for(lambda: heartbeat(run_dir, 1, 4), what="rank 1 at step 4")
    os.kill(beat["pid"], signal.SIGKILL)
    evs = finish(proc, run_dir)
    check_completed(run_dir, evs)
    failure = next(e for e in evs if e["event"] == "failure")
    assert (failure["kind"], failure["host"], failure["rank"], failure["signal"]) == ("rank_exit", hosts[1], 1,
                                                                                       "SIGKILL")
    diagnosis = one(evs, "diagnosis")
    assert (diagnosis["cause"], diagnosis["host"], diagnosis["rank"]) == ("killed", hosts[1], 1)
    restart = one(evs, "restart")
    assert restart["hosts"] == hosts[:2] and restart["resume_step"] in (3, 6) and proc.returncode == 0
    assert not [e for e in evs if e["event"] == "exclude"]
