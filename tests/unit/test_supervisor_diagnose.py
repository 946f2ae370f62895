"""Culprit vs cascade: diagnose() over what an attempt observed (pure; no hosts), as the diagnosis event."""

from orchestrator.hosts import Host
from orchestrator.launch.failures import Failure
from orchestrator.launch.output import OutputLine
from orchestrator.launch.plan import LaunchSpec, build_plan
from orchestrator.supervisor.detect import RankExit, parse_rank_exit
from orchestrator.supervisor.diagnosis import Attempt
from orchestrator.supervisor.diagnosis import diagnose as diagnosis
from orchestrator.supervisor.runner import AttemptResult
from orchestrator.supervisor.slurm import output_line

PLAN = build_plan(LaunchSpec(program=("train.py",), run_id="r1", nproc_per_node=2), [Host("n1", 2), Host("n2", 2)])
OK = {"n1": "ok", "n2": "ok"}


def diagnose(attempt: Attempt, health: dict[str, str]) -> dict:
    return diagnosis(attempt, health).to_event()


def attempt(**kw) -> Attempt:
    a = Attempt(0, PLAN, 0.0)
    a.result = AttemptResult(exit_code=1)
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def cascade(host: str) -> Failure:
    return Failure(host=host, exit_code=1, rank=0, rank_exitcode=1, last_lines=["Connection closed by peer"],
                   cascade=True)


def test_killed_rank_beats_the_cascade_and_maps_local_to_global_rank():
    a = attempt(rank_exit=RankExit("n2", 1, -9, 77, 1.0))
    a.result.failures = [cascade("n1")]
    d = diagnose(a, OK)
    assert (d["cause"], d["host"], d["rank"], d["signal"]) == ("killed", "n2", 3, "SIGKILL")


def test_root_cause_from_the_runner_analysis():
    a = attempt()
    a.result.failures = [cascade("n1"), Failure(host="n2", exit_code=1, rank=2, rank_exitcode=3,
                                                last_lines=["ValueError: bad"])]
    d = diagnose(a, OK)
    assert (d["cause"], d["host"], d["rank"], d["exit_code"]) == ("crash", "n2", 2, 3)


def test_lost_node_only_cascades_and_an_unreachable_host():
    a = attempt()
    a.result.failures = [cascade("n1")]
    d = diagnose(a, {"n1": "ok", "n2": "unreachable: connection timed out"})
    assert (d["cause"], d["host"]) == ("node_lost", "n2")


def test_hang_names_the_stopped_process():
    stalled = [{"host": "n1", "rank": 0, "pid": 10, "step": 5}, {"host": "n2", "rank": 3, "pid": 20, "step": 5}]
    d = diagnose(attempt(hang=stalled, probe={"n1": {10: "S"}, "n2": {20: "T"}}), OK)
    assert (d["cause"], d["host"], d["rank"], d["pid"]) == ("hang", "n2", 3, 20) and "SIGSTOP" in d["detail"]


def test_hang_with_a_lost_host_is_a_lost_node():
    stalled = [{"host": "n1", "rank": 0, "pid": 10, "step": 5}]
    d = diagnose(attempt(hang=stalled, probe={"n1": {10: "S"}}), {"n1": "ok", "n2": "unreachable: timed out"})
    assert (d["cause"], d["host"]) == ("node_lost", "n2")


def test_launcher_error():
    assert diagnose(attempt(error="OSError: boom"), OK)["cause"] == "launcher_error"


def out(host, rank, text, stream="stderr"):
    return OutputLine(host, rank, stream, text, text.encode())


# Runner output recorded from a 2-node run whose rank 3 (n2, local rank 1) was SIGKILLed: the rank's own
# line, torchrun's report of the dead worker, then the cascade on n1.
RECORDED = [
    out("n2", 3, "step 7 loss 4.81"),
    out("n2", None, "E1123 10:42:51.649000 22901 torch/distributed/elastic/multiprocessing/api.py:1002] failed "
        "(exitcode: -9) local_rank: 1 (pid: 22931) of binary: .venv/bin/python"),
    out("n1", 0, "RuntimeError: Connection closed by peer"),
    out("n1", None, "E1123 10:42:52.101000 22850 torch/distributed/elastic/multiprocessing/api.py:1002] failed "
        "(exitcode: 1) local_rank: 0 (pid: 22870) of binary: .venv/bin/python"),
]


def first_rank_exit(lines):
    return next(found for line in lines if (found := parse_rank_exit(line, now=1.0)) is not None)


def test_diagnosis_from_recorded_output_lines():
    d = diagnosis(attempt(rank_exit=first_rank_exit(RECORDED)), OK)
    assert (d.cause, d.host, d.rank, d.signal, d.exit_code, d.detail) == ("killed", "n2", 3, "SIGKILL", -9,
                                                                          "killed by SIGKILL")
    assert list(d.to_event()) == ["cause", "host", "rank", "signal", "exit_code", "detail"]


def test_diagnosis_from_recorded_srun_lines_is_the_same():
    """Under Slurm the same lines arrive as srun --label's "TASK: line" (task N = node N of the plan), the ranks'
    lines with torchrun's rank marker."""
    srun = [f"{PLAN.hosts.index(line.host)}: " + ("" if line.rank is None else f"\x1f{line.rank}/{line.rank % 2}\x1f")
            + line.text + "\n" for line in RECORDED]
    lines = [output_line(PLAN.hosts, text.encode(), "stderr") for text in srun]
    assert lines == RECORDED
    assert diagnosis(attempt(rank_exit=first_rank_exit(lines)), OK) == diagnosis(
        attempt(rank_exit=first_rank_exit(RECORDED)), OK)


def test_event_fields_per_cause():
    crash = Failure(host="n2", exit_code=1, rank=2, rank_exitcode=3, last_lines=["ValueError: bad"])
    a = attempt()
    a.result.failures = [crash]
    assert diagnose(a, OK) | {"detail": ""} == {"cause": "crash", "host": "n2", "rank": 2, "signal": None,
                                                "exit_code": 3, "detail": "", "last_lines": ["ValueError: bad"]}
    a.result.failures = [cascade("n1")]
    lost = diagnose(a, {"n1": "ok", "n2": "unreachable: timed out"})
    assert list(lost) == ["cause", "host", "detail", "cascade"] and len(lost["cascade"]) == 1
    missing = diagnose(attempt(hang=[{"rank": None, "missing": 2}]), OK)
    assert missing == {"cause": "hang", "host": None, "rank": None,
                       "detail": "no heartbeat for 1 rank(s) since step None"}
    assert diagnose(attempt(), OK) == {"cause": "unknown", "host": None, "detail": "exit code 1"}


def test_a_straggler_the_attempt_was_stopped_for_is_the_cause():
    from orchestrator.supervisor.straggler import Straggler

    slow = Straggler(host="n2", slowdown=1.52, step=130, steps=52, ranks=[2, 3], compute_ms=9.12, median_ms=6.0)
    d = diagnose(attempt(straggler=slow, rank_exit=RankExit("n1", 0, -15, 7, 1.0)), OK)  # our own stop's SIGTERM
    assert (d["cause"], d["host"]) == ("straggler", "n2")
    assert d["detail"] == ("1.52x the median node's local compute time over 52 steps (9.12 vs 6.00 ms per step), "
                           "named at step 130")
