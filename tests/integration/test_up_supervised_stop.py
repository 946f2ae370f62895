"""`orchestrator stop` of a SUPERVISED job file (`supervise:`, over SSH) on a private 2-host sandbox: the tiny
engine trains with warm restarts armed (standby workers, keepers), a second process stops the run, and the run
ends with its teardown: nothing but sshd left on either host, `jobs` says stopped, `logs --follow` ends."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orch_cli import ORCH, orch
from probes import wait_clean

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(240)]


def wait_until(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def steps(engine: Path) -> list[int]:
    try:
        return [json.loads(line)["step"] for line in (engine / "metrics.jsonl").read_text().splitlines()]
    except (OSError, ValueError, KeyError):
        return []


def test_stop_of_a_supervised_job_file_tears_the_run_down(private_sandbox, tmp_path):
    sb = private_sandbox(nodes=2)
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "data.txt").write_text("synced\n")
    engine = tmp_path / "engine"
    (tmp_path / "job.yaml").write_text(textwrap.dedent(f"""\
        name: supervised
        hosts: {",".join(sb.hosts)}
        nproc_per_node: 1
        python: {sys.executable}
        workdir: code
        env: {{OMP_NUM_THREADS: "1"}}
        run: -m orchestrator.engine --config tiny --steps 100000 --checkpoint-every 50 --run-dir {engine}
        supervise: {{max_restarts: 1, hang_timeout: 60}}
    """))
    run_id = "sup-stop"
    proc = subprocess.Popen([*ORCH, "up", "job.yaml", "--ssh-config", str(sb.ssh_config), "--connect-timeout", "5",
                             "--run-id", run_id], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    follow = None
    try:
        assert wait_until(lambda: len(steps(engine)) >= 3 or proc.poll() is not None, timeout=150), "no steps"
        assert proc.poll() is None, proc.communicate()
        rows = {r["id"]: r for r in json.loads(orch("jobs", "--json", cwd=tmp_path).stdout)}
        assert rows[run_id]["state"] == "running"
        follow = subprocess.Popen([*ORCH, "logs", run_id, "--follow"], cwd=tmp_path, stdout=subprocess.PIPE,
                                  text=True)
        stopped = orch("stop", run_id, "--timeout", "60", cwd=tmp_path)
        assert stopped.returncode == 0, stopped.stderr
        assert "stopped" in stopped.stdout, stopped.stdout
        assert proc.wait(timeout=30) == 128 + 15
        _, err = proc.communicate()
        assert "outcome: stopped" in err, err[-3000:]
        followed, _ = follow.communicate(timeout=30)  # --follow ends with the run
        assert f"{sb.hosts[1]}/1: " in followed, followed[-2000:]
        assert wait_clean(sb, timeout=15) == {}
        rows = {r["id"]: r for r in json.loads(orch("jobs", "--json", cwd=tmp_path).stdout)}
        assert rows[run_id]["state"] == "stopped" and rows[run_id]["exit"] == "143"
        evs = [json.loads(line) for line in (engine / "events.jsonl").read_text().splitlines()]
        assert evs[0]["restart"] == "warm" and evs[-1]["event"] == "stopped", (evs[0], evs[-1])
    finally:
        for p in (proc, follow):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()
