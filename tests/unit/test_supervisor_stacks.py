"""Where hung ranks are stuck: stacks.py over recorded py-spy dumps, and the node-side dump on real processes.

The dumps in data/pyspy/ were recorded with `py-spy dump --pid PID --json --nonblocking` (py-spy 0.4.3, CPython
3.11) on a 2-rank torchrun (gloo) of a script whose rank 1 sleeps in stuck_in_data_loader() while rank 0 waits
in dist.all_reduce, and on the engine (`-m orchestrator.engine --config tiny`) with rank 1 SIGSTOPped during its
optimizer step; paths rewritten to /opt/venv and /srv/job (see data/pyspy/README.md).
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.hosts import Host
from orchestrator.launch.plan import LaunchSpec, build_plan
from orchestrator.remote.local import LocalTransport
from orchestrator.supervisor import Supervisor, SupervisorConfig
from orchestrator.supervisor.diagnosis import Attempt, diagnose
from orchestrator.supervisor.health import dump_stacks
from orchestrator.supervisor.policy import Limits
from orchestrator.supervisor.runner import AttemptResult
from orchestrator.supervisor.stacks import RankDump, Where, hang_stacks, main_thread, where

DATA = Path(__file__).parent / "data" / "pyspy"


def dump(name: str) -> list[dict]:
    return json.loads((DATA / name).read_text())


SCRIPT_0, SCRIPT_1 = dump("script_rank0_all_reduce.json"), dump("script_rank1_stuck.json")
ENGINE_0, ENGINE_1 = dump("engine_rank0_all_reduce.json"), dump("engine_rank1_stopped.json")
IN_ALL_REDUCE = "all_reduce at orchestrator/engine/train.py:150 (_Trainer._global_loss)"


def frames(threads: list[dict]) -> list[dict]:
    return main_thread(threads)["frames"]


def test_a_rank_is_placed_at_the_programs_line_inside_the_collective_it_waits_in():
    assert where(frames(SCRIPT_0)) == Where("main", "hang.py", 21, call="all_reduce", waiting=True)
    assert where(frames(ENGINE_0)).label == IN_ALL_REDUCE and where(frames(ENGINE_0)).waiting


def test_a_rank_in_its_own_code_is_placed_there_and_does_not_wait():
    assert where(frames(SCRIPT_1)) == Where("stuck_in_data_loader", "hang.py", 10)
    assert where(frames(SCRIPT_1)).label == "stuck_in_data_loader at hang.py:10"


def test_torch_frames_are_skipped_but_name_what_the_rank_is_doing():
    place = where(frames(ENGINE_1))  # inside Adam: torch/optim frames under _Trainer._step
    assert place.label == "_single_tensor_adam at orchestrator/engine/train.py:171 (_Trainer._step)"
    assert not place.waiting


def test_the_main_thread_is_chosen_among_threads_and_threading_frames_are_skipped():
    threads = dump("threads_main_in_read_batch.json")
    assert threads[0]["thread_name"] == "prefetch"  # py-spy lists it first
    assert where(frames(threads)).label == "read_batch at threads.py:5"
    worker = where(threads[0]["frames"])
    assert worker.label == "Condition.wait at threads.py:3 (prefetch_worker)"  # threading.py is the stdlib


def test_a_functional_collective_counts_as_waiting():
    torch_file = "/opt/venv/lib/python3.11/site-packages/torch/distributed/_functional_collectives.py"
    stack = [{"name": "wait_tensor", "filename": torch_file, "short_filename": torch_file.split("site-packages/")[1],
              "line": 140},
             {"name": "forward", "filename": "/srv/job/tp.py", "short_filename": "tp.py", "line": 7}]
    assert where(stack) == Where("forward", "tp.py", 7, call="wait_tensor", waiting=True)


def test_a_stack_entirely_inside_libraries_is_placed_at_its_outermost_frame():
    inside = [f for f in frames(ENGINE_0) if f["short_filename"].startswith("torch/")]
    assert where(inside) == Where("_exception_logger.<locals>.wrapper", "torch/distributed/c10d_logger.py", 83,
                                  call="all_reduce", waiting=True)
    assert where([]) is None


def test_two_ranks_the_one_outside_the_collective_is_the_culprit():
    report = hang_stacks([RankDump(0, "n1", 10889, SCRIPT_0), RankDump(1, "n2", 10890, SCRIPT_1)])
    assert report["culprit"] == ("rank 1 on n2 is in stuck_in_data_loader at hang.py:10 while every other rank "
                                 "waits in all_reduce at hang.py:21 (main)")
    assert report["culprit_ranks"] == [1] and report["no_stack"] == []
    first, second = report["groups"]
    assert (first["where"], first["ranks"], first["hosts"], first["waiting"]) == (
        "all_reduce at hang.py:21 (main)", [0], "n1", True)
    assert second["stack"] == ["stuck_in_data_loader (hang.py:10)", "main (hang.py:20)", "<module> (hang.py:27)"]


def sixteen(odd: dict[int, list[dict]] | None = None, errors: dict[int, str] | None = None) -> list[RankDump]:
    """16 ranks on n[1-2] x 8, all in the engine's all_reduce but the odd ones."""
    odd, errors = odd or {}, errors or {}
    return [RankDump(r, f"n{r // 8 + 1}", 100 + r, threads=None if r in errors else odd.get(r, ENGINE_0),
                     error=errors.get(r)) for r in range(16)]


