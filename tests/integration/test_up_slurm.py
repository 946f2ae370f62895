"""`orchestrator up` of a `slurm:` job file from OUTSIDE any allocation, on a real sandbox Slurm cluster (2 nodes):
`up` submits a batch job, whose batch step syncs the code to the nodes it got and runs one srun step; `up`
streams the output and exits with the job's code. The job file is an SSH one (hosts:) with only that line
changed. `orchestrator stop` from another process cancels the job: nothing left in squeue or on the nodes."""

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

pytestmark = [pytest.mark.sandbox, pytest.mark.slow, pytest.mark.timeout(240)]

@pytest.fixture(scope="module")
def cluster(slurm_sandbox_factory):
    with slurm_sandbox_factory("upsl", nodes=2) as both:
        yield both


@pytest.fixture(scope="module")
def job(cluster, tmp_path_factory) -> Path:
    """A job dir: slurm.yaml (an SSH job file with `hosts:` replaced by `slurm: {nodes: 2}`) and code/."""
    sb, _ = cluster
    root = tmp_path_factory.mktemp("upslurm")
    (root / "code").mkdir()
    (root / "code" / "data.txt").write_text("synced\n")
    text = textwrap.dedent(f"""\
        name: tiny
        hosts: {",".join(sb.hosts)}
        nproc_per_node: 1
        python: {sys.executable}
        workdir: code
        setup: cat data.txt
        env: {{OMP_NUM_THREADS: "1"}}
        run: -m orchestrator.engine --config tiny --steps 4 --run-dir {root}/engine
    """)
    (root / "slurm.yaml").write_text(text.replace(f"hosts: {','.join(sb.hosts)}", "slurm: {nodes: 2}"))
    return root


def ssh(sb) -> list[str]:
    return ["--ssh-config", str(sb.ssh_config), "--connect-timeout", "5"]


def active_jobs() -> list[str]:
    return subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True, check=True).stdout.split("\n")


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


def test_slurm_job_file_from_outside_an_allocation_trains_and_records(cluster, job):
    sb, _ = cluster
    dry = orch("up", "slurm.yaml", *ssh(sb), "--dry-run", "--run-id", "dry", cwd=job)
    assert dry.returncode == 0 and "#SBATCH --nodes=2" in dry.stdout and " up " in dry.stdout, dry.stderr
    assert not (job / "runs").exists()  # a dry run submits and writes nothing

    out = orch("up", "slurm.yaml", *ssh(sb), "--run-id", "outside", cwd=job)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "submitted Slurm job" in out.stderr
    assert "[orch] sync 1 files" in out.stdout and out.stdout.count(": setup: synced") == 2   # inside the allocation
    assert steps(job / "engine")[-1] == 4
    record = json.loads((job / "runs" / "outside" / "job.json").read_text())
    assert record["slurm_job"].isdigit() and record["exit_code"] == 0
    rows = {r["id"]: r for r in json.loads(orch("jobs", "--json", cwd=job).stdout)}
    assert rows["outside"]["state"] == "done" and rows["outside"]["name"] == "tiny"
    logs = orch("logs", "outside", cwd=job)
    assert "trained steps 1-4" in logs.stdout, logs.stdout[-2000:]
    assert wait_clean(sb) == {}


def test_stop_of_a_submitted_job_file_cancels_it(cluster, job):
    sb, _ = cluster
    run_id = "outside-stop"
    engine = job / "engine-stop"
    proc = subprocess.Popen([*ORCH, "up", "slurm.yaml", *ssh(sb), "--run-id", run_id, "--set",
                             f"run=-m orchestrator.engine --config tiny --steps 100000 --run-dir {engine}"],
                            cwd=job, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: len(steps(engine)) >= 2 or proc.poll() is not None, timeout=120), "no steps"
        assert proc.poll() is None, proc.communicate()
        job_id = json.loads((job / "runs" / run_id / "job.json").read_text())["slurm_job"]
        assert any(line.split()[0] == job_id for line in active_jobs() if line)
        follow = subprocess.Popen([*ORCH, "logs", run_id, "--follow"], cwd=job, stdout=subprocess.PIPE, text=True)
        stopped = orch("stop", run_id, "--timeout", "60", cwd=job)
        assert stopped.returncode == 0, stopped.stderr
        assert "stopped" in stopped.stdout
        assert proc.wait(timeout=30) == 128 + 15
        assert "cancelled Slurm job" in proc.stderr.read()
        follow.communicate(timeout=30)  # --follow ends with the run
        assert not [line for line in active_jobs() if line.split()[:1] == [job_id]]
        assert wait_clean(sb) == {}
        rows = {r["id"]: r for r in json.loads(orch("jobs", "--json", cwd=job).stdout)}
        assert rows[run_id]["state"] == "stopped" and rows[run_id]["exit"] == "143"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_stop_cancels_the_slurm_job_of_a_killed_up(cluster, job):
    """The head's `up` dies (SIGKILL: a closed terminal, a lost login node): the batch job runs on, and `stop`
    cancels it itself."""
    sb, _ = cluster
    run_id = "outside-lost"
    engine = job / "engine-lost"
    proc = subprocess.Popen([*ORCH, "up", "slurm.yaml", *ssh(sb), "--run-id", run_id, "--set",
                             f"run=-m orchestrator.engine --config tiny --steps 100000 --run-dir {engine}"],
                            cwd=job, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: len(steps(engine)) >= 2 or proc.poll() is not None, timeout=120), "no steps"
        proc.kill()
        proc.wait()
        rows = {r["id"]: r for r in json.loads(orch("jobs", "--json", cwd=job).stdout)}
        assert rows[run_id]["state"] == "lost"
        stopped = orch("stop", run_id, "--timeout", "60", cwd=job)
        assert stopped.returncode == 0 and "cancelled Slurm job" in stopped.stderr, stopped.stderr
        job_id = json.loads((job / "runs" / run_id / "job.json").read_text())["slurm_job"]
        assert not [line for line in active_jobs() if line.split()[:1] == [job_id]]
        assert wait_clean(sb) == {}
        rows = {r["id"]: r for r in json.loads(orch("jobs", "--json", cwd=job).stdout)}
        assert rows[run_id]["state"] == "stopped"
        again = orch("stop", run_id, cwd=job)
        assert again.returncode == 2 and "not running" in again.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_supervised_slurm_job_file_from_outside(cluster, job):
    """`supervise:` too (examples/engine-slurm.yaml): the batch step runs the supervisor, attempts as srun steps."""
    out = orch("up", "slurm.yaml", *ssh(cluster[0]), "--run-id", "outside-supervised", "--set",
               "supervise.max_restarts=0", "--set",
               f"run=-m orchestrator.engine --config tiny --steps 3 --run-dir {job}/engine-supervised", cwd=job)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "outcome: done" in out.stdout and steps(job / "engine-supervised")[-1] == 3
    rows = {r["id"]: r for r in json.loads(orch("jobs", "--json", cwd=job).stdout)}
    assert rows["outside-supervised"]["state"] == "done"
