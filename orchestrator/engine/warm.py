"""The warm-restart protocol between the node keeper (keeper.py), its workers (warm_worker.py) and the supervisor.

    line = event_line("rank_exit", rank=1, exitcode=-9)   # 'orchestrator-warm {"event": "rank_exit", ...}'
    parse_event(line)                                     # {"event": "rank_exit", "rank": 1, ..., "time": ...}
    Assignment(generation=2, rank=1, local_rank=0, world_size=2).line()   # what the keeper writes to a worker

Generations: every process group the run forms is one generation, numbered from 0. The counter lives in the
run's TCPStore (hosted by node 0's keeper) under GEN_KEY; a keeper that sees one of its workers fail adds 1 and
every keeper, seeing the new number, hands each of its ranks an Assignment for it: the same worker when it is
alive (it left the broken group and waits), a standby for a rank whose worker is gone. Workers form the group on
a store prefix of their generation and set joined_key() once in, so a keeper can tell a worker that did not
leave the old group (stuck in a collective with a lost peer) and replace it after a deadline.

Events are one line each on the keeper's output, `orchestrator-warm ` then a JSON object with "event" and
"time" (Unix seconds on that node): the supervisor turns them into events.jsonl entries, the benchmark into the
phases of a recovery (detect: rank_exit; abort: left; replacement ready and state restored: joined, restored).
Stdlib only: the supervisor imports it on the head.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

__all__ = ["Assignment", "EVENT_MARK", "GEN_KEY", "READY_MARK", "done_key", "event_line", "joined_key",
           "parse_event"]

EVENT_MARK = "orchestrator-warm "
READY_MARK = "orchestrator-warm-ready"
"""A worker's first line: imports done, waiting for an assignment (the keeper counts it as a ready standby)."""
GEN_KEY = "warm/gen"


def joined_key(generation: int, rank: int) -> str:
    return f"warm/{generation}/joined/{rank}"


def done_key(node_rank: int) -> str:
    return f"warm/done/{node_rank}"


def event_line(event: str, **fields) -> str:
    return EVENT_MARK + json.dumps({"event": event, "time": round(time.time(), 4), **fields})


def parse_event(text: str) -> dict | None:
    """The event of an `orchestrator-warm {...}` line; None for any other line."""
    if not text.startswith(EVENT_MARK):
        return None
    try:
        value = json.loads(text[len(EVENT_MARK):])
    except ValueError:
        return None
    return value if isinstance(value, dict) and isinstance(value.get("event"), str) else None


@dataclass(frozen=True)
class Assignment:
    """Which rank a worker is in which generation; one JSON line on the worker's stdin."""

    generation: int
    rank: int
    local_rank: int
    world_size: int

    def line(self) -> bytes:
        return (json.dumps(asdict(self)) + "\n").encode()

    @classmethod
    def parse(cls, line: bytes | str) -> Assignment:
        return cls(**json.loads(line))
