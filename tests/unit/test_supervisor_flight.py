"""The flight recorder in a hang: the rank's dumper (engine/flight_recorder.py) on a real process, the node-side
dump that signals it and reads the file (rank_dump.py through health.dump_stacks), and the report (flight.py)."""

import asyncio
import os
import signal
import subprocess
import sys
import time

from orchestrator.engine.flight_recorder import dump_path, run_env
from orchestrator.remote.local import LocalTransport
from orchestrator.supervisor.flight import flight_report, with_flight
from orchestrator.supervisor.health import dump_stacks
from orchestrator.supervisor.stacks import RankDump

CALLED = [{"name": "all_reduce", "filename": "/opt/venv/lib/python3.11/site-packages/torch/distributed/"
           "distributed_c10d.py", "short_filename": "torch/distributed/distributed_c10d.py", "line": 3245},
          {"name": "step", "filename": "/srv/job/train.py", "short_filename": "train.py", "line": 88}]


def summary(enqueued: int, completed: int, *, started: int = -1, op: str = "gloo:all_reduce", sizes=((4,),),
            group: str = "0") -> dict:
    entries = [{"collective_seq_id": seq, "profiling_name": op, "state": "scheduled", "retired": seq <= completed,
                "input_sizes": [list(s) for s in sizes], "is_p2p": False, "frames": CALLED}
               for seq in range(max(1, enqueued - 3), enqueued + 1)]
    return {"pg_status": {group: {"last_enqueued_collective": enqueued, "last_started_collective": started,
                                  "last_completed_collective": completed}},
            "pg_config": {}, "entries": {group: entries}}


def ranks(*flights, hosts=("n1", "n2", "n3", "n4")) -> list[RankDump]:
    return [RankDump(r, hosts[r], 100 + r, flight=f if isinstance(f, dict) else None,
                     flight_error=f if isinstance(f, str) else None) for r, f in enumerate(flights)]


def test_the_rank_that_never_entered_the_collective_the_others_wait_in_is_named_with_its_last_one():
    report = flight_report(ranks(summary(57, 56), summary(56, 56), summary(57, 56), summary(57, 56)))
    assert report["behind"] == [1]
    assert report["line"] == ("group 0: rank 1 on n2 never entered collective #57 (gloo:all_reduce at train.py:88 "
                              "(step)) where every other rank waits; its last was #56")
    (group,) = report["groups"]
    assert (group["waiting"], group["last"], group["no_dump"]) == ([0, 2, 3], {"1": 56}, [])


def test_ranks_calling_different_collectives_at_the_same_number_are_a_desync():
    report = flight_report(ranks(summary(9, 8), summary(9, 8, op="gloo:broadcast"), summary(9, 8)))
    assert report["behind"] == []
    assert report["line"] == ("group 0: the ranks disagree on collective #9: ranks 0,2 on n[1,3] call gloo:all_reduce "
                              "[[4]]; rank 1 on n2 call gloo:broadcast [[4]]")


def test_every_rank_inside_a_collective_none_done_and_the_device_states_say_who_did_not_start_it():
    report = flight_report(ranks(summary(5, 4, started=5, op="nccl:all_reduce"),
                                 summary(5, 4, started=4, op="nccl:all_reduce")))
    assert report["line"] == ("group 0: every rank with a dump entered collective #5 (nccl:all_reduce at train.py:88 "
                              "(step)) and none completed it; rank 1 on n2 did not start it on the device")
    assert report["behind"] == []


def test_a_rank_that_could_not_dump_is_said_and_not_counted_as_behind():
    report = flight_report(ranks(summary(3, 2), "no flight recorder dump: the process is stopped", summary(3, 2)))
    assert report["behind"] == [] and report["no_dump"] == {"1": "no flight recorder dump: the process is stopped"}
    assert report["line"].endswith("and none completed it; no dump from rank 1 on n2")


def test_idle_groups_are_left_out_and_no_dump_at_all_is_no_report():
    assert flight_report(ranks(summary(4, 4), summary(4, 4)))["line"] == "no collective in flight"
    lagging = summary(4, 4)  # gloo's status counts the last collective completed only when the next one comes
    lagging["pg_status"]["0"]["last_completed_collective"] = 3
    assert flight_report(ranks(lagging, lagging))["line"] == "no collective in flight"
    assert flight_report([RankDump(0, "n1", 5, threads=[])]) is None


