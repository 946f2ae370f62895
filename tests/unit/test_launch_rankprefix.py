"""rankprefix.py, the line marker DeepSpeed's ranks run under, as a real process."""

import os
import signal
import subprocess
import sys

from orchestrator.launch.deepspeed import rank_prefix_source
from orchestrator.launch.failures import parse_rank_reports
from orchestrator.launch.torchrun import split_rank_prefix

RANK = "import os, sys; print('out', sys.argv[1:]); print('err', file=sys.stderr); print('tail', end=''); sys.exit(7)"
ENV = {**os.environ, "RANK": "5", "LOCAL_RANK": "1"}


def shim(*argv: str) -> list[str]:
    return [sys.executable, "-I", "-S", "-c", rank_prefix_source(), *argv]


def test_rank_lines_are_marked_local_rank_inserted_exit_code_kept(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    out = subprocess.run(shim("2", sys.executable, str(script), "a"), capture_output=True, text=True, env=ENV)
    assert out.returncode == 7
    assert [split_rank_prefix(line) for line in out.stdout.splitlines()] == [
        (5, 1, "out ['--local_rank=1', 'a']"), (5, 1, "tail")]  # a last line without newline still comes out
    err = [split_rank_prefix(line) for line in out.stderr.splitlines()]
    assert err[0] == (5, 1, "err") and err[1][0] is None and len(err) == 2  # then the unmarked failure report
    report = parse_rank_reports([err[1][2]])
    assert (report.rank, report.local_rank, report.exitcode) == (5, 1, 7)


def test_signals_reach_the_rank_and_it_ends_the_same_way():
    proc = subprocess.Popen(shim("3", "sh", "-c", "echo up; exec sleep 30"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    assert split_rank_prefix(proc.stdout.readline().rstrip("\n")) == (5, 1, "up")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == -signal.SIGTERM
    assert parse_rank_reports(proc.stderr.read().splitlines()).exitcode == -signal.SIGTERM


def test_a_background_process_holding_the_pipes_does_not_keep_the_rank_running():
    proc = subprocess.Popen(shim("3", "sh", "-c", "sleep 30 & echo $!; echo bye; exit 4"), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=ENV)
    leftover = int(split_rank_prefix(proc.stdout.readline().rstrip("\n"))[2])
    try:
        assert proc.wait(timeout=10) == 4
        assert split_rank_prefix(proc.stdout.readline().rstrip("\n")) == (5, 1, "bye")
    finally:
        os.kill(leftover, signal.SIGKILL)
