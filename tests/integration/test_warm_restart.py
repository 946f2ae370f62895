"""Warm restarts under `orchestrator supervise` on real sandbox hosts (sshd, node keepers, gloo, the tiny engine).

The supervisor's default for the engine: each node runs a keeper with a standby worker, every rank snapshots its
state into the node's memory every step. One run takes a SIGKILL of rank 1 and, later, a SIGSTOP of rank 0 (a
hang: its keeper reports it stopped and the supervisor kills it, without waiting for --hang-timeout); both are
repaired inside attempt 0 (no cold restart) and every step's loss equals that of an uninterrupted run of the same
command. Another run loses
node 0 (cable pulled, every process on it killed; the keepers' store is on the head, so node 0 is not special):
the spare keeper takes its place inside attempt 0, restoring rank 0 from the copy of its snapshot on the other
node, with the same losses. Two more runs end by
SIGKILL and by SIGINT of the supervisor: no process of the run (workers, standbys, keepers) and no snapshot
memory may be left on any host. Cold restarts are tested in test_supervisor.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from orch_cli import ORCH
from probes import heartbeat
from run_tokens import tokened, wait_for
from warm_runs import (STEPS, assert_same_losses, check_kill_then_hang, engine_args, events, kill_then_hang,
                       reference_losses)

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(300)]


def supervise(sandbox, hosts: list[str], run_dir: Path, run_id: str, steps: int = STEPS,
              extra: tuple[str, ...] = ()) -> subprocess.Popen:
    run_dir.mkdir(parents=True)
    argv = [*ORCH, "supervise", "--hosts", ",".join(hosts), *extra, "--nproc-per-node", "1", "--ssh-config",
            str(sandbox.ssh_config), "--python", sys.executable, "--run-dir", str(run_dir / "launch"), "--run-id",
            run_id, "--env", "OMP_NUM_THREADS=1", "--hang-timeout", "3", "--backoff", "0.5",
            "--straggler-action", "off",  # ranks sharing 2 busy cores differ by more than any sane threshold
            "-m", "orchestrator.engine", "--", *engine_args(run_dir, steps)]
    return subprocess.Popen(argv, stdout=open(run_dir / "supervise.log", "w"), stderr=subprocess.STDOUT)


def leftovers(sandbox, hosts: list[str], run_id: str) -> dict[str, list]:
    """Per host: processes carrying the attempt's token and the agent temp dirs (snapshots) left in /dev/shm."""
    left = {}
    for host in hosts:
        shm = sandbox.exec(host, ["ls", "/dev/shm"], capture_output=True, text=True).stdout.split()
        left[host] = tokened(f"{run_id}-a0", pids=sandbox.pids(host)) + [n for n in shm if run_id in n]
    return {h: v for h, v in left.items() if v}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, float]:
    """The losses of an uninterrupted run of the same command."""
    return reference_losses(tmp_path_factory.mktemp("reference"))


def test_a_killed_and_a_hung_rank_are_replaced_in_run_and_every_loss_matches(sandbox, reference, tmp_path):
    hosts, run_dir = sandbox.hosts[-5:-3], tmp_path / "warm"
    proc = supervise(sandbox, hosts, run_dir, "warm1")
    try:
        stopped = kill_then_hang(run_dir, run_dir / "supervise.log")
        assert proc.wait(timeout=180) == 0, (run_dir / "supervise.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    check_kill_then_hang(run_dir, hosts, stopped, reference)
    assert wait_for(lambda: not leftovers(sandbox, hosts, "warm1"), timeout=10), leftovers(sandbox, hosts, "warm1")


def test_a_lost_node_is_replaced_in_run_by_the_spare_from_its_peer_copy(sandbox, reference, tmp_path):
    *hosts, spare = sandbox.hosts[-12:-9]
    run_dir = tmp_path / "lost"
    proc = supervise(sandbox, hosts, run_dir, "warmlost", extra=("--spare-hosts", spare))
    try:
        beat = wait_for(lambda: heartbeat(run_dir, 0, 30), timeout=180) and heartbeat(run_dir, 0, 30)
        assert beat, (run_dir / "supervise.log").read_text()[-3000:]
        sandbox.lose(hosts[0])
        assert proc.wait(timeout=180) == 0, (run_dir / "supervise.log").read_text()[-3000:]
    finally:
        sandbox.link_up(hosts[0])
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    evs = events(run_dir)
    kinds = [e["event"] for e in evs]
    assert kinds.count("launch") == 1 and "restart" not in kinds, kinds  # repaired inside attempt 0
    assert [d["cause"] for d in evs if d["event"] == "diagnosis"] == ["node_lost"], evs
    lost = next(e for e in evs if e["event"] == "failure" and e["kind"] == "node_lost")
    assert lost["host"] == hosts[0] and lost["node_rank"] == 0
    assert next(e for e in evs if e["event"] == "replace") | {"time": 0} == \
        {"event": "replace", "host": hosts[0], "spare": spare, "warm": True, "time": 0}
    joined = next(e for e in evs if e["event"] == "warm_spare_joined")
    assert joined["host"] == spare and joined["snapshots_from"] == hosts[1] and joined["fetched"]["0"], joined
    resumed = [e for e in evs if e["event"] == "warm_resumed"]
    assert len(resumed) == 1 and resumed[0]["steps_lost"] <= 1, resumed
    assert_same_losses(run_dir, reference)  # the lost rank's state came from memory too
    survivors = [hosts[1], spare]
    assert wait_for(lambda: not leftovers(sandbox, survivors, "warmlost"), timeout=10), \
        leftovers(sandbox, survivors, "warmlost")


def test_sigkill_or_ctrl_c_of_the_supervisor_leaves_no_worker_standby_or_snapshot(sandbox, tmp_path):
    runs = {"warmkill": (sandbox.hosts[-7:-5], signal.SIGKILL), "warmint": (sandbox.hosts[-9:-7], signal.SIGINT)}
    procs = {name: supervise(sandbox, hosts, tmp_path / name, name, steps=100000) for name, (hosts, _) in runs.items()}
    try:
        for name, (hosts, sig) in runs.items():
            assert wait_for(lambda: heartbeat(tmp_path / name, 1, 5), timeout=180), \
                (tmp_path / name / "supervise.log").read_text()[-3000:]
        for name, (hosts, sig) in runs.items():  # each host: a keeper, a worker, a standby, their snapshots
            assert all(len(tokened(f"{name}-a0", pids=sandbox.pids(h))) >= 3 for h in hosts)
            assert set(leftovers(sandbox, hosts, name)) == set(hosts)
            procs[name].send_signal(sig)
        assert procs["warmint"].wait(timeout=60) == 130
        assert procs["warmkill"].wait(timeout=10) == -signal.SIGKILL
        for name, (hosts, _) in runs.items():
            assert wait_for(lambda: not leftovers(sandbox, hosts, name), timeout=30), leftovers(sandbox, hosts, name)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
