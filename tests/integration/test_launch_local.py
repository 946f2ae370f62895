"""`orchestrator launch` / `demo` on localhost alone (local transport, no sshd, no root): real torchrun, gloo."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.launch.demo import run_demo

pytestmark = pytest.mark.timeout(180)


def test_demo_on_localhost_reports_every_rank(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    outcome = run_demo(nproc=2, run_dir=str(tmp_path), job="allreduce", as_root=False)
    assert outcome.ok, outcome.launch.to_json()
    assert [(r["rank"], r["local_rank"], r["world_size"], r["sum"]) for r in outcome.rows] == [(0, 0, 2, 3), (1, 1, 2, 3)]
    log = (tmp_path / outcome.launch.plan.run_id / "logs" / "localhost.log").read_text()
    assert "localhost/0: RESULT " in log and "localhost/1: RESULT " in log


def test_failing_rank_on_localhost_is_named(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator", "launch", "--hosts", "localhost", "--nproc-per-node", "2",
         "--python", sys.executable, "--run-dir", str(tmp_path), "--run-id", "t-local-fail", "--env",
         "OMP_NUM_THREADS=1", "--failure-grace", "2", "--json", "-m", "orchestrator.launch.examples.allreduce", "--",
         "--fail-rank", "0", "--exit-code", "9"],
        capture_output=True, text=True, timeout=150)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "first failure: localhost/0 (local rank 0): exit code 9" in out.stderr
    doc = json.loads(out.stdout)  # --json: exactly one document on stdout, rank output went to stderr
    assert doc["result"]["first_failure"]["rank"] == 0 and doc["plan"]["world_size"] == 2


def _run_processes(run_id: str) -> list[int]:
    token = f"ORCH_RUN_ID={run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if token in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_sighup_tears_down_the_local_run(tmp_path):
    run_id = f"t-hup-{os.getpid()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "launch", "--hosts", "localhost", "--nproc-per-node", "1",
         "--python", sys.executable, "--run-dir", str(tmp_path), "--run-id", run_id, "--env", "OMP_NUM_THREADS=1",
         "-m", "orchestrator.launch.examples.allreduce", "--", "--sleep", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for line in proc.stdout:  # wait until the rank runs
            if "RESULT " in line:
                break
        assert _run_processes(run_id)
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=60) == 128 + signal.SIGHUP
        deadline = time.monotonic() + 10
        while _run_processes(run_id) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _run_processes(run_id) == []
        assert "teardown: clean on every host" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
