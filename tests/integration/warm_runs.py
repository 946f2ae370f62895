"""Test helper: warm restarts of the tiny engine over SSH (test_warm_restart.py) or Slurm (test_supervisor_slurm.py).

    losses = reference_losses(tmp_path_factory.mktemp("reference"))   # an uninterrupted run's loss per step
    proc = subprocess.Popen([..., "-m", "orchestrator.engine", "--", *engine_args(run_dir)], ...)  # supervise
    stopped = kill_then_hang(run_dir, log)      # SIGKILL rank 1 at step 20, SIGSTOP rank 0 at step 70
    lose_node(run_dir, sandbox, hosts[0], 0, 95)            # optional: then node 0 lost (a spare keeper waits)
    assert proc.wait(timeout=180) == 0
    check_kill_then_hang(run_dir, hosts, stopped, losses, spare=spare)   # all repaired in attempt 0, same losses
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from local_torchrun import torchrun_losses
from probes import heartbeat
from run_tokens import wait_for

STEPS, EVERY = 120, 40


def engine_args(run_dir: Path, steps: int = STEPS) -> list[str]:
    return ["--config", "tiny", "--steps", str(steps), "--checkpoint-every", str(EVERY), "--run-dir", str(run_dir)]


def events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def count(run_dir: Path, kind: str) -> int:
    return sum(e["event"] == kind for e in events(run_dir))


def reference_losses(run_dir: Path) -> dict[int, float]:
    """The losses of an uninterrupted run of the same command (torchrun, 2 local processes, gloo)."""
    return torchrun_losses(run_dir, engine_args(run_dir))


def memory_losses(run_dir: Path) -> dict[int, float]:
    """step -> loss of the run (a step trained again: its last loss), checking no rank ever restored from disk."""
    losses = {}
    for record in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()):
        assert record.get("resume_source") in (None, "memory"), record
        losses[record["step"]] = record["loss"]
    return losses


def assert_same_losses(run_dir: Path, reference: dict[int, float]) -> None:
    losses = memory_losses(run_dir)
    assert set(losses) == set(reference)
    assert max(abs(losses[s] - reference[s]) for s in reference) <= 1e-5


def kill_then_hang(run_dir: Path, log: Path) -> dict:
    """SIGKILL rank 1 at step 20; once that is repaired (warm_resumed), SIGSTOP rank 0 at step 70 (a hang: rank 1
    then waits for it in a collective). Returns the stopped rank's heartbeat."""
    beat = wait_for(lambda: heartbeat(run_dir, 1, 20), timeout=180) and heartbeat(run_dir, 1, 20)
    assert beat, log.read_text()[-3000:]
    os.kill(beat["pid"], signal.SIGKILL)
    assert wait_for(lambda: count(run_dir, "warm_resumed") == 1, timeout=120), events(run_dir)
    beat = wait_for(lambda: heartbeat(run_dir, 0, 70), timeout=120) and heartbeat(run_dir, 0, 70)
    assert beat, events(run_dir)
    os.kill(beat["pid"], signal.SIGSTOP)
    return beat


def lose_node(run_dir: Path, sandbox, host: str, rank: int, step: int) -> None:
    """Once `rank` (on `host`) has trained `step`, lose the host: cable pulled, every process on it killed."""
    assert wait_for(lambda: heartbeat(run_dir, rank, step), timeout=120), events(run_dir)
    sandbox.lose(host)


def check_kill_then_hang(run_dir: Path, hosts: list[str], stopped: dict, reference: dict[int, float],
                         spare: str | None = None) -> None:
    """Both faults of kill_then_hang repaired inside attempt 0 and every step's loss the uninterrupted run's; with
    `spare`, also hosts[0] lost after them (lose_node) and replaced in-run by the spare from its peer copy."""
    evs = events(run_dir)
    kinds = [e["event"] for e in evs]
    assert kinds.count("launch") == 1 and "restart" not in kinds, kinds
    failures = [e for e in evs if e["event"] == "failure"]
    lost = ["node_lost"] if spare else []
    assert [f["kind"] for f in failures] == ["rank_exit", "hang", *lost], failures
    assert failures[1]["found"] == "stopped"  # its keeper saw it stopped: no wait for --hang-timeout
    assert failures[0]["rank"] == 1 and failures[0]["signal"] == "SIGKILL" and failures[0]["host"] == hosts[1]
    assert [(d["cause"], d["action"]) for d in evs if d["event"] == "diagnosis"] == [
        ("killed", "warm_restart"), ("hang", "warm_restart"), *[("node_lost", "warm_replace")] * len(lost)]
    kill = next(e for e in evs if e["event"] == "warm_kill")
    assert kill["targets"] == {hosts[0]: [stopped["pid"]]}  # only the stopped rank, not the one waiting for it
    assert [e["generation"] for e in evs if e["event"] == "warm_restart"] == [1, 2, *[3] * len(lost)]
    resumed = [e for e in evs if e["event"] == "warm_resumed"]
    assert len(resumed) == 2 + len(lost) and all(e["steps_lost"] <= 1 for e in resumed), resumed
    if spare:
        assert failures[2]["host"] == hosts[0] and failures[2]["node_rank"] == 0
        assert [(e["host"], e["spare"], e["warm"]) for e in evs if e["event"] == "replace"] == [(hosts[0], spare, True)]
        joined = next(e for e in evs if e["event"] == "warm_spare_joined")
        assert joined["host"] == spare and joined["snapshots_from"] == hosts[1] and joined["fetched"]["0"], joined
        assert resumed[2]["source"] == "memory", resumed  # rank 0's state came from its copy on hosts[1]
    assert evs[-1]["event"] == "done" and evs[-1]["summary"]["warm_restarts"] == 2 + len(lost)
    assert_same_losses(run_dir, reference)
