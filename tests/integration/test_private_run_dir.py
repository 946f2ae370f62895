"""`supervise --no-shared-run-dir` on sandbox hosts whose run dir is private to each host (no shared file system).

Each host gets its own plain directory at the run dir's path (Sandbox.private_dir), so the head's run dir and the
nodes' are three different directories at one path. The ranks' heartbeats and the engine's metrics lines must
still reach the head, over each node's SSH session: a SIGKILLed and a SIGSTOPped rank are detected and repaired
(warm, the engine's default; and cold, under torchrun), `orchestrator status` shows live steps and heartbeats from
the head's copy, and the relay lines never show in the run's logs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from orch_cli import ORCH, orch
from probes import heartbeat
from run_tokens import wait_for

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(300)]


def supervise(sb, run_dir: Path, run_id: str, *, steps: int, restart: str) -> subprocess.Popen:
    for host in sb.hosts:
        sb.private_dir(host, str(run_dir))
    argv = [*ORCH, "supervise", "--hosts", ",".join(sb.hosts), "--nproc-per-node", "1", "--ssh-config",
            str(sb.ssh_config), "--python", sys.executable, "--run-dir", str(run_dir / "launch"), "--run-id",
            run_id, "--env", "OMP_NUM_THREADS=1", "--hang-timeout", "3", "--backoff", "0.5", "--restart", restart,
            "--no-shared-run-dir", "-m", "orchestrator.engine", "--", "--config", "tiny", "--steps", str(steps),
            "--run-dir", str(run_dir)]
    return subprocess.Popen(argv, stdout=open(run_dir.parent / f"{run_dir.name}.log", "w"), stderr=subprocess.STDOUT)


def events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def node_dir(sb, host: str, run_dir: Path) -> Path:
    """The host's own directory at the run dir's path, as the head sees it."""
    return sb.host_dir(host) / "dirs" / str(run_dir).strip("/").replace("/", "_")


def finish(proc: subprocess.Popen, run_dir: Path) -> list[dict]:
    try:
        assert proc.wait(timeout=180) == 0, (run_dir.parent / f"{run_dir.name}.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    return events(run_dir)


def check_private(sb, run_dir: Path, steps: int) -> None:
    """Metrics reached the head from node 0's private dir, nothing was written to the nodes' run dirs for the
    supervisor, and the relay lines stayed out of every log."""
    head = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(head) == steps and set(head) == set(range(1, steps + 1))
    first, second = (node_dir(sb, h, run_dir) for h in sb.hosts)
    assert (first / "metrics.jsonl").read_text().splitlines()[-1] == \
        (run_dir / "metrics.jsonl").read_text().splitlines()[-1]
    assert not (second / "metrics.jsonl").exists() and not (first / "heartbeat").exists()
    assert not (first / "events.jsonl").exists()  # the supervisor's files are the head's alone
    logs = list((run_dir / "attempts").glob("*/logs/*.log"))
    assert logs and not any(b"\x1frelay" in p.read_bytes() for p in logs)
    for host in sb.hosts:  # the node-local heartbeats went with the agents' temp dirs
        left = sb.exec(host, ["ls", "/dev/shm", "/tmp"], capture_output=True, text=True).stdout.split()
        assert not [name for name in left if name.startswith(f"orch-{run_dir.name}-")], left


def started(private_sandbox, tmp_path: Path, run_id: str, *, steps: int, restart: str, kill_at: int):
    """A 2-host sandbox with private run dirs, a supervised run on it, and rank 1's heartbeat at step kill_at."""
    sb, run_dir = private_sandbox(nodes=2), tmp_path / run_id
    run_dir.mkdir()
    proc = supervise(sb, run_dir, run_id, steps=steps, restart=restart)
    return sb, run_dir, proc, training(run_dir, 1, kill_at, timeout=150)


def training(run_dir: Path, rank: int, step: int, *, timeout: float, when=lambda: True) -> dict:
    """The rank's heartbeat on the head (relayed) once it trains `step` and when() holds; else the test fails."""
    assert wait_for(lambda: when() and heartbeat(run_dir, rank, step), timeout=timeout), \
        (events(run_dir), (run_dir.parent / f"{run_dir.name}.log").read_text()[-3000:])
    return heartbeat(run_dir, rank, step)


def test_warm_restarts_see_a_kill_and_a_hang_through_relayed_heartbeats(private_sandbox, tmp_path):
    steps = 60
    sb, run_dir, proc, beat = started(private_sandbox, tmp_path, "pwarm", steps=steps, restart="warm", kill_at=10)
    table = orch("status", run_dir, "--once", timeout=30).stdout
    assert "running" in table and all(h in table for h in sb.hosts) and "training" in table, table
    os.kill(beat["pid"], signal.SIGKILL)
    assert wait_for(lambda: any(e["event"] == "warm_resumed" for e in events(run_dir)), timeout=60), events(run_dir)
    beat = training(run_dir, 0, 30, timeout=60)
    os.kill(beat["pid"], signal.SIGSTOP)  # its keeper says so; the relayed heartbeat names the rank
    evs = finish(proc, run_dir)
    failures = [e for e in evs if e["event"] == "failure"]
    assert [f["kind"] for f in failures] == ["rank_exit", "hang"], failures
    assert failures[1]["stalled"][0]["rank"] == 0 and failures[1]["stalled"][0]["host"] == sb.hosts[0]
    assert [e["event"] for e in evs].count("launch") == 1 and evs[-1]["summary"]["warm_restarts"] == 2
    check_private(sb, run_dir, steps)


def test_cold_restarts_under_torchrun_see_a_kill_and_a_hang(private_sandbox, tmp_path):
    steps = 12
    sb, run_dir, proc, beat = started(private_sandbox, tmp_path, "pcold", steps=steps, restart="cold", kill_at=3)
    os.kill(beat["pid"], signal.SIGKILL)
    beat = training(run_dir, 0, 3, timeout=120, when=lambda: [e["event"] for e in events(run_dir)].count("launch") == 2)
    os.kill(beat["pid"], signal.SIGSTOP)
    evs = finish(proc, run_dir)
    assert [e["kind"] for e in evs if e["event"] == "failure"] == ["rank_exit", "hang"]
    assert [e["cause"] for e in evs if e["event"] == "diagnosis"] == ["killed", "hang"]
    assert [e["event"] for e in evs].count("launch") == 3 and evs[-1]["event"] == "done"
    check_private(sb, run_dir, steps)
