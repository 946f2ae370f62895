"""Test helper: which processes carry a run's token (ORCH_RUN_ID=<id>), machine-wide or per sandbox host.

    wait_for(lambda: len(tokened("r1")) == 3)
    assert wait_for(lambda: not tokened("r1", pids=sb.pids("node1")), timeout=5)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable


def tokened(run_id: str, pids: Iterable[int] | None = None) -> list[int]:
    token = f"ORCH_RUN_ID={run_id}".encode()
    found = []
    for pid in pids if pids is not None else (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if token in f.read().split(b"\0"):
                    found.append(pid)
        except OSError:
            pass
    return found


def wait_for(check: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True