def test_one_rank_among_sixteen_is_named_against_the_fifteen_waiting():
    report = hang_stacks(sixteen({13: SCRIPT_1}))
    assert report["culprit"] == (f"rank 13 on n2 is in stuck_in_data_loader at hang.py:10 while every other rank "
                                 f"waits in {IN_ALL_REDUCE}")
    assert [(g["ranks"], g["hosts"]) for g in report["groups"]] == [
        ([r for r in range(16) if r != 13], "n[1-2]"), ([13], "n2")]


def test_a_stopped_rank_is_the_culprit_with_its_last_stack_even_where_the_others_are():
    report = hang_stacks(sixteen({5: ENGINE_1}), states={"n1": {105: "T", 101: "S"}})
    assert report["culprit"] == ("rank 5 on n1 (pid 105) is stopped (SIGSTOP), last in _single_tensor_adam at "
                                 f"orchestrator/engine/train.py:171 (_Trainer._step) while every other rank waits "
                                 f"in {IN_ALL_REDUCE}")
    assert report["culprit_ranks"] == [5] and report["groups"][1]["states"] == {"5": "T"}
    same_place = hang_stacks(sixteen(), states={"n2": {109: "T"}})
    assert same_place["culprit"] == (f"rank 9 on n2 (pid 109) is stopped (SIGSTOP), last in {IN_ALL_REDUCE} "
                                     f"while every other rank waits in {IN_ALL_REDUCE}")
    split = hang_stacks(sixteen({r: SCRIPT_0 for r in range(10, 16)}), states={"n2": {109: "T"}})
    assert split["culprit"].endswith(f"while 9 of the other 15 ranks wait in {IN_ALL_REDUCE}")
    assert same_place["culprit_ranks"] == [9]


def test_every_rank_in_the_same_place_names_nobody():
    report = hang_stacks(sixteen())
    assert report["culprit"] == f"ranks 0-15 on n[1-2] all wait in {IN_ALL_REDUCE}: no rank stands out"
    assert report["culprit_ranks"] == []


