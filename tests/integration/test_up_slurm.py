"""`orchestrator up` of a `slurm:` job file from OUTSIDE any allocation, on a real sandbox Slurm cluster (2 nodes):
`up` submits a batch job, whose batch step syncs the code to the nodes it got and runs one srun step; `up`
streams the output and exits with the job's code. The job file is an SSH one (hosts:) with only that line
changed. `orchestrator stop` from another process cancels the job: nothing left in squeue or on the nodes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.hosts import fold
from orch_cli import orch
from probes import wait_clean
from run_tokens import wait_for
from up_runs import job_rows, metric_steps, stop_from_another_process, up_in_background

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


def queued(job_id: str) -> bool:
    """The job is still in squeue (pending, running or completing)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    return job_id in out.split()


def training(job: Path, sb, run_id: str, engine: str) -> subprocess.Popen:
    """`up` of slurm.yaml with an endless engine run, once it has trained two steps."""
    proc = up_in_background(job, "slurm.yaml", *ssh(sb), "--run-id", run_id, "--set",
                            f"run=-m orchestrator.engine --config tiny --steps 100000 --run-dir {job / engine}",
                            output=job / f"{run_id}.out")
    assert wait_for(lambda: len(metric_steps(job / engine)) >= 2 or proc.poll() is not None, timeout=120)
    assert proc.poll() is None, (job / f"{run_id}.out").read_text()[-3000:]
    return proc


def test_slurm_job_file_from_outside_an_allocation_trains_and_records(cluster, job):
    sb, _ = cluster
    dry = orch("up", "slurm.yaml", *ssh(sb), "--dry-run", "--run-id", "dry", cwd=job)
    assert dry.returncode == 0 and "#SBATCH --nodes=2" in dry.stdout and " up " in dry.stdout, dry.stderr
    assert not (job / "runs").exists()  # a dry run submits and writes nothing

    out = orch("up", "slurm.yaml", *ssh(sb), "--run-id", "outside", cwd=job)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "submitted Slurm job" in out.stderr
    assert "[orch] sync 1 files" in out.stdout and out.stdout.count(": setup: synced") == 2   # inside the allocation
    assert metric_steps(job / "engine")[-1] == 4
    record = json.loads((job / "runs" / "outside" / "job.json").read_text())
    submitted = json.loads((job / "runs" / "outside" / "spec.json").read_text())["workdir"]
    assert Path(submitted).parent == job / "runs" / ".code"  # the code as submitted, not as the batch step finds it
    assert record["slurm_job"].isdigit() and record["exit_code"] == 0
    row = job_rows(job)["outside"]
    assert (row["state"], row["name"], row["hosts"]) == ("done", "tiny", fold(sb.hosts))
    assert f"{sb.hosts[1]}: setup: synced" in orch("logs", "outside", "--host", sb.hosts[1], cwd=job).stdout
    logs = orch("logs", "outside", cwd=job)
    assert "trained steps 1-4" in logs.stdout, logs.stdout[-2000:]
    rank0 = orch("logs", "outside", "--rank", "0", cwd=job).stdout.splitlines()  # srun's lines: [rank0]: ...
    assert rank0 and all(line.startswith("[rank0]: ") for line in rank0) and "trained steps 1-4" in rank0[-1]
    assert wait_clean(sb) == {}


def test_stop_of_a_submitted_job_file_cancels_it(cluster, job):
    sb, _ = cluster
    run_id = "outside-stop"
    proc = training(job, sb, run_id, "engine-stop")
    try:
        job_id = json.loads((job / "runs" / run_id / "job.json").read_text())["slurm_job"]
        assert queued(job_id)
        stop_from_another_process(job, run_id, proc)
        assert "cancelled Slurm job" in (job / f"{run_id}.out").read_text()
        assert not queued(job_id)
        assert wait_clean(sb) == {}
        assert (job_rows(job)[run_id]["state"], job_rows(job)[run_id]["exit"]) == ("stopped", "143")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_stop_cancels_the_slurm_job_of_a_killed_up(cluster, job):
    """The head's `up` dies (SIGKILL: a closed terminal, a lost login node): the batch job runs on, and `stop`
    cancels it itself."""
    sb, _ = cluster
    run_id = "outside-lost"
    proc = training(job, sb, run_id, "engine-lost")
    proc.kill()
    proc.wait()
    assert job_rows(job)[run_id]["state"] == "lost"
    stopped = orch("stop", run_id, "--timeout", "60", cwd=job)
    assert stopped.returncode == 0 and "cancelled Slurm job" in stopped.stderr, stopped.stderr
    assert not queued(json.loads((job / "runs" / run_id / "job.json").read_text())["slurm_job"])
    assert wait_clean(sb) == {}
    assert job_rows(job)[run_id]["state"] == "stopped"
    again = orch("stop", run_id, cwd=job)
    assert again.returncode == 2 and "not running" in again.stderr


def test_supervised_slurm_job_file_from_outside(cluster, job):
    """`supervise:` too (examples/engine-slurm.yaml): the batch step runs the supervisor, attempts as srun steps."""
    out = orch("up", "slurm.yaml", *ssh(cluster[0]), "--run-id", "outside-supervised", "--set",
               "supervise.max_restarts=0", "--set",
               f"run=-m orchestrator.engine --config tiny --steps 3 --run-dir {job}/engine-supervised", cwd=job)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "outcome: done" in out.stdout and metric_steps(job / "engine-supervised")[-1] == 3
    assert job_rows(job)["outside-supervised"]["state"] == "done"
