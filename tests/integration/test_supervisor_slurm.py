"""`orchestrator supervise --via slurm` inside an sbatch job on a real sandbox Slurm cluster (fault 8 of issue 5).

An sbatch job on 2 nodes runs the supervisor over the tiny engine (2 nodes x 1 rank, a checkpoint every 3 steps,
`--restart cold`); this test SIGKILLs rank 1 by the PID in its heartbeat file once it has trained a few steps. srun
--kill-on-bad-exit ends the step, the supervisor health-checks both nodes with single-node srun steps and
relaunches one srun step on the same nodes; the engine resumes from its newest checkpoint. The job must end 0,
every step 1..12 must be in metrics.jsonl, and events.jsonl must name the kill and the restart.

Warm restarts (the default for the engine): inside salloc --no-kill, one srun step runs a keeper per node and the
third node's spare keeper waits in a one-node step of its own; a SIGKILLed rank and later a SIGSTOPped one are
repaired inside that step, then node 0 is lost and the spare takes its place from the peer copy of its snapshots
(the same checks as over SSH, warm_runs.py); when the run ends nothing of it is left on the nodes: no process but
slurmd/sshd, nothing in their /dev/shm.

The cluster (munged, slurmctld, 2 slurmd) is this module's own, torn down by the sandbox's `down` (by PID).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from probes import heartbeat, wait_clean, wait_job
from orch_cli import ORCH
from run_tokens import wait_for
from warm_runs import check_kill_then_hang, engine_args, kill_then_hang, lose_node, reference_losses

pytestmark = [pytest.mark.sandbox, pytest.mark.slow, pytest.mark.timeout(240)]

STEPS, EVERY = 12, 3
JOB_TIMEOUT = 180


@pytest.fixture(scope="module")
def cluster(slurm_sandbox_factory):
    """(sandbox, SlurmCluster): 3 hosts (the warm test's spare is the third); SLURM_CONF set for this module."""
    with slurm_sandbox_factory("ssup", nodes=3) as both:
        yield both


def test_sigkill_of_a_rank_under_slurm_restarts_from_the_checkpoint(cluster, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    script = f"""#!/bin/bash
#SBATCH --nodes=2
#SBATCH --output={tmp_path}/%j.out
exec {sys.executable} -m orchestrator supervise --via slurm --nproc-per-node 1 --python {sys.executable} \\
    --run-dir {tmp_path}/launch --backoff 0.2 --health-timeout 20 --max-restarts 2 --restart cold \\
    -m orchestrator.engine -- --config tiny --steps {STEPS} --checkpoint-every {EVERY} --run-dir {run_dir}
"""
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    job_id = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True,
                            check=True).stdout.strip()
    out = tmp_path / f"{job_id}.out"
    try:
        deadline = time.monotonic() + JOB_TIMEOUT
        while (beat := heartbeat(run_dir, 1, EVERY + 1)) is None:
            assert time.monotonic() < deadline, out.read_text() if out.exists() else "no job output"
            time.sleep(0.05)
        os.kill(beat["pid"], signal.SIGKILL)
        code = wait_job(job_id, JOB_TIMEOUT)
    except BaseException:
        subprocess.run(["scancel", job_id])
        raise
    log = out.read_text()
    assert code == 0, log[-4000:]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {m["step"] for m in metrics} == set(range(1, STEPS + 1)), log[-4000:]
    evs = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    failure = next(e for e in evs if e["event"] == "failure")
    assert failure["kind"] == "rank_exit" and failure["signal"] == "SIGKILL" and failure["rank"] == 1, failure
    diagnosis = next(e for e in evs if e["event"] == "diagnosis")
    assert diagnosis["cause"] == "killed" and diagnosis["host"] == beat["host"], diagnosis
    restart = next(e for e in evs if e["event"] == "restart")
    assert restart["resume_step"] is not None and restart["resume_step"] >= EVERY, restart
    launches = [e for e in evs if e["event"] == "launch"]
    assert len(launches) == 2 and launches[1]["hosts"] == launches[0]["hosts"], launches
    assert evs[-1]["event"] == "done" and evs[-1]["summary"]["last_step"] == STEPS


def supervise_argv(tmp_path: Path, run_dir: Path, *args: str, config: str = "tiny",
                   engine: tuple[str, ...] = ()) -> list[str]:
    return [*ORCH, "supervise", "--via", "slurm", "--nproc-per-node", "1",
            "--python", sys.executable, "--run-dir", str(tmp_path / "launch"), "--backoff", "0.2",
            "--health-timeout", "20", *args, "-m", "orchestrator.engine", "--", "--config", config,
            "--steps", str(STEPS), "--checkpoint-every", str(EVERY), "--run-dir", str(run_dir), *engine]


@pytest.mark.parametrize("restart", ["cold", "warm"])
def test_configuration_error_under_slurm_is_exit_2_and_never_retried(cluster, tmp_path, restart):
    run_dir = tmp_path / "run"
    out = subprocess.run(["salloc", "--nodes=2", *supervise_argv(tmp_path, run_dir, "--restart", restart,
                                                                 config="no-such-config")],
                         capture_output=True, text=True, timeout=JOB_TIMEOUT)
    assert out.returncode == 2, out.stderr[-3000:]
    evs = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert evs[0]["restart"] == restart and [e["event"] for e in evs].count("launch") == 1
    assert evs[-1]["event"] == "gave_up" and "configuration error" in evs[-1]["reason"]


def test_node_failing_its_check_is_excluded_drained_and_the_run_shrinks(cluster, tmp_path):
    """A rank killed on node2, whose health check then fails: node2 is excluded and drained (with the reason),
    the run goes on with node1 alone (--nodes 1:2) from the newest checkpoint."""
    from orchestrator import slurm

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    check = f"sh -c 'test ! -e {tmp_path}/bad-$SLURMD_NODENAME'"
    proc = subprocess.Popen(["salloc", "--nodes=2", *supervise_argv(tmp_path, run_dir, "--nodes", "1:2", "--restart",
                                                                     "cold", "--drain-bad-nodes", "--health-check",
                                                                     check)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + JOB_TIMEOUT
        while (beat := heartbeat(run_dir, 1, EVERY + 1)) is None:
            assert time.monotonic() < deadline and proc.poll() is None, "rank 1 never reached step 4"
            time.sleep(0.05)
        (tmp_path / f"bad-{beat['host']}").touch()
        os.kill(beat["pid"], signal.SIGKILL)
        output, _ = proc.communicate(timeout=JOB_TIMEOUT)
        assert proc.returncode == 0, output[-4000:]
        evs = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
        bad = beat["host"]
        assert [(e["host"], e["reason"].startswith("health check: check failed")) for e in evs
                if e["event"] == "exclude"] == [(bad, True)], evs
        assert [e["host"] for e in evs if e["event"] == "drain"] == [bad]
        node = slurm.nodes()[bad]
        assert "drain" in node.state and "orchestrator supervise" in node.reason, node
        launches = [e for e in evs if e["event"] == "launch"]
        assert len(launches) == 2 and launches[1]["hosts"] == [h for h in launches[0]["hosts"] if h != bad]
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert {m["step"] for m in metrics} == set(range(1, STEPS + 1))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
        drained = [name for name, node in slurm.nodes().items() if "drain" in node.state]
        if drained:  # later tests of the module get the whole cluster back
            slurm.resume(drained)


def test_a_hang_under_slurm_names_the_stuck_rank_from_every_ranks_stack(cluster, tmp_path):
    """tests/integration/hang_script.py as srun steps: the process probe and the stack and flight recorder dumps
    reach the nodes through srun steps of the allocation (no SSH option given)."""
    sandbox, _ = cluster
    script = Path(__file__).with_name("hang_script.py")
    stuck = next(i for i, text in enumerate(script.read_text().splitlines(), 1) if text.endswith("# STUCK"))
    job = tmp_path / "job.sbatch"
    job.write_text(f"""#!/bin/bash
#SBATCH --nodes=2
#SBATCH --output={tmp_path}/%j.out
exec {sys.executable} -m orchestrator supervise --via slurm --nproc-per-node 1 --python {sys.executable} \\
    --run-dir {tmp_path}/launch --run-id hang --hang-timeout 3 --max-restarts 0 --health-timeout 20 -- {script}
""")
    job_id = subprocess.run(["sbatch", "--parsable", str(job)], capture_output=True, text=True,
                            check=True).stdout.strip()
    try:
        code = wait_job(job_id, JOB_TIMEOUT)
    except BaseException:
        subprocess.run(["scancel", job_id])
        raise
    log = (tmp_path / f"{job_id}.out").read_text()
    evs = [json.loads(line) for line in (tmp_path / "launch" / "hang" / "events.jsonl").read_text().splitlines()]
    assert code == 1 and [e["kind"] for e in evs if e["event"] == "failure"] == ["hang"], log[-4000:]
    report = next(e for e in evs if e["event"] == "hang_stacks")
    assert report["culprit_ranks"] == [1], (report, log[-4000:])
    assert report["culprit"].startswith(f"rank 1 on {report['groups'][1]['hosts']} is in stuck_in_data_loader at "
                                        f"hang_script.py:{stuck} while every other rank waits in all_reduce")
    assert report["flight_recorder"]["behind"] == [1], report  # the flight recorders, signalled through srun too
    diagnosis = next(e for e in evs if e["event"] == "diagnosis")
    assert (diagnosis["cause"], diagnosis["rank"], diagnosis["culprit"]) == ("hang", 1, report["culprit"])


def test_a_run_dir_private_to_each_node_comes_back_through_the_srun_step(cluster, tmp_path):
    """--no-shared-run-dir under Slurm: each node has its own directory at the run dir's path; the ranks'
    heartbeats and the engine's metrics lines reach the head's run dir through srun's output (the forwarder is
    each srun task), a rank SIGKILLed by the relayed heartbeat's PID is repaired warm inside the step, the
    checkpoints are node-local, and nothing of the run is left on the nodes."""
    sandbox, _ = cluster
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    private = {host: sandbox.private_dir(host, str(run_dir)) for host in sandbox.hosts}  # as the head sees each
    log = tmp_path / "supervise.log"
    argv = ["salloc", "--nodes=2", *supervise_argv(tmp_path, run_dir, "--no-shared-run-dir", "--hang-timeout", "10",
                                                   "--straggler-action", "off", engine=("--checkpoint-local",))]
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: heartbeat(run_dir, 1, EVERY + 1), timeout=JOB_TIMEOUT), log.read_text()[-3000:]
        beat = heartbeat(run_dir, 1, EVERY + 1)  # relayed to the head's run dir
        os.kill(beat["pid"], signal.SIGKILL)
        assert proc.wait(timeout=JOB_TIMEOUT) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    evs = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in evs]
    assert "warm_restart" in kinds and "restart" not in kinds and kinds[-1] == "done", evs
    assert {json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()} == \
        set(range(1, STEPS + 1))
    launch = next(e for e in evs if e["event"] == "launch")
    mine = {h: private[h] for h in launch["hosts"]}
    assert all((d / "node-checkpoints").is_dir() for d in mine.values()) and not (run_dir / "node-checkpoints").exists()
    assert not any((d / "heartbeat").exists() or (d / "events.jsonl").exists() for d in mine.values())
    assert b"\x1frelay" not in b"".join(p.read_bytes() for p in Path(launch["logs"]).glob("*.log"))
    assert wait_clean(sandbox) == {}
    assert wait_for(lambda: not in_shm(sandbox, sandbox.hosts), timeout=10), in_shm(sandbox, sandbox.hosts)


def in_shm(sandbox, hosts: list[str]) -> dict[str, list[str]]:
    """host -> the run's temp dirs (snapshots) in its /dev/shm, for the hosts that have any."""
    found = {h: [n for n in sandbox.exec(h, ["ls", "/dev/shm"]).stdout.split() if n.startswith("orch-")]
             for h in hosts}
    return {h: names for h, names in found.items() if names}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_sigkill_or_ctrl_c_of_the_supervisor_under_slurm_leaves_nothing_on_the_nodes(cluster, tmp_path, sig):
    """The keepers' step and the spare keeper's own step end with the run: no keeper, standby or snapshot dir."""
    sandbox, _ = cluster
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    proc = subprocess.Popen(["salloc", "--no-kill", "--nodes=3", *supervise_argv(tmp_path, run_dir, "--nodes", "2")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # every node's entry made its temp dir: the keepers (one a spare) are up, importing torch
        assert wait_for(lambda: len(in_shm(sandbox, sandbox.hosts)) == 3, timeout=60), in_shm(sandbox, sandbox.hosts)
        os.kill(next(p for p in _children(proc.pid) if "orchestrator" in _cmdline(p)), sig)  # salloc's child
        code = proc.wait(timeout=60)
        assert sig == signal.SIGKILL or code == 130, code  # salloc's exit code is its command's
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert wait_clean(sandbox) == {}
    assert wait_for(lambda: not in_shm(sandbox, sandbox.hosts), timeout=10), in_shm(sandbox, sandbox.hosts)


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, float]:
    """The losses of an uninterrupted run of the warm test's command."""
    return reference_losses(tmp_path_factory.mktemp("reference"))


@pytest.mark.timeout(480)
def test_a_killed_and_a_hung_rank_and_a_lost_node_are_repaired_inside_the_srun_step(cluster, reference, tmp_path):
    """Warm restarts under Slurm: one srun step, the three faults repaired in it (the lost node by the spare's
    keeper, in its own step), every loss the uninterrupted run's, and no keeper, rank or snapshot left on the
    nodes. The hung rank is probed and killed through srun steps (no SSH)."""
    sandbox, _ = cluster
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    log = tmp_path / "supervise.log"
    hosts, spare = sandbox.hosts[:2], sandbox.hosts[2]
    argv = ["salloc", "--no-kill", "--nodes=3", *ORCH, "supervise", "--via", "slurm", "--nodes", "2",
            "--nproc-per-node", "1", "--python", sys.executable, "--run-dir", str(tmp_path / "launch"), "--run-id",
            "swarm", "--hang-timeout", "3", "--backoff", "0.5", "--health-timeout", "20",
            "--straggler-action", "off",  # ranks sharing 2 busy cores differ by more than any sane threshold
            "-m", "orchestrator.engine", "--", *engine_args(run_dir)]
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        stopped = kill_then_hang(run_dir, log)
        lose_node(run_dir, sandbox, hosts[0], 0, 95)
        assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
    finally:
        sandbox.link_up(hosts[0])
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    launch = next(e for e in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())
                  if e["event"] == "launch")
    assert launch["run_id"] == "swarm-a0" and launch["hosts"] == hosts
    check_kill_then_hang(run_dir, hosts, stopped, reference, spare=spare)
    logs = Path(launch["logs"])
    assert os.listdir(logs.parent.parent) == ["swarm-a0"] and "orchestrator-warm" in (logs / "step.log").read_text()
    assert wait_clean(sandbox) == {}  # no keeper, worker or standby on any node

    survivors = [hosts[1], spare]  # the lost node's memory went with it
    assert wait_for(lambda: not in_shm(sandbox, survivors), timeout=10), in_shm(sandbox, survivors)
