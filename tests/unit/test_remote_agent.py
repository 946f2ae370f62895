"""The node agent (orchestrator/remote/agent.py) as a real local process, fed its spec on stdin like fanout does."""

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.remote import agent


@pytest.mark.parametrize("ending, code", [("exit 3", 3), ("sleep 60", agent.EXIT_NO_SPEC)])
def test_agent_gives_the_command_a_private_tmpdir_and_removes_it(tmp_path, ending, code):
    """Removed when the command ends on its own, and when the head goes away (its control channel closes)."""
    command = f'touch "$TMPDIR/f" && echo "$TMPDIR" && {ending}'
    spec = agent.encode_spec(["sh", "-c", command], {agent.RUN_TMPDIR: str(tmp_path)}, None)
    proc = subprocess.Popen([sys.executable, "-I", "-S", agent.__file__, "--run-id", "r1"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    proc.stdin.write(spec)
    proc.stdin.flush()  # and keep it open: it is the control channel
    made = proc.stdout.readline().decode().strip()
    assert made == f"{tmp_path}/orch-r1-{proc.pid}" and Path(made, "f").exists()
    if ending.startswith("sleep"):
        proc.stdin.close()  # the head is gone
    assert proc.wait(timeout=10) == code
    proc.stdin.close()
    assert list(tmp_path.iterdir()) == []
