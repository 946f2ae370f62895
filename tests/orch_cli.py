"""Test helper: drive the `orchestrator` CLI as a user does, in a fresh interpreter, so its exit code, stdout
and stderr are the CLI's own (importable from every test module: pytest's pythonpath has tests/).

    out = orch("hosts", "expand", "-w", "n[1-2]")                  # CompletedProcess: text, captured, timeout
    out = orch("run", "-w", "n1", "--", "od", text=False)          # bytes
    proc = subprocess.Popen([*ORCH, "launch", ...], ...)           # a live head to signal
"""

from __future__ import annotations

import subprocess
import sys

ORCH = (sys.executable, "-m", "orchestrator")


def orch(*args, timeout: float = 180, text: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*ORCH, *map(str, args)], capture_output=True, text=text, timeout=timeout, **kwargs)
