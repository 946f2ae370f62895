"""rankprefix.py, the line marker DeepSpeed's ranks run under, as a real process."""

import os
import subprocess
import sys

from orchestrator.launch.deepspeed import rank_prefix_source
from orchestrator.launch.torchrun import split_rank_prefix

RANK = "import os, sys; print('out', sys.argv[1:]); print('err', file=sys.stderr); print('tail', end=''); sys.exit(7)"


def test_rank_lines_are_marked_local_rank_inserted_exit_code_kept(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    out = subprocess.run([sys.executable, "-I", "-S", "-c", rank_prefix_source(), "2", sys.executable, str(script), "a"],
                         capture_output=True, env={**os.environ, "RANK": "5", "LOCAL_RANK": "1"})
    assert out.returncode == 7
    assert [split_rank_prefix(line) for line in out.stdout.decode().splitlines()] == [
        (5, 1, "out ['--local_rank=1', 'a']"), (5, 1, "tail")]  # a last line without newline still comes out
    assert [split_rank_prefix(line) for line in out.stderr.decode().splitlines()] == [(5, 1, "err")]
