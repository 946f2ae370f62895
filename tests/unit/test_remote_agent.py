"""The node agent (orchestrator/remote/agent.py) as a real local process, fed its spec on stdin like fanout does."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.remote import agent
from orchestrator.remote.fanout import agent_source


@pytest.mark.parametrize("ending, code", [("exit 3", 3), ("sleep 60", agent.EXIT_NO_SPEC)])
def test_agent_gives_the_command_a_private_tmpdir_and_removes_it(tmp_path, ending, code):
    """Removed when the command ends on its own, and when the head goes away (its control channel closes)."""
    command = f'touch "$TMPDIR/f" && echo "$TMPDIR" && {ending}'
    spec = agent.encode_spec(["sh", "-c", command], {agent.RUN_TMPDIR: str(tmp_path)}, None)
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", agent_source(), "--run-id", "r1"], stdin=subprocess.PIPE,
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


@pytest.mark.parametrize("pin_s", [None, "60"])
def test_agent_holds_its_cwd_while_the_command_runs_and_pins_it_when_the_run_goes_on(tmp_path, pin_s):
    """No receiver turns the run's code copy into another version under it, nor, when the run asks (a setup before
    the launch, a supervisor's attempt), in the seconds after it ended; a run that ended leaves it free."""
    from orchestrator.job import inuse

    copy = tmp_path / ("c" * 64)
    copy.mkdir()
    (tmp_path / f"{copy.name}.files").write_bytes(b"")
    env = {agent.CODE_PIN_ENV: pin_s} if pin_s else {}
    spec = agent.encode_spec(["sh", "-c", "echo started; sleep 60"], env, str(copy))
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", agent_source(), "--run-id", "r2"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    proc.stdin.write(spec)
    proc.stdin.flush()
    assert proc.stdout.readline() == b"started\n"
    assert inuse.take(str(copy)) is None and not inuse.pinned(str(copy))
    proc.stdin.close()  # the head is gone: the command is killed
    assert proc.wait(timeout=10) == agent.EXIT_NO_SPEC
    taken = inuse.take(str(copy))
    assert taken is not None and inuse.pinned(str(copy)) == bool(pin_s)
    os.close(taken)
