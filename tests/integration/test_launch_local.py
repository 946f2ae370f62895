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
from orch_cli import ORCH

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
        [*ORCH, "launch", "--hosts", "localhost", "--nproc-per-node", "2",
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
        [*ORCH, "launch", "--hosts", "localhost", "--nproc-per-node", "1",
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


SPAMMER = """
import sys
out = sys.stdout.buffer
out.write(b"bytes: caf\\xe9 \\xff\\xfe end\\n")
for i in range(20000):
    out.write(b"line %05d " % i + b"x" * 90 + b"\\n")
out.write(b"done\\n")
out.flush()
"""


def test_full_run_dir_warns_once_and_the_run_goes_on(tmp_path):
    """A 64 KiB tmpfs as the run dir fills up mid-run: one warning naming the log and ENOSPC, the terminal
    stream and the run go on, and the end says in one line that result.json could not be written."""
    script, mnt = tmp_path / "spam.py", tmp_path / "full"
    script.write_text(SPAMMER)
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    try:
        out = subprocess.run(
            [*ORCH, "launch", "--hosts", "localhost", "--nproc-per-node", "1",
             "--python", sys.executable, "--run-dir", str(mnt), "--run-id", "t-full", "--", str(script)],
            capture_output=True, timeout=150)
        log = (mnt / "t-full" / "logs" / "localhost.log").read_bytes()
        result_written = (mnt / "t-full" / "result.json").exists()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    stderr = out.stderr.decode(errors="replace")
    assert out.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    warnings = [line for line in stderr.splitlines() if "cannot write" in line]
    assert "logs/localhost.log (ENOSPC" in warnings[0], stderr[-3000:]
    assert len(warnings) == (1 if result_written else 2)
    assert result_written or "result.json" in warnings[1]
    stdout = out.stdout.splitlines()
    assert stdout[-1] == b"localhost/0: done" and sum(b"x" * 90 in line for line in stdout) == 20000
    # torchrun's --tee reads the rank's output as text, so undecodable bytes are U+FFFD before they leave the node
    # (what the head receives it logs byte for byte: tests/unit/test_launch_plan.py)
    assert log.startswith("localhost/0: bytes: caf\ufffd \ufffd\ufffd end\n".encode())
