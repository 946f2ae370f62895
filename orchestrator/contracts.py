"""Names and formats that several parts of the orchestrator agree on, defined once (stdlib only).

    from orchestrator.contracts import RUN_ID, new_run_id, step_dir_name, parse_step_dir, signal_exit_code
    run_id = new_run_id()                    # '20261123-104501-3f9a2c'
    RUN_ID.match(run_id)                     # a valid --run-id (anchored: match and fullmatch agree)
    step_dir_name(40), parse_step_dir("step-40"), parse_step_dir(".step-50.partial")   # 'step-40', 40, None
    signal_exit_code(15)                     # 143: "stopped by signal N", shell style

The node agent (remote/agent.py, agent.sh) and the supervisor's forwarder (supervisor/forwarder.py) travel inline
and cannot import this module: they keep their own copies of the names, and tests/unit/test_contracts.py holds
them equal to the values here.
"""

from __future__ import annotations

import re
import secrets
import time

__all__ = ["AGENT_TOKEN", "CODE_PIN_ENV", "HEARTBEAT_ENV", "RELAY_KEY_ENV", "RUN_ID", "RUN_TMPDIR", "RUN_TOKEN", "STEP_TIMING_ENV",
           "new_run_id", "parse_step_dir", "signal_exit_code", "step_dir_name"]

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
"""A valid run id: 1-64 characters of A-Z a-z 0-9 . _ -, not starting with a punctuation character (it names
a directory, goes into every process's environment and onto remote command lines)."""

RUN_TOKEN = "ORCH_RUN_ID"
"""Env var carrying the run id into every process of the run: teardown kills by ORCH_RUN_ID=<run id>."""

AGENT_TOKEN = "ORCH_RUN_AGENT"
"""Env var carrying the node agent's pid: what one agent kills when its command ends (others of the run live)."""

RUN_TMPDIR = "ORCH_RUN_TMPDIR"
"""Env var asking the node agent for a private temp dir under its value; the command sees that dir in it."""

CODE_PIN_ENV = "ORCH_CODE_PIN_S"
"""Env var asking the node agent to keep its working directory, a synced code copy, pinned for this many seconds
after the command ended (job/inuse.py): the next step of the same run follows (the launch after a setup, a
supervisor's next attempt), and no sync of another version may take the copy meanwhile."""

HEARTBEAT_ENV = "ORCH_HEARTBEAT_DIR"
"""Env var naming the directory where every rank writes its heartbeat file (engine/heartbeat.py)."""

RELAY_KEY_ENV = "ORCH_RELAY_KEY"
"""Env var carrying a supervised run's nonce to each node's forwarder: only lines marked with it are heartbeat or
metrics records (supervisor/relay.py); the forwarder removes it from the launcher's env."""

STEP_TIMING_ENV = "ORCH_STEP_TIMING"
"""Env var: "0" turns off the rank-local compute timing the heartbeat reports (straggler detection's input)."""


def new_run_id(now: float | None = None) -> str:
    """A fresh run id, sortable by start time and unique across heads: 'YYYYMMDD-HHMMSS-<6 hex>' (UTC)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now if now is not None else time.time()))
    return f"{stamp}-{secrets.token_hex(3)}"


_STEP_DIR = re.compile(r"step-(\d+)\Z")


def step_dir_name(step: int) -> str:
    """The directory of the committed checkpoint of `step` under RUN_DIR/checkpoints/: 'step-N'."""
    return f"step-{step}"


def parse_step_dir(name: str) -> int | None:
    """The step of a committed checkpoint directory name ('step-40' -> 40), None for any other name."""
    m = _STEP_DIR.match(name)
    return int(m.group(1)) if m else None


def signal_exit_code(signum: int) -> int:
    """The exit code reported for a process stopped by signal `signum`: 128 + N, as a shell does."""
    return 128 + signum
