"""Straggler detection on real sandbox hosts: a host put under a CPU quota mid-run is named and swapped for a spare.

A supervised run of the tiny engine (warm restarts) on 2 hosts x 1 process, a checkpoint every 10 steps, one
spare. The first 60 steps (6 checkpoints) are clean and must name nobody; then one host's processes go into a
10%-of-a-core CFS quota (orchestrator.sandbox.faults.cap_cpu): the supervisor must name it within 100 steps and
swap it for the spare keeper in-run (the spare restores the node's rank from its in-memory snapshot, as for a
lost node; no checkpoint waited for, no new attempt), and the run must finish every step. The threshold is 2,
not the default 1.10: ranks sharing 2 busy cores with other work differ by 1.5x and more over 50 steps
(docs/benchmarks/straggler.md); the quota makes the capped one several times slower (a sandbox host's fair
share of the 2 cores is already small under load). A burst of outside load on one core can still make a healthy
host look slow for a while: on a machine shared with other jobs this test can fail that way. 30 steps instead
of 50, and a 10% quota rather than 5%: each throttled step takes ~0.7 s here. Step times are the benchmark's.
"""

from __future__ import annotations

import contextlib

import pytest
from probes import heartbeat
from test_supervisor import check_completed, events, finish, supervise, wait_for

from orchestrator.sandbox.faults import cap_cpu

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(300)]

STEPS, EVERY = 120, 10  # named 8-16 steps after the cap at 60 in every run measured: replaced by step 80-90


def test_a_host_capped_mid_run_is_named_and_replaced_by_the_spare(sandbox, tmp_path):
    a, b, spare = sandbox.hosts[-6:-3]  # not the hosts test_supervisor.py breaks
    run_dir = tmp_path / "straggler"
    program = ["-m", "orchestrator.engine", "--", "--config", "tiny", "--steps", str(STEPS), "--checkpoint-every",
               str(EVERY), "--run-dir", str(run_dir)]
    proc = supervise(sandbox, run_dir, [a, b], "--spare-hosts", spare, "--straggler-threshold", "2",
                     "--straggler-steps", "30", "--restart", "warm", program=program, steps=STEPS)
    with contextlib.ExitStack() as undo:
        try:
            capped_at = wait_for(lambda: heartbeat(run_dir, 1, 60), timeout=120, what="60 clean steps")
            assert not [e for e in events(run_dir) if e["event"] == "straggler"], "a false alarm before the fault"
            undo.callback(cap_cpu(sandbox, b, quota=0.1))  # 10%: capped steps of ~0.7 s, not ~1.5 s
            named = wait_for(lambda: next((e for e in events(run_dir) if e["event"] == "straggler"), None),
                             timeout=120, what="the straggler event")
            evs = finish(proc, run_dir)
        finally:
            if proc.poll() is None:
                proc.kill()
    check_completed(run_dir, evs, steps=STEPS, max_gap=EVERY)
    assert proc.returncode == 0
    assert named["host"] == b and named["slowdown"] >= 2 and named["action"] == "replace in-run"
    assert named["step"] - capped_at["step"] <= 100, (named, capped_at)
    named_later = [e for e in evs if e["event"] == "straggler"][1:]
    # Bursts of load from outside land on one of the 2 shared cores and can make a healthy host slow for a while:
    # after the replacement no spare is left, so such a host may only be named, never acted on.
    assert all(e["action"] == "name (no spare left)" for e in named_later), named_later
    failure = next(e for e in evs if e["event"] == "failure")
    assert (failure["kind"], failure["host"], failure["warm"]) == ("straggler", b, True)
    diagnosis = next(e for e in evs if e["event"] == "diagnosis")
    assert (diagnosis["cause"], diagnosis["host"], diagnosis["action"], diagnosis["spare"]) == (
        "straggler", b, "warm_replace", spare)
    assert [(e["host"], e["spare"], e["warm"]) for e in evs if e["event"] == "replace"] == [(b, spare, True)]
    resumed = next(e for e in evs if e["event"] == "warm_resumed")
    assert resumed["source"] == "memory" and resumed["steps_lost"] <= 1, resumed
    assert [e["hosts"] for e in evs if e["event"] == "launch"] == [[a, b]]  # one attempt: no cold restart
    assert not [e for e in evs if e["event"] == "restart"]
    assert evs[-1]["summary"]["stragglers"][0] == b
