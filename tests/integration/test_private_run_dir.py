"""`supervise --no-shared-run-dir` on sandbox hosts whose run dir is private to each host (no shared file system).

Each host gets its own plain directory at the run dir's path (Sandbox.private_dir), so the head's run dir and the
nodes' are three different directories at one path. The ranks' heartbeats and the engine's metrics lines must
still reach the head, over each node's SSH session: a SIGKILLed and a SIGSTOPped rank are detected and repaired
(warm, the engine's default; and cold, under torchrun), `orchestrator status` shows live steps and heartbeats from
the head's copy, and the relay lines never show in the run's logs. With the engine's node-local checkpoints
(--checkpoint-local), a cold restart after a SIGKILL resumes from each rank's own files, and a spare that replaces
a lost node restores that node's rank from the copy on the other node; every step's loss equals an uninterrupted
run's.
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
from local_torchrun import torchrun_losses
from orchestrator.engine.snapshot import snapshot_steps
from probes import heartbeat
from run_tokens import wait_for

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(300)]


def supervise(sb, run_dir: Path, run_id: str, *, steps: int, restart: str, hosts: list[str] | None = None,
              extra: tuple[str, ...] = (), engine: tuple[str, ...] = ()) -> subprocess.Popen:
    """Supervise the tiny engine on `hosts` (default: every host of the sandbox; each one, spares too, gets its
    own run dir) with extra supervise options and engine arguments."""
    for host in sb.hosts:
        sb.private_dir(host, str(run_dir))
    argv = [*ORCH, "supervise", "--hosts", ",".join(hosts or sb.hosts), *extra, "--nproc-per-node", "1",
            "--ssh-config", str(sb.ssh_config), "--python", sys.executable, "--run-dir", str(run_dir / "launch"),
            "--run-id", run_id, "--env", "OMP_NUM_THREADS=1", "--hang-timeout", "3", "--backoff", "0.5", "--restart",
            restart, "--no-shared-run-dir", "-m", "orchestrator.engine", "--", "--config", "tiny", "--steps",
            str(steps), "--run-dir", str(run_dir), *engine]
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


LOCAL_STEPS, LOCAL_EVERY = 30, 5


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, float]:
    """The losses of an uninterrupted run of the same layout (torchrun, 2 local processes, gloo)."""
    run_dir = tmp_path_factory.mktemp("reference")
    return torchrun_losses(run_dir, ["--config", "tiny", "--steps", str(LOCAL_STEPS), "--run-dir", str(run_dir)])


def supervise_local(sb, run_dir: Path, run_id: str, *, hosts: list[str], extra: tuple[str, ...] = (),
                    restart: str = "cold"):
    run_dir.mkdir()
    return supervise(sb, run_dir, run_id, steps=LOCAL_STEPS, restart=restart, hosts=hosts, extra=extra,
                     engine=("--checkpoint-every", str(LOCAL_EVERY), "--checkpoint-local"))


def check_restored(run_dir: Path, reference: dict[int, float], evs: list[dict], source: str, restored: dict) -> int:
    """Attempt 1 resumed from a node-local checkpoint (not step 0) that the supervisor named before launching it,
    its first_step event says from where, and every loss the run wrote (re-trained steps too) is the reference's;
    the step it resumed from."""
    first = [e for e in evs if e["event"] == "first_step"]
    assert len(first) == 2 and first[1]["resume_source"] == source and first[1]["restored"] == restored, first
    resumed = first[1]["resumed_from"]
    assert resumed and resumed % LOCAL_EVERY == 0, first
    launches = [e for e in evs if e["event"] == "launch"]
    # The supervisor names the newest step every rank committed; a node lost before its copy of that step reached
    # the next node (the copy is sent after the commit, training does not wait) leaves the previous step as the
    # newest one held everywhere, and the engine rightly resumes there.
    assert launches[0]["resume_step"] is None and launches[1]["resume_step"] in (resumed, resumed + LOCAL_EVERY), \
        launches
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r["step"] for r in records} == set(reference)
    assert max(abs(r["loss"] - reference[r["step"]]) for r in records) <= 1e-5
    assert not (run_dir / "node-checkpoints").exists()  # the head holds none: each node its own
    return resumed


def test_cold_restart_resumes_from_node_local_checkpoints(private_sandbox, tmp_path, reference):
    sb, run_dir = private_sandbox(nodes=2), tmp_path / "plocal"
    proc = supervise_local(sb, run_dir, "plocal", hosts=sb.hosts)
    beat = training(run_dir, 1, 12, timeout=150)
    os.kill(beat["pid"], signal.SIGKILL)
    evs = finish(proc, run_dir)
    assert [e["kind"] for e in evs if e["event"] == "failure"] == ["rank_exit"]
    n1, n2 = sb.hosts
    resumed = check_restored(run_dir, reference, evs, "local", {"0": f"local {n1}", "1": f"local {n2}"})
    assert resumed >= 10
    check_node_files(sb, run_dir)


def check_node_files(sb, run_dir: Path) -> None:
    """Each node holds its rank's newest files (the last step's included) and copies of the other rank's."""
    for rank, host in enumerate(sb.hosts):
        own = node_dir(sb, host, run_dir) / "node-checkpoints"
        assert max(snapshot_steps(own / f"rank{rank}")) == LOCAL_STEPS
        assert snapshot_steps(own / "peers" / f"rank{1 - rank}")


def test_a_warm_restart_with_node_local_checkpoints_restores_from_memory(private_sandbox, tmp_path, reference):
    sb, run_dir = private_sandbox(nodes=2), tmp_path / "pwlocal"
    proc = supervise_local(sb, run_dir, "pwlocal", hosts=sb.hosts, restart="warm")
    os.kill(training(run_dir, 1, 12, timeout=150)["pid"], signal.SIGKILL)
    evs = finish(proc, run_dir)
    assert [e["source"] for e in evs if e["event"] == "warm_resumed"] == ["memory"], evs
    assert [e["event"] for e in evs].count("launch") == 1
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(abs(r["loss"] - reference[r["step"]]) for r in records) <= 1e-5
    check_node_files(sb, run_dir)


def test_a_spare_restores_the_lost_nodes_rank_from_its_peer_copy(private_sandbox, tmp_path, reference):
    sb, run_dir = private_sandbox(nodes=3), tmp_path / "plost"
    n1, n2, spare = sb.hosts
    proc = supervise_local(sb, run_dir, "plost", hosts=[n1, n2], extra=("--spare-hosts", spare))
    try:
        training(run_dir, 1, 12, timeout=150)
        sb.lose(n2)
        evs = finish(proc, run_dir)
    finally:
        sb.link_up(n2)
        # the lost node's agent died with it, so its temp dir stays, as on a dead machine: the test removes it
        sb.exec(n2, ["find", "/tmp", "/dev/shm", "-maxdepth", "1", "-name", "orch-plost-a0-*", "-exec", "rm", "-rf",
                     "{}", "+"])
    assert {"event": "replace", "host": n2, "spare": spare} in [
        {k: e[k] for k in ("event", "host", "spare")} for e in evs if e["event"] == "replace"], evs
    check_restored(run_dir, reference, evs, "peer", {"0": f"local {n1}", "1": f"peer {n1}"})
    assert (node_dir(sb, spare, run_dir) / "node-checkpoints" / "rank1" / f"step-{LOCAL_STEPS}.pt").exists()
