"""Small waits shared by the integration tests: a rank's heartbeat, a Slurm job's end, clean sandbox hosts.

    from probes import heartbeat, wait_job
    beat = heartbeat(run_dir, rank=1, min_step=4)      # None until rank 1 trains step >= 4
    rc = wait_job(job_id, timeout=180)                 # the job's exit code, or the test fails
    assert wait_clean(sb) == {}                        # no process but slurmd/sshd left on any host
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest


def heartbeat(run_dir: Path, rank: int, min_step: int) -> dict | None:
    """Rank's heartbeat once it is training at or past min_step (attempt 0: nothing was resumed yet)."""
    path = next((run_dir / "heartbeat").glob(f"*-rank{rank}.json"), None)
    try:
        beat = json.loads(path.read_text()) if path else None
    except (OSError, ValueError):
        return None
    return beat if beat and beat["status"] == "training" and beat["step"] >= min_step else None


def wait_job(job_id: str, timeout: float) -> int:
    """The Slurm job's exit code once it finished; the test fails after `timeout` seconds."""
    from orchestrator import slurm

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = slurm.job(job_id)
        if job is not None and job.finished:
            return job.exit_code
        time.sleep(0.25)
    pytest.fail(f"job {job_id} did not finish in {timeout} s")


IDLE_PROCESSES = {"slurmd", "sshd"}


def leftovers(sb) -> dict[str, list[str]]:
    """Processes on the sandbox hosts other than the daemons that belong there (slurmd, sshd)."""
    found = {}
    for host in sb.hosts:
        names = []
        for pid in sb.pids(host):
            try:
                names.append(Path(f"/proc/{pid}/comm").read_text().strip())
            except OSError:
                continue
        extra = [n for n in names if n not in IDLE_PROCESSES]
        if extra:
            found[host] = extra
    return found


def wait_clean(sb, timeout: float = 30.0) -> dict[str, list[str]]:
    """leftovers(sb) once it is empty, or what is still there after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (left := leftovers(sb)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left
