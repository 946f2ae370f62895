"""Culprit vs cascade: diagnose() over what an attempt observed (pure; no hosts), as the diagnosis event."""

from orchestrator.hosts import Host
from orchestrator.launch.failures import Failure
from orchestrator.launch.plan import LaunchSpec, build_plan
from orchestrator.supervisor.detect import RankExit
from orchestrator.supervisor.diagnosis import Attempt
from orchestrator.supervisor.diagnosis import diagnose as diagnosis
from orchestrator.supervisor.runner import AttemptResult

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