def test_ranks_without_a_stack_are_said_once_per_reason_and_the_rest_still_grouped():
    missing = "py-spy not found next to /opt/venv/bin/python or on PATH"
    report = hang_stacks(sixteen({3: SCRIPT_1}, errors={r: missing for r in range(8, 16)}))
    assert report["culprit"] == (f"rank 3 on n1 is in stuck_in_data_loader at hang.py:10 while every other rank "
                                 f"waits in {IN_ALL_REDUCE}; no stack from ranks 8-15 on n2: {missing}")
    assert report["no_stack"] == [{"error": missing, "ranks": list(range(8, 16)), "hosts": "n2"}]
    nothing = hang_stacks(sixteen(errors=dict.fromkeys(range(16), "dump exit 255: timed out after 5 s")))
    assert nothing["culprit"] == "no stack from ranks 0-15 on n[1-2]: dump exit 255: timed out after 5 s"
    assert nothing["groups"] == [] and nothing["culprit_ranks"] == []


def test_many_odd_groups_are_counted_past_the_first_three():
    odd = {r: [{"pid": 100 + r, "thread_name": "MainThread", "os_thread_id": 100 + r,
                "frames": [{"name": f"load_{r}", "filename": "/srv/job/data.py", "short_filename": "data.py",
                            "line": r}]}] for r in (1, 2, 3, 4, 5)}
    report = hang_stacks(sixteen(odd))
    assert report["culprit"].startswith("rank 1 on n1 is in load_1 at data.py:1; rank 2 on n1 is in load_2 at "
                                        "data.py:2; rank 3 on n1 is in load_3 at data.py:3; 2 more group(s) "
                                        "elsewhere while every other rank waits in all_reduce")
    assert report["culprit_ranks"] == [1, 2, 3, 4, 5]


PLAN = build_plan(LaunchSpec(program=("train.py",), run_id="r1", nproc_per_node=2), [Host("n1", 2), Host("n2", 2)])


def test_a_hang_diagnosis_blames_the_rank_the_stacks_single_out_and_carries_the_line():
    attempt = Attempt(0, PLAN, 0.0)
    attempt.result = AttemptResult(exit_code=1)
    attempt.hang = [{"host": "n1", "rank": 0, "pid": 10, "step": 5}, {"host": "n2", "rank": 3, "pid": 20, "step": 5}]
    attempt.probe = {"n1": {10: "S"}, "n2": {20: "S"}}
    attempt.stacks = hang_stacks([RankDump(0, "n1", 10, SCRIPT_0), RankDump(3, "n2", 20, SCRIPT_1)], attempt.probe)
    event = diagnose(attempt, {"n1": "ok", "n2": "ok"}).to_event()
    assert (event["cause"], event["host"], event["rank"]) == ("hang", "n2", 3)
    assert event["culprit"].startswith("rank 3 on n2 is in stuck_in_data_loader at hang.py:10")


class HangingRunner:
    """An AttemptRunner whose first attempt hangs (stale heartbeats from ranks 0 and 1, waits for the stop) with the
    recorded script dumps on n1 and n2; its second attempt succeeds."""

    def __init__(self, heartbeat_dir: Path):
        self.heartbeat_dir, self.attempts, self.asked = heartbeat_dir, 0, []

    async def run_attempt(self, plan, *, sink, stop):
        self.attempts += 1
        if self.attempts > 1:
            return AttemptResult(exit_code=0)
        for rank, host, pid in ((0, "n1", 10889), (1, "n2", 10890)):
            beat = {"rank": rank, "host": host, "pid": pid, "step": 2, "status": "training", "time": 1.0}
            (self.heartbeat_dir / f"{host}-rank{rank}.json").write_text(json.dumps(beat))
        await stop.wait()
        return AttemptResult(exit_code=1)

    async def check_hosts(self, hosts, *, command, timeout):
        return dict.fromkeys(hosts, "ok")

    async def probe_pids(self, pids, *, timeout):
        return {host: dict.fromkeys(p, "S") for host, p in pids.items()}

    async def dump_stacks(self, pids, *, python, timeout, flight):
        self.asked.append((pids, python("n1"), flight))
        return {"n1": {10889: {"threads": SCRIPT_0}}, "n2": {10890: {"threads": SCRIPT_1}}}

    def exclude(self, host, reason):
        return False


