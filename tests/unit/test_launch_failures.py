"""First-failure analysis on real torchrun output (captured from a 2-node x 2-process run where rank 1 exits 3
and the other node's ranks then fail with 'Connection reset by peer')."""

from datetime import datetime
from pathlib import Path

from orchestrator.launch.failures import (
    Failure, first_failure, host_failure, parse_torchrun_report, signal_name,
)
from orchestrator.launch.torchrun import split_rank_prefix

DATA = Path(__file__).parent / "data"


def split(text):
    agent, ranks, host = [], {}, []
    for line in text.splitlines():
        rank, _, body = split_rank_prefix(line)
        host.append(body)
        if rank is None:
            agent.append(body)
        else:
            ranks.setdefault(rank, []).append(body)
    return agent, ranks, host


def failure_of(node, host, head_time):
    agent, ranks, lines = split((DATA / f"launch_torchrun_failed_node{node}.txt").read_text())
    return host_failure(host, exit_code=1, agent_lines=agent, rank_lines=ranks, host_lines=lines, head_time=head_time)


def test_parse_root_cause_block_and_microsecond_time():
    agent, _, _ = split((DATA / "launch_torchrun_failed_node0.txt").read_text())
    report = parse_torchrun_report(agent)
    assert (report.rank, report.local_rank, report.exitcode) == (1, 1, 3)
    assert report.time == datetime(2026, 11, 23, 10, 42, 51, 649000)


def test_root_cause_is_the_failing_rank_not_the_cascade():
    root = failure_of(0, "node1", head_time=100.0)
    cascade = failure_of(1, "node2", head_time=99.0)  # even if the head happened to see it first
    assert not root.cascade and cascade.cascade
    first = first_failure([cascade, root])
    assert (first.host, first.rank, first.rank_exitcode) == ("node1", 1, 3)
    assert "failing on purpose" in first.describe()
    assert first.headline() == "node1/1 (local rank 1): exit code 3"


def test_order_by_node_time_when_neither_is_a_cascade():
    a = Failure("a", 1, rank=0, node_time=datetime(2026, 1, 1, 0, 0, 2), head_time=1.0)
    b = Failure("b", 1, rank=2, node_time=datetime(2026, 1, 1, 0, 0, 1), head_time=2.0)
    assert first_failure([a, b]).host == "b"
    b.node_time = None  # not every node reported a time: fall back to when the head saw the exit
    assert first_failure([a, b]).host == "a"
    assert first_failure([]) is None


def test_without_torchrun_report_rank_comes_from_torch_prefix():
    lines = ["[rank5]: Traceback (most recent call last):", "[rank5]: ValueError: bad batch", "launcher exiting"]
    f = host_failure("n3", exit_code=1, agent_lines=lines, rank_lines={}, host_lines=lines)
    assert f.rank == 5 and f.last_lines[-1] == "launcher exiting"


def test_launcher_failure_without_ranks():
    f = host_failure("n3", exit_code=127, agent_lines=["bash: python9: command not found"], rank_lines={})
    assert f.rank is None and f.headline() == "n3 (launcher): exit code 127"


def test_signals():
    assert signal_name(-9) == "SIGKILL" and signal_name(1) is None and signal_name(None) is None
    f = Failure("h", 1, rank=3, rank_exitcode=-9)
    assert f.headline() == "h/3: killed by SIGKILL" and f.to_json()["signal"] == "SIGKILL"


def test_deepspeed_ranks_report_through_rankprefix_earliest_first():
    """rankprefix.py's lines (deepspeed launcher): the node's earliest failed rank, with its own lines."""
    agent = ["[INFO] [launch.py:253:sigkill_handler] Killing subprocess 3531",
             "orchestrator rank 2 (local rank 0) failed (exitcode: -15) at 2026-11-23T14:47:03.400000",
             "orchestrator rank 3 (local rank 1) failed (exitcode: 7) at 2026-11-23T14:47:03.290000"]
    ranks = {2: ["RuntimeError: ... Connection reset by peer"], 3: ["rank 3 failing on purpose with exit code 7"]}
    f = host_failure("n2", exit_code=1, agent_lines=agent, rank_lines=ranks)
    assert f.headline() == "n2/3 (local rank 1): exit code 7" and not f.cascade
    assert f.node_time == datetime(2026, 11, 23, 14, 47, 3, 290000) and f.last_lines == ranks[3]
