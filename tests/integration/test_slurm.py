"""A real Slurm 22.05 cluster (munged, slurmctld, 4 slurmd) over a 4-host sandbox: the srun wrapper, slurm-launch
inside salloc, `orchestrator submit --wait` with the engine, the exit-code contract, scancel/Ctrl-C clean-up,
and bad input that must leave nothing queued.

One cluster for the module (started by this file's fixture, ~2 s), torn down by the sandbox's `down` (by PID).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from probes import wait_clean, wait_job
from up_runs import metric_steps
from orch_cli import ORCH

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
WRAPPER = REPO / "launchers" / "srun-torchrun"
ALLREDUCE = "orchestrator.launch.examples.allreduce"
JOB_TIMEOUT = 150


@pytest.fixture(scope="module")
def cluster(slurm_sandbox_factory):
    """(sandbox, SlurmCluster): 4 hosts node1..node4 with 2 fake GPUs each; SLURM_CONF set for this module."""
    with slurm_sandbox_factory("slurm", nodes=4, gpus_per_node=2) as both:
        yield both


def results(text: str) -> list[dict]:
    return sorted((json.loads(m) for m in re.findall(r"RESULT (\{.*\})", text)), key=lambda r: r["rank"])


def assert_ranks(found: list[dict], nodes: list[str], nproc: int) -> None:
    world = len(nodes) * nproc
    assert [r["rank"] for r in found] == list(range(world)), found
    for r in found:
        assert r["world_size"] == world and r["sum"] == r["expected"]
        assert r["host"] == nodes[r["rank"] // nproc], r          # node rank i = i-th node of SLURM_JOB_NODELIST
        assert r["local_rank"] == r["rank"] % nproc


def sbatch(script: str, tmp_path: Path) -> tuple[str, Path]:
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    out = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True, check=True)
    job_id = out.stdout.strip()
    return job_id, tmp_path / f"{job_id}.out"


def wait_ranks_running(sb, count: int, timeout: float = 90.0) -> None:
    """Until `count` allreduce ranks exist across the hosts (torchrun's workers carry the module in argv)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = 0
        for host in sb.hosts:
            for pid in sb.pids(host):
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                n += ALLREDUCE.encode() in argv and b"torch.distributed.run" not in argv  # a rank, not its launcher
        if n >= count:
            return
        time.sleep(0.2)
    pytest.fail(f"{count} ranks were not running after {timeout} s")


def test_sbatch_script_with_srun_wrapper_runs_4x2_ranks(cluster, tmp_path):
    sb, _ = cluster
    script = f"""#!/bin/bash
#SBATCH --nodes=4
#SBATCH --gpus-per-node=2
#SBATCH --output={tmp_path}/%j.out
{WRAPPER} --env FROM_WRAPPER=yes -m {ALLREDUCE} -- --show-env FROM_WRAPPER --show-env SLURM_JOB_ID
"""
    job_id, log = sbatch(script, tmp_path)
    assert wait_job(job_id, JOB_TIMEOUT) == 0, log.read_text()
    found = results(log.read_text())
    assert_ranks(found, sb.hosts, nproc=2)                       # nproc from the allocation's GPUs (2 per node)
    assert {r["env"]["FROM_WRAPPER"] for r in found} == {"yes"}   # the env manifest reached every rank
    assert {r["env"]["SLURM_JOB_ID"] for r in found} == {job_id}


def node_tmp_dirs() -> set[str]:
    """The Slurm node entry's private temp dirs (the sandbox hosts share the head's /tmp)."""
    return {p.name for p in Path("/tmp").glob("orch-slurm-*")}


def test_slurm_launch_inside_salloc_runs_4x2_ranks(cluster):
    sb, _ = cluster
    before = node_tmp_dirs()
    out = subprocess.run(["salloc", "--nodes=4", "--gpus-per-node=2", *ORCH, "slurm-launch", "-m", ALLREDUCE],
                         capture_output=True, text=True, timeout=JOB_TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert_ranks(results(out.stdout + out.stderr), sb.hosts, nproc=2)
    assert node_tmp_dirs() <= before  # torchrun's per-rank files went with the step


def test_launch_via_slurm_in_an_sbatch_script_runs_4x2_ranks(cluster, tmp_path):
    """`orchestrator launch --via slurm` (the LAUNCH command's hook onto orchestrator.launch.slurm)."""
    sb, _ = cluster
    script = f"""#!/bin/bash
#SBATCH --nodes=4
#SBATCH --gpus-per-node=2
#SBATCH --output={tmp_path}/%j.out
{' '.join(ORCH)} launch --via slurm --python {sys.executable} -m {ALLREDUCE}
"""
    job_id, log = sbatch(script, tmp_path)
    assert wait_job(job_id, JOB_TIMEOUT) == 0, log.read_text()
    assert_ranks(results(log.read_text()), sb.hosts, nproc=2)


@pytest.mark.parametrize(("rank_exit", "job_exit"), [(3, 1), (2, 2)])
def test_failed_rank_gives_the_contract_exit_code(cluster, rank_exit, job_exit):
    """A crash (exit 3) on one node -> 1 (restartable); a config error (exit 2) -> 2 (do not requeue)."""
    sb, _ = cluster
    before = node_tmp_dirs()
    out = subprocess.run(["salloc", "--nodes=2", *ORCH, "slurm-launch", "-m", ALLREDUCE, "--",
                          "--fail-rank", "1", "--exit-code", str(rank_exit), "--sleep", "0"],
                         capture_output=True, text=True, timeout=JOB_TIMEOUT)
    assert out.returncode == job_exit, out.stderr[-3000:]
    assert wait_clean(sb) == {}
    assert node_tmp_dirs() <= before


def test_submit_wait_runs_the_engine_tiny_config(cluster, tmp_path):
    run_dir = tmp_path / "run"
    out = subprocess.run([*ORCH, "submit", "--nodes", "1", "--time", "5", "--wait", "--log-dir", str(tmp_path),
                          "-m", "orchestrator.engine", "--", "--config", "tiny", "--steps", "4", "--run-dir", str(run_dir)],
                         capture_output=True, text=True, timeout=JOB_TIMEOUT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    job_id = out.stdout.splitlines()[0]
    assert job_id.isdigit()
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 4


def test_warm_launch_via_slurm_repairs_a_killed_rank_inside_the_step(cluster, tmp_path):
    """`launch --via slurm --launcher warm`, no supervisor: one keeper per node in the srun step; a SIGKILLed rank
    is replaced by its node's standby, every rank resumes from memory, and rank lines carry the readable prefix."""
    sb, _ = cluster
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(["salloc", "--nodes=2", *ORCH, "launch", "--via", "slurm", "--launcher", "warm",
                             "--nproc-per-node", "1", "--python", sys.executable, "--env", "OMP_NUM_THREADS=1",
                             "-m", "orchestrator.engine", "--", "--config", "tiny", "--steps", "30",
                             "--run-dir", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()

    try:
        deadline = time.monotonic() + JOB_TIMEOUT
        while len(metric_steps(run_dir)) < 8 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        joined = [json.loads(line.split("orchestrator-warm ", 1)[1]) for line in list(lines)
                  if line.startswith("[rank1]: orchestrator-warm ") and '"joined"' in line]
        assert joined, "".join(lines)[-3000:]
        os.kill(joined[0]["pid"], signal.SIGKILL)
        assert proc.wait(timeout=JOB_TIMEOUT) == 0, "".join(lines)[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(10)
    out = "".join(lines)
    assert '"rank_exit"' in out and '"generation": 1' in out and "resumed at step" in out, out[-3000:]
    assert metric_steps(run_dir)[-1] == 30 and "[rank0]: trained steps" in out
    assert wait_clean(sb) == {}


def test_scancel_leaves_no_process_on_any_node(cluster, tmp_path):
    sb, _ = cluster
    script = f"""#!/bin/bash
#SBATCH --nodes=4
#SBATCH --output={tmp_path}/%j.out
{WRAPPER} --nproc-per-node 1 -m {ALLREDUCE} -- --sleep 120
"""
    job_id, _ = sbatch(script, tmp_path)
    wait_ranks_running(sb, 4)
    subprocess.run(["scancel", job_id], check=True)
    assert wait_job(job_id, JOB_TIMEOUT) != 0
    assert wait_clean(sb) == {}


def test_ctrl_c_on_slurm_launch_leaves_no_process(cluster):
    sb, _ = cluster
    proc = subprocess.Popen(["salloc", "--nodes=2", *ORCH, "slurm-launch", "--nproc-per-node", "1", "-m", ALLREDUCE,
                             "--", "--sleep", "120"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        wait_ranks_running(sb, 2)
        os.killpg(proc.pid, signal.SIGINT)     # what the terminal does on Ctrl-C: the whole foreground group
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    assert wait_clean(sb) == {}


def _queued() -> list[str]:
    return subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout.split()


@pytest.mark.parametrize(("args", "needle"), [
    (["--sbatch-opt=--bogus-option"], "bogus"),
    (["--partition", "nope"], "partition"),
    (["--nodes", "9"], "node configuration"),
])
def test_submit_rejected_by_slurm_is_exit_2_and_queues_nothing(cluster, tmp_path, args, needle):
    before = _queued()
    out = subprocess.run([*ORCH, "submit", "--log-dir", str(tmp_path), *args, "--", "train.py"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "config error" in out.stderr and needle in out.stderr.lower()
    assert set(_queued()) <= set(before)                          # no new job (earlier ones may have ended)


def test_slurm_launch_outside_an_allocation_is_exit_2():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_JOB")}
    out = subprocess.run([*ORCH, "slurm-launch", "-m", ALLREDUCE], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and "salloc" in out.stderr


def test_drain_with_reason_then_resume(cluster):
    from orchestrator import slurm

    sb, _ = cluster
    node = sb.hosts[-1]
    slurm.drain([node], reason="ecc errors (test)")
    try:
        state = slurm.nodes()[node]
        assert state.state in ("drained", "draining") and state.reason == "ecc errors (test)"
        assert state.gres == "gpu:2"
    finally:
        slurm.resume([node])
    assert slurm.nodes()[node].state == "idle"