def test_the_loop_dumps_every_rank_before_teardown_and_names_the_culprit(tmp_path, caplog):
    cfg = SupervisorConfig(spec=LaunchSpec(program=("train.py",), run_id="r1", nproc_per_node=1, python=("/opt/py",)),
                           hosts=[Host("n1", 1), Host("n2", 1)], run_dir=tmp_path, hang_timeout=5.0,
                           limits=Limits(backoff_s=0.0, min_nodes=1, max_nodes=2), poll_s=0.01)
    runner = HangingRunner(tmp_path / "heartbeat")
    summary = asyncio.run(Supervisor(cfg, runner).run())
    assert summary["exit_code"] == 0
    assert runner.asked == [({"n1": [10889], "n2": [10890]}, "/opt/py", {})]  # no rank armed a flight recorder
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[:6] == ["start", "launch", "failure", "hang_stacks", "health", "diagnosis"]
    line = ("rank 1 on n2 is in stuck_in_data_loader at hang.py:10 while every other rank waits in all_reduce at "
            "hang.py:21 (main)")
    stacks, diagnosis = events[3], events[5]
    assert stacks["culprit"] == line and stacks["attempt"] == 0 and len(stacks["groups"]) == 2
    assert (diagnosis["cause"], diagnosis["host"], diagnosis["rank"], diagnosis["culprit"]) == ("hang", "n2", 1, line)
    assert f"attempt 0 hung: {line}" in caplog.text


# ---- the node side: health.dump_stacks through the real agent (local transport) and a real py-spy ---------------
needs_py_spy = pytest.mark.skipif(not (Path(sys.executable).parent / "py-spy").exists() or os.geteuid() != 0,
                                  reason="needs py-spy next to this Python, and root to read another process")
SLEEPER = "import time\ndef stuck_in_read():\n    print('in', flush=True)\n    time.sleep(600)\nstuck_in_read()\n"


@needs_py_spy
def test_the_node_side_dump_reads_a_running_and_a_stopped_process_and_reports_a_gone_one():
    running, stopped = (subprocess.Popen([sys.executable, "-c", SLEEPER], stdout=subprocess.PIPE) for _ in range(2))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        assert running.stdout.readline() == stopped.stdout.readline() == b"in\n"  # both asleep in stuck_in_read
        os.kill(stopped.pid, signal.SIGSTOP)
        pids = [running.pid, stopped.pid, gone.pid]
        dumps = asyncio.run(dump_stacks({"localhost": pids}, transport=LocalTransport(), python=sys.executable,
                                        timeout=30))["localhost"]
        for pid in (running.pid, stopped.pid):  # --nonblocking: a stopped process is read all the same
            place = where(frames(dumps[pid]["threads"]))
            assert (place.function, place.file, place.call) == ("stuck_in_read", "<string>", None), dumps[pid]
            assert set(frames(dumps[pid]["threads"])[0]) == {"name", "filename", "short_filename", "line"}  # no locals
        assert dumps[gone.pid]["error"].startswith("py-spy: Error:"), dumps[gone.pid]
    finally:
        for proc in (running, stopped):
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()


def test_a_node_without_py_spy_answers_with_the_reason_for_each_pid(tmp_path, monkeypatch):
    bare = tmp_path / "bin" / "python"  # a Python whose directory has no py-spy, and a PATH without one
    bare.parent.mkdir()
    bare.symlink_to(sys.executable)
    monkeypatch.setenv("PATH", str(tmp_path))
    dumps = asyncio.run(dump_stacks({"localhost": [1, 2]}, transport=LocalTransport(), python=str(bare), timeout=30))
    why = f"py-spy not found next to {bare} or on PATH"
    assert dumps == {"localhost": {1: {"error": why}, 2: {"error": why}}}
