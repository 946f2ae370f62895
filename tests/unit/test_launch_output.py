"""Output lines as data: how they are shown, how the launch collector and srun --label's lines become them (pure)."""

import io

from orchestrator.cli.lines import line_printer
from orchestrator.hosts import Host
from orchestrator.launch.output import OutputLine
from orchestrator.launch.plan import LaunchSpec, build_plan
from orchestrator.launch.rundir import HostLogs
from orchestrator.launch.runner import _Collector
from orchestrator.remote.output import LineJoiner
from orchestrator.remote.session import Line
from orchestrator.supervisor.slurm import output_line

PLAN = build_plan(LaunchSpec(program=("train.py",), run_id="r1", nproc_per_node=2), [Host("n1", 2), Host("n2", 2)])


def out(host, rank, text, stream="stdout", **kw):
    return OutputLine(host, rank, stream, text, text.encode(), **kw)


def test_formatted():
    assert out("n2", 3, "loss 0.31").formatted() == "n2/3: loss 0.31"
    assert out("n2", 0, "x").formatted() == "n2/0: x"
    assert out("n2", None, "W1123 torchrun says").formatted() == "n2: W1123 torchrun says"
    assert out(None, None, "srun: error: n2: task 1: Killed").formatted() == "srun: error: n2: task 1: Killed"
    assert out("n2", 3, "rest of a long line", continued=True).formatted() == "rest of a long line"


def test_line_printer_streams_and_long_lines():
    stdout, stderr = io.StringIO(), io.StringIO()
    show = line_printer(stdout, stderr)
    for line in [out("n1", 0, "a"), out("n1", None, "warn", "stderr"), out("n1", 1, "lo", partial=True),
                 out("n1", 1, "ng", continued=True)]:
        show(line)
    assert (stdout.getvalue(), stderr.getvalue()) == ("n1/0: a\nn1/1: long\n", "n1: warn\n")


def test_collector_lines_and_logs(tmp_path):
    seen = []
    logs = HostLogs({h: tmp_path / f"{h}.log" for h in PLAN.hosts})
    collect = _Collector(PLAN, logs, seen.append)
    collect.join = LineJoiner(limit=8)  # pieces past 8 bytes go on as partial lines
    collect.on_line("n2", "stdout", Line(b"\x1f3/1\x1fstep 1 \xff"))
    collect.on_line("n2", "stderr", Line(b"W1123 torchrun says"))
    collect.on_line("n1", "stdout", Line(b"\x1f0/0\x1f0123", partial=True))  # a long line: past 8 bytes, in pieces
    collect.on_line("n1", "stdout", Line(b"4567", partial=True))  # joined with its end
    collect.on_line("n1", "stdout", Line(b"89"))
    logs.close()
    assert seen == [
        OutputLine("n2", 3, "stdout", "step 1 \ufffd", b"step 1 \xff"),
        OutputLine("n2", None, "stderr", "W1123 torchrun says", b"W1123 torchrun says"),
        OutputLine("n1", 0, "stdout", "0123", b"0123", partial=True),
        OutputLine("n1", 0, "stdout", "456789", b"456789", continued=True),
    ]
    assert (tmp_path / "n2.log").read_bytes() == b"n2/3: step 1 \xff\nn2: W1123 torchrun says\n"
    assert (tmp_path / "n1.log").read_bytes() == b"n1/0: 0123456789\n"
    assert collect.failure("n1", 1, 0.0).host == "n1" and list(collect.rank_lines["n1"][0]) == ["0123"]


def test_srun_label_to_output_line():
    assert output_line(PLAN.hosts, b"1: \x1f3/1\x1fstep 7 loss 4.81\n", "stdout") == out("n2", 3, "step 7 loss 4.81")
    assert output_line(PLAN.hosts, b"0: W1123 torchrun says\n", "stderr") == out("n1", None, "W1123 torchrun says",
                                                                               "stderr")
    assert output_line(PLAN.hosts, b"   1: padded label\n", "stdout") == out("n2", None, "padded label")  # srun pads N
    for own in (b"srun: error: n2: task 1: Killed\n", b"7: a task the plan does not have\n"):  # srun's own lines
        text = own.decode().rstrip("\n")
        assert output_line(PLAN.hosts, own, "stderr") == out(None, None, text, "stderr")
    assert output_line(PLAN.hosts, b"1: \x1f2/0\x1fcaf\xc3\xa9 \xff\n", "stdout") == OutputLine(
        "n2", 2, "stdout", "caf\u00e9 \ufffd", b"caf\xc3\xa9 \xff")  # the exact bytes, shown decodable


def test_a_step_that_lost_a_node_is_done_once_every_other_node_exited_0():
    import asyncio

    from orchestrator.engine.warm import event_line
    from orchestrator.supervisor.slurm import StepEnding

    ending = StepEnding(["n1", "n2"])
    keeper = lambda host, event, **fields: out(host, None, event_line(event, **fields))  # noqa: E731
    ending.see(keeper("n2", "node_exit", code=0))
    assert not ending.done.is_set()  # no node lost: srun ends the step itself
    ending = StepEnding(["n1", "n2"])
    ending.see(keeper("s1", "spare_joined", node_rank=0, lost_host="n1"))
    ending.see(keeper("n2", "node_exit", code=1))
    ending.see(out("n2", 1, event_line("node_exit", code=0)))  # a rank's line is no keeper's news
    assert not ending.done.is_set() and not ending.exited("s1")
    ending.see(keeper("n2", "node_exit", code=0))
    assert not ending.done.is_set()  # the spare in n1's place still runs
    ending.see(keeper("s1", "node_exit", code=0))
    assert ending.done.is_set() and ending.lost == {"n1"} and ending.exited("s1")
    asyncio.run(ending.done.wait())
