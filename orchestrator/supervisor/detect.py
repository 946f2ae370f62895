"""Detectors: a rank's exit from its node's torchrun log line, a hang from the heartbeat files, progress from
metrics.jsonl. Pure functions plus one small file tail; the loop polls them.

    exit = parse_rank_exit(OutputLine("node2", None, "stderr", "E1123 10:42:51.649000 22901 ...] failed "
                                      "(exitcode: -9) local_rank: 1 (pid: 4)", b"..."))
    exit.host, exit.local_rank, exit.exitcode, exit.signal     # 'node2', 1, -9, 'SIGKILL'
    stalled_ranks(read_heartbeats(d), now=time.time(), hang_timeout=30, startup_timeout=600, launched_at=t0,
                  expected=4)                                 # [] or the ranks whose heartbeat stopped
    tail = MetricsTail(Path("runs/r1/metrics.jsonl")); tail.poll()   # new step records since the last poll

Why the torchrun line: each node's torchrun polls its workers every --monitor-interval (0.2 s in our plans)
and logs `failed (exitcode: N) local_rank: L` the moment it sees one die, before it stops the others and
long before its own exit; the runner streams that line to us, so a rank exit is seen within ~0.3 s.
A hang (SIGSTOP, a stuck collective, a dead NIC without a reset) writes no line at all: every rank's
heartbeat file stops moving (a hang is declared once every active rank's has: ranks waiting for a slow one stall
only for a while). "starting" ranks (model build, checkpoint load) get `startup_timeout`.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.launch.failures import signal_name
from orchestrator.launch.output import OutputLine

__all__ = ["MetricsTail", "RankExit", "parse_rank_exit", "pids_by_host", "stalled_ranks"]

_FAILED = re.compile(r"\] failed \(exitcode: (-?\d+)\) local_rank: (\d+)(?: \(pid: (\d+)\))?")
_ACTIVE = ("starting", "training", "checkpointing")


@dataclass(frozen=True)
class RankExit:
    host: str
    local_rank: int
    exitcode: int
    pid: int | None
    seen_at: float

    @property
    def signal(self) -> str | None:
        return signal_name(self.exitcode)


def parse_rank_exit(line: OutputLine, now: float | None = None) -> RankExit | None:
    """A node's torchrun log line reporting a failed worker, else None."""
    if line.host is None or line.rank is not None or line.continued:  # rank output is the program's, not torchrun's
        return None
    m = _FAILED.search(line.text)
    if not m:
        return None
    return RankExit(line.host, int(m.group(2)), int(m.group(1)), int(m.group(3)) if m.group(3) else None,
                    now if now is not None else time.time())


def pids_by_host(beats: list[dict]) -> dict[str, list[int]]:
    """host -> the PIDs of these heartbeats (the ones naming both), for probing or killing them there."""
    pids: dict[str, list[int]] = {}
    for beat in beats:
        if beat.get("host") and beat.get("pid"):
            pids.setdefault(beat["host"], []).append(int(beat["pid"]))
    return pids


def stalled_ranks(beats: dict[str, dict], *, now: float, hang_timeout: float, startup_timeout: float,
                  launched_at: float, expected: int) -> list[dict]:
    """Heartbeats of ranks that stopped moving, once every active rank did; a missing heartbeat counts after
    startup_timeout.

    A rank is stalled when its status is active and its last beat is older than hang_timeout (startup_timeout
    while "starting"). Ranks that finished ("done") never stall. While any active rank still beats, the run is
    not hung: in synchronous training a hung rank stops every other within about a step (they wait for it in a
    collective), whereas ranks waiting for a merely slow one (a busy host) are stalled only until it catches up.
    Returns the stalled heartbeat records, with a {"rank": None, "missing": n} entry when fewer than `expected`
    ranks ever wrote one after startup_timeout.
    """
    stalled, moving = [], False
    for beat in beats.values():
        status = beat.get("status")
        if status not in _ACTIVE:
            continue
        limit = startup_timeout if status == "starting" else hang_timeout
        if now - float(beat.get("time", 0)) > limit:
            stalled.append(beat)
        else:
            moving = True
    if moving:
        stalled = []
    if len(beats) < expected and now - launched_at > startup_timeout:
        stalled.append({"rank": None, "missing": expected - len(beats)})
    return sorted(stalled, key=lambda b: (b.get("step", -1), b.get("time", 0)))


class MetricsTail:
    """New complete lines of metrics.jsonl since the last poll, stamped with the head time they were seen."""

    def __init__(self, path: Path):
        self.path, self._offset = path, path.stat().st_size if path.is_file() else 0

    def poll(self) -> list[dict]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next poll
        self._offset += end
        now, out = time.time(), []
        for line in data[:end].splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                out.append(record | {"seen_at": now})
        return out