def test_the_recorder_names_the_culprit_only_when_the_stacks_single_nobody_out():
    flight = flight_report(ranks(summary(57, 56), summary(56, 56)))
    nobody = {"culprit": "ranks 0-1 on n[1-2] all wait in synchronize at train.py:90 (step): no rank stands out",
              "culprit_ranks": []}
    merged = with_flight(nobody, flight)
    assert merged["culprit_ranks"] == [1]
    assert merged["culprit"] == f"{nobody['culprit']}; flight recorder: {flight['line']}"
    blamed = {"culprit": "rank 1 on n2 is in read at data.py:12 while ...", "culprit_ranks": [1]}
    assert with_flight(blamed, flight) == blamed | {"flight_recorder": flight}
    assert with_flight(blamed, None) == blamed


def test_the_runs_env_turns_the_recorder_on_unless_the_user_set_it():
    env = run_env("/runs/r1/flight-recorder/rank", {})
    assert env == {"TORCH_FR_BUFFER_SIZE": "2000", "TORCH_FR_DUMP_TEMP_FILE": "/runs/r1/flight-recorder/rank",
                   "TORCH_NCCL_DUMP_ON_TIMEOUT": "1"}
    assert dump_path(3, env) == "/runs/r1/flight-recorder/rank3"
    off = run_env("/p/rank", {"TORCH_NCCL_TRACE_BUFFER_SIZE": "0"})  # the older name counts too
    assert "TORCH_FR_BUFFER_SIZE" not in off and dump_path(0, off | {"TORCH_NCCL_TRACE_BUFFER_SIZE": "0"}) is None


# ---- a real rank: armed, blocked in C like a hung collective, dumped by the node-side script -------------------
RANK = """
import os, sys, time
import torch, torch.distributed as dist
from orchestrator.engine import flight_recorder
dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
path = flight_recorder.arm(0)
for _ in range(3):
    dist.all_reduce(torch.ones(2))
print(path, flush=True)
time.sleep(600)  # the main thread never returns to the interpreter, as in a hung collective's wait
"""


def test_an_armed_rank_blocked_in_c_dumps_its_recorder_for_the_node_side_script(tmp_path):
    env = os.environ | run_env(str(tmp_path / "fr" / "rank"), {})
    rank = subprocess.Popen([sys.executable, "-c", RANK], stdout=subprocess.PIPE, env=env, text=True)
    try:
        path = rank.stdout.readline().strip()
        assert path == str(tmp_path / "fr" / "rank0")
        time.sleep(0.2)  # into the sleep
        dumps = asyncio.run(dump_stacks({"localhost": [rank.pid]}, transport=LocalTransport(), python=sys.executable,
                                        timeout=30, flight={"localhost": {rank.pid: path}}))["localhost"]
        flight = dumps[rank.pid]["flight"]
        assert flight["pg_status"]["0"]["last_enqueued_collective"] == 3
        assert [e["profiling_name"] for e in flight["entries"]["0"]] == ["gloo:all_reduce"] * 3
        assert flight["entries"]["0"][-1]["frames"][-1]["filename"] == "<string>"  # the program's call site
        assert rank.poll() is None  # SIGUSR2 did not end it
        os.kill(rank.pid, signal.SIGSTOP)  # a stopped rank cannot answer: it is not asked
        stopped = asyncio.run(dump_stacks({"localhost": [rank.pid]}, transport=LocalTransport(),
                                          python=sys.executable, timeout=30, flight={"localhost": {rank.pid: path}}))
        assert stopped["localhost"][rank.pid]["flight_error"] == "no flight recorder dump: the process is stopped"
    finally:
        os.kill(rank.pid, signal.SIGCONT)
        rank.kill()
        rank.wait()


def test_without_a_buffer_or_a_dump_file_the_rank_is_not_armed():
    assert dump_path(0, {}) is None
    assert dump_path(0, {"TORCH_FR_BUFFER_SIZE": "10"}) is None
    assert dump_path(0, {"TORCH_FR_DUMP_TEMP_FILE": "/p/rank", "TORCH_FR_BUFFER_SIZE": "0"}) is None
