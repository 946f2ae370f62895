"""Test helper for `orchestrator up` runs (importable from every test module: pytest's pythonpath has tests/).

    proc = up_in_background(job_dir, "job.yaml", *ssh, "--run-id", "r1", output=log)   # a live `up` to stop
    followed = stop_from_another_process(job_dir, "r1", proc)    # stop: exit 0, "stopped"; up: 143; --follow ended
    job_rows(job_dir)["r1"]["state"]                             # `orchestrator jobs --json`, by run id
    metric_steps(engine_run_dir)                                 # the engine's steps in metrics.jsonl so far
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from orch_cli import ORCH, orch


def up_in_background(cwd: Path, *args: str, output: Path) -> subprocess.Popen:
    """`orchestrator up ARGS` with stdout and stderr in the file `output` (a pipe nobody reads would stall it)."""
    with open(output, "w") as out:
        return subprocess.Popen([*ORCH, "up", *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT)


def stop_from_another_process(cwd: Path, run_id: str, proc: subprocess.Popen, timeout: float = 60) -> str:
    """`orchestrator stop RUN` while `logs RUN --follow` runs; the followed output once --follow ended."""
    follow = subprocess.Popen([*ORCH, "logs", run_id, "--follow"], cwd=cwd, stdout=subprocess.PIPE, text=True)
    try:
        stopped = orch("stop", run_id, "--timeout", str(timeout), cwd=cwd)
        assert stopped.returncode == 0, stopped.stderr
        assert "stopped" in stopped.stdout, stopped.stdout
        assert proc.wait(timeout=30) == 128 + 15
        return follow.communicate(timeout=30)[0]  # --follow ends with the run
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.communicate()


def job_rows(cwd: Path) -> dict[str, dict]:
    return {r["id"]: r for r in json.loads(orch("jobs", "--json", cwd=cwd).stdout)}


def metric_steps(run_dir: Path) -> list[int]:
    try:
        return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    except (OSError, ValueError, KeyError):
        return []
