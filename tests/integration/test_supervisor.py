"""`orchestrator supervise` under fault injection on real sandbox hosts (sshd, torchrun, gloo, the tiny engine).

A supervised run of the engine (a checkpoint every 3 steps) on 2 hosts x 1 process of the session sandbox (its
last 3 hosts, so link faults stay away from the hosts other tests use). Faults are injected from this process:
signals by the PID in the rank's heartbeat file; a lost node = its link taken down and its processes killed
(Sandbox API). Each run must finish every step, no resume may lose more than one checkpoint interval (two where
the newest checkpoint was corrupted on purpose), and events.jsonl must name the right cause and reaction.

These are cold restarts (`--restart cold`; warm restarts: test_warm_restart.py). Cold starts dominate (torch import, gloo rendezvous: 10-40 s per attempt on 2 busy cores), so faults share
runs: one run takes faults 1, 2, 3 and 6 one after another (attempts 0-3), one takes 4 and 5 together, and
the always-crashing script has its own short run.
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
from probes import heartbeat
from orch_cli import ORCH
from orchestrator.hosts import fold

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(240)]

STEPS, EVERY = 12, 3


@pytest.fixture(scope="module")
def hosts(sandbox):
    """Three hosts at the end of the session sandbox: two run, one is the spare when a case needs one."""
    names = sandbox.hosts[-3:]
    yield names
    for host in names:  # a case that pulled a cable plugs it back, even when it failed
        sandbox.link_up(host)


def supervise(sandbox, run_dir: Path, hosts: list[str], *args: str, program: list[str] | None = None,
              steps: int = STEPS) -> subprocess.Popen:
    program = program or ["-m", "orchestrator.engine", "--", "--config", "tiny", "--steps", str(steps),
                          "--checkpoint-every", str(EVERY), "--run-dir", str(run_dir)]
    argv = [*ORCH, "supervise", "--hosts", ",".join(hosts), "--nproc-per-node", "1",
            "--ssh-config", str(sandbox.ssh_config), "--connect-timeout", "3", "--python", sys.executable,
            "--run-dir", str(run_dir / "launch"), "--env", "OMP_NUM_THREADS=1", "--backoff", "0.5",
            "--health-timeout", "5", "--restart", "cold", *args, *program]
    log = open(run_dir.parent / f"{run_dir.name}.supervisor.log", "w")
    run_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True)


def events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(predicate, timeout: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def finish(proc: subprocess.Popen, run_dir: Path, timeout: float = 200.0) -> list[dict]:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    return events(run_dir)


def check_completed(run_dir: Path, evs: list[dict], *, steps: int = STEPS, max_gap: int = EVERY) -> None:
    """Every step trained, each resume at most max_gap steps behind the last step before it, exit 0 event."""
    log = (run_dir.parent / f"{run_dir.name}.supervisor.log").read_text()
    assert evs[-1]["event"] == "done", log[-3000:]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {m["step"] for m in metrics} == set(range(1, steps + 1))
    last = 0
    for m in metrics:
        if "resumed_from" in m:
            assert last - m["resumed_from"] <= max_gap, (last, m)
        last = m["step"]
    assert evs[-1]["summary"]["last_step"] == steps


def one(evs: list[dict], kind: str) -> dict:
    found = [e for e in evs if e["event"] == kind]
    assert len(found) == 1, (kind, evs)
    return found[0]


def at_attempt(run_dir: Path, attempt: int, after: int = EVERY + 1) -> dict:
    """Rank 1's heartbeat once attempt `attempt` trained `after` steps past its resume point: past its next
    checkpoint, so every attempt makes progress (else the no-progress rule would rightly give up)."""
    def ready():
        launches = [e for e in events(run_dir) if e["event"] == "launch"]
        if len(launches) != attempt + 1:
            return None
        return heartbeat(run_dir, 1, (launches[-1]["resume_step"] or 0) + after)
    return wait_for(ready, timeout=180, what=f"attempt {attempt} training")


def wait_event(run_dir: Path, kind: str, count: int) -> None:
    wait_for(lambda: sum(e["event"] == kind for e in events(run_dir)) >= count, timeout=120,
             what=f"{count} {kind} events")


@pytest.mark.timeout(420)
def test_kill_hang_lost_node_and_unreachable_host_in_one_run(sandbox, hosts, tmp_path):
    """Fault 1 (SIGKILL of a rank: same hosts again), 2 (SIGSTOP: hang by heartbeat timeout, the stopped rank
    named), 3 (node lost, a spare given: replaced), 6 (a rank killed and its host unreachable at relaunch:
    excluded; no spare left, so the run shrinks within --nodes 1:2)."""
    a, b, spare = hosts
    run_dir = tmp_path / "faults"
    proc = supervise(sandbox, run_dir, [a, b], "--spare-hosts", spare, "--nodes", "1:2", "--hang-timeout", "5",
                     "--max-restarts", "4", steps=24)
    try:
        os.kill(at_attempt(run_dir, 0)["pid"], signal.SIGKILL)                      # fault 1
        stopped = at_attempt(run_dir, 1)
        os.kill(stopped["pid"], signal.SIGSTOP)                                      # fault 2
        at_attempt(run_dir, 2)
        sandbox.lose(b)                                                        # fault 3
        os.kill(at_attempt(run_dir, 3)["pid"], signal.SIGKILL)                      # fault 6 (rank 1 is on spare)
        wait_event(run_dir, "failure", 4)
        sandbox.link_down(spare)
        evs = finish(proc, run_dir)
    finally:
        sandbox.link_up(b)
        sandbox.link_up(spare)
    check_completed(run_dir, evs, steps=24)
    assert proc.returncode == 0
    diagnoses = [(e["cause"], e["host"], e.get("rank")) for e in evs if e["event"] == "diagnosis"]
    assert diagnoses == [("killed", b, 1), ("hang", b, 1), ("node_lost", b, None), ("killed", spare, 1)]
    failures = [e for e in evs if e["event"] == "failure"]
    assert [f["kind"] for f in failures][:2] == ["rank_exit", "hang"] and failures[0]["signal"] == "SIGKILL"
    hang = [e for e in evs if e["event"] == "diagnosis"][1]
    assert hang["pid"] == stopped["pid"] and "stopped (SIGSTOP)" in hang["detail"]
    stacks, lost = [e for e in evs if e["event"] == "hang_stacks"]  # faults 2 and 3 (no heartbeat from a lost node)
    assert stacks["culprit"].startswith(f"rank 1 on {b} (pid {stopped['pid']}) is stopped (SIGSTOP), last in ")
    assert stacks["culprit_ranks"] == [1] and hang["culprit"] == stacks["culprit"]  # its last stack, not woken
    assert [(n["ranks"], n["hosts"]) for n in lost["no_stack"]] == [([1], b)] and lost["groups"][0]["ranks"] == [0]
    excluded = [(e["host"], e["reason"].split(":")[0] + ":" + e["reason"].split(":")[1]) for e in evs
                if e["event"] == "exclude"]
    assert excluded == [(b, "health check: unreachable"), (spare, "health check: unreachable")]
    assert one(evs, "replace")["host"] == b and one(evs, "replace")["spare"] == spare
    assert (one(evs, "shrink")["from_nodes"], one(evs, "shrink")["to_nodes"]) == (2, 1)
    launches = [e for e in evs if e["event"] == "launch"]
    assert [e["hosts"] for e in launches] == [[a, b], [a, b], [a, b], [a, spare], [a]]
    summary = evs[-1]["summary"]
    assert summary["restarts"] == 4 and summary["time_lost_s"] > 0 and 0 < summary["ettr"] < 1


def test_lost_node_without_spare_shrinks_and_skips_a_corrupt_checkpoint(sandbox, hosts, tmp_path):
    """Fault 4 (node lost, no spare: dp 2 -> 1, the dp-2 checkpoint resharded on load) and fault 5 (the newest
    checkpoint truncated before the restart: the previous one is used)."""
    a, b, _ = hosts
    run_dir = tmp_path / "shrink"
    proc = supervise(sandbox, run_dir, [a, b], "--nodes", "1:2", "--hang-timeout", "5")
    try:
        wait_for(lambda: heartbeat(run_dir, 1, 7), what="rank 1 at step 7 (two checkpoints)")
        sandbox.lose(b)
        wait_event(run_dir, "failure", 1)
        newest = max((run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))
        shard = max(newest.glob("*.distcp"), key=lambda p: p.stat().st_size)
        with open(shard, "r+b") as f:
            f.truncate(shard.stat().st_size // 2)
        evs = finish(proc, run_dir)
    finally:
        sandbox.link_up(b)
    check_completed(run_dir, evs, max_gap=2 * EVERY)
    assert (one(evs, "diagnosis")["cause"], one(evs, "diagnosis")["host"]) == ("node_lost", b)
    shrink = one(evs, "shrink")
    assert (shrink["from_nodes"], shrink["to_nodes"], shrink["world_size"]) == (2, 1, 1)
    newest_step = int(newest.name[5:])
    restart = one(evs, "restart")
    assert restart["resume_step"] == newest_step - EVERY
    assert any(s.startswith(f"step-{newest_step}: truncated shard") for s in restart["skipped_checkpoints"])
    launches = [e for e in evs if e["event"] == "launch"]
    assert [e["world_size"] for e in launches] == [2, 1] and launches[1]["resume_step"] == newest_step - EVERY
    resumed = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
               if "resumed_from" in line]
    assert [r["resumed_from"] for r in resumed] == [newest_step - EVERY]  # loaded into the 1-rank layout


def test_always_crashing_script_gives_up_after_max_restarts(sandbox, hosts, tmp_path):
    """Fault 7: a script that always crashes: 1 + 2 attempts, then a clear summary; the host is not blamed."""
    run_dir = tmp_path / "crash"
    script = tmp_path / "crash.py"
    script.write_text("import sys\nprint('deliberate crash before any step', flush=True)\nsys.exit(3)\n")
    proc = supervise(sandbox, run_dir, hosts[:1], "--max-restarts", "2", "--no-progress-attempts", "5",
                     "--run-id", "crash", program=["--", str(script)])
    evs = finish(proc, run_dir / "launch" / "crash")  # no --run-dir in the program: RUN_DIR/RUN_ID
    assert proc.returncode == 1
    end = evs[-1]
    assert end["event"] == "gave_up" and end["reason"].startswith("max restarts reached (2)")
    assert [e["cause"] for e in evs if e["event"] == "diagnosis"] == ["crash"] * 3
    assert all(e["exit_code"] == 3 for e in evs if e["event"] == "diagnosis")
    assert not [e for e in evs if e["event"] == "exclude"]
    log = (tmp_path / "crash.supervisor.log").read_text()
    assert "outcome: gave_up (max restarts reached (2)" in log and "deliberate crash" in log


HANG_SCRIPT = Path(__file__).with_name("hang_script.py")


def marked_line(path: Path, mark: str) -> int:
    """The number of the line of `path` that ends with `# mark`."""
    return next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.endswith(f"# {mark}"))


@pytest.mark.timeout(180)
def test_a_hang_names_each_rank_stuck_in_its_own_code_from_every_ranks_stack_and_flight_recorder(sandbox, hosts,
                                                                                                 tmp_path):
    """4 ranks on 2 hosts; at step 3 rank 0 waits in dist.all_reduce while rank 1 sleeps in stuck_in_data_loader(),
    rank 2 waits to open a FIFO and rank 3 spins in an endless loop: before the teardown every rank's Python stack
    is dumped on its host (py-spy), and its flight recorder (SIGUSR2), and events.jsonl names each stuck rank, its
    host and its line, and the collective they never entered."""
    a, b, _ = hosts
    line_of = {mark: marked_line(HANG_SCRIPT, mark) for mark in ("STUCK", "FIFO", "SPIN", "WAITS")}
    run_dir = tmp_path / "hang"
    # --health-timeout 10: a rank's first flight recorder dump imports torch._inductor (1-2 s on this machine)
    proc = supervise(sandbox, run_dir, [a, b], "--nproc-per-node", "2", "--hang-timeout", "3", "--max-restarts", "0",
                     "--health-timeout", "10", "--run-id", "hang",
                     program=["--", str(HANG_SCRIPT), "sleep", "fifo", "spin"])
    evs = finish(proc, run_dir / "launch" / "hang")
    log = (run_dir.parent / f"{run_dir.name}.supervisor.log").read_text()
    assert proc.returncode == 1 and one(evs, "failure")["kind"] == "hang", log[-3000:]
    report = one(evs, "hang_stacks")
    line = (f"rank 1 on {a} is in stuck_in_data_loader at hang_script.py:{line_of['STUCK']}; "
            f"rank 2 on {b} is in read_from_fifo at hang_script.py:{line_of['FIFO']}; "
            f"rank 3 on {b} is in spin at hang_script.py:{line_of['SPIN']} "
            f"while every other rank waits in all_reduce at hang_script.py:{line_of['WAITS']} (main)")
    assert report["culprit"] == line and report["culprit_ranks"] == [1, 2, 3], report
    assert [(g["ranks"], g["hosts"], g["waiting"]) for g in report["groups"]] == [
        ([0], a, True), ([1], a, False), ([2], b, False), ([3], b, False)]
    assert report["groups"][1]["stack"][0] == f"stuck_in_data_loader (hang_script.py:{line_of['STUCK']})"
    # every rank dumped its flight recorder (rank 0 from inside the blocked all_reduce, rank 3 beside its loop)
    flight = report["flight_recorder"]
    assert flight["line"] == (f"group 0: ranks 1-3 on {fold([a, b])} never entered collective #3 (gloo:all_reduce at "
                              f"hang_script.py:{line_of['WAITS']} (main)) where every other rank waits; their last "
                              f"was #2"), flight
    assert flight["behind"] == [1, 2, 3] and f"attempt 0 flight recorder: {flight['line']}" in log
    assert sorted(p.name for p in (run_dir / "launch" / "hang" / "flight-recorder").iterdir()) == [
        "rank0", "rank1", "rank2", "rank3"]
    diagnosis = one(evs, "diagnosis")
    assert (diagnosis["cause"], diagnosis["host"], diagnosis["rank"], diagnosis["culprit"]) == ("hang", a, 1, line)
    assert f"attempt 0 hung: {line}" in log
    assert [e["event"] for e in evs].index("hang_stacks") < [e["event"] for e in evs].index("health")
