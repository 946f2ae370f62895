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

Lost nodes: every keeper adds 1 to its beat_key() a few times a second; whoever hosts the store (the supervisor
on the head, or node 0's keeper) runs a NodeWatch, which declares a node lost when its count stops moving for the
node timeout, hands its node rank to a spare keeper (spare keepers register under SPARES_KEY and wait on
spare_key()), and starts a new generation marked lost_key(). Each keeper publishes where
its node is (node_key(): host, first rank, ranks, and the address of its snapshot replica server), sends its
ranks' newest snapshots to its ring successor's keeper, and a spare that takes a node's place fetches that
node's copies from the successor before its ranks restore. FINISHED_KEY tells waiting spares the run is over.

Events are one line each on the keeper's output, `orchestrator-warm ` then a JSON object with "event" and
"time" (Unix seconds on that node): the supervisor turns them into events.jsonl entries, the benchmark into the
phases of a recovery (detect: rank_exit; abort: left; replacement ready and state restored: joined, restored).
Stdlib only: the supervisor imports it on the head.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

__all__ = ["Assignment", "EVENT_MARK", "NodeWatch", "FINISHED_KEY", "GEN_KEY", "READY_MARK", "SPARES_KEY", "ack_key", "acks_key", "beat_key",
           "done_key", "event_line", "joined_key", "lost_key", "node_info", "node_key", "parse_event", "spare_done_key",
           "spare_key"]

EVENT_MARK = "orchestrator-warm "
READY_MARK = "orchestrator-warm-ready"
"""A worker's first line: imports done, waiting for an assignment (the keeper counts it as a ready standby)."""
GEN_KEY = "warm/gen"
SPARES_KEY = "warm/spares"
"""A counter: each spare keeper adds 1 and is spare number <the result> (1, 2, ...)."""
FINISHED_KEY = "warm/finished"


def ack_key(generation: int, rank: int) -> str:
    """Set by a worker that read its assignment: it is out of the old generation's collectives."""
    return f"warm/{generation}/ack/{rank}"


def acks_key(generation: int) -> str:
    """A counter: how many workers took an assignment of the generation (every rank's: the group can form)."""
    return f"warm/{generation}/acks"


def joined_key(generation: int, rank: int) -> str:
    return f"warm/{generation}/joined/{rank}"


def done_key(node_rank: int) -> str:
    return f"warm/done/{node_rank}"


def beat_key(node_rank: int) -> str:
    return f"warm/beat/{node_rank}"


def node_key(node_rank: int) -> str:
    """JSON {host, first_rank, nproc, replica}: who holds node rank N now, and its replica server's host:port."""
    return f"warm/node/{node_rank}"


def node_info(store, node_rank: int) -> dict | None:
    """What node_key(node_rank) says in `store`, or None before that node's keeper published it."""
    key = node_key(node_rank)
    return json.loads(store.get(key)) if store.check([key]) else None


def lost_key(generation: int) -> str:
    """Set (to JSON [lost node rank, its host]) before the generation that replaces a lost node starts."""
    return f"warm/{generation}/lost"


def spare_key(spare: int, what: str) -> str:
    """Spare number `spare`'s keys: 'host' (its name), 'beat' (its counter), 'node' (the node rank it takes)."""
    return f"warm/spare/{spare}/{what}"


def spare_done_key(spare: int) -> str:
    return spare_key(spare, "done")


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


class NodeWatch:
    """Lost-node detection and spare hand-over, run by whoever hosts the run's store (a TCPStore: add/check/get/set).

        watch = NodeWatch(store, nnodes=4, node_timeout=2.0, report=lambda event: print(event_line(**event)))
        watch.poll()     # every beat: None, or the reason the run cannot go on (a node lost and no spare left)

    A node is watched once its keeper's beat counter moved, and only after generation 0 formed (rank 0 joined it:
    a node missing at the start is the start's failure, not a lost node). `report` gets each node_lost event as
    a dict {"event": "node_lost", time, node_rank, host, silent_s, spare, generation}.
    """

    def __init__(self, store, *, nnodes: int, node_timeout: float, report: Callable[[dict], None]):
        self.store, self.nnodes, self.node_timeout, self.report = store, nnodes, node_timeout, report
        self.seen: dict[str, tuple[int, float]] = {}  # counter key -> (count, when it last moved)
        self.used: set[int] = set()  # spares handed a node
        self.formed = False

    def poll(self) -> str | None:
        now = time.monotonic()
        self.formed = self.formed or self.store.check([joined_key(0, 0)])
        spares = self._spares(now)
        for node_rank in range(self.nnodes):
            if (self._moving(beat_key(node_rank), now) is False and self.formed
                    and not self.store.check([done_key(node_rank)])):  # a node whose ranks finished stops beating
                return self._replace(node_rank, spares, now)
        return None

    def retire(self, node_rank: int) -> dict | None:
        """Give node `node_rank`'s place to a spare now, as if it were lost (the supervisor swaps out a straggler):
        its keeper finds its own name under the new generation's lost key and steps aside, exit 0. Returns the hand-
        over (the node_lost event's fields, silent_s 0), or None when no spare keeper is beating."""
        now = time.monotonic()
        spares = self._spares(now)
        return self._hand_over(node_rank, spares[0], now, silent=0.0) if spares else None

    def _spares(self, now: float) -> list[int]:
        """The spare keepers not handed a node yet and beating."""
        return [i for i in range(1, self.store.add(SPARES_KEY, 0) + 1)
                if i not in self.used and self._moving(spare_key(i, "beat"), now)]

    def _moving(self, key: str, now: float) -> bool | None:
        """Has the counter at `key` moved within the node timeout? None while it never moved."""
        count = self.store.add(key, 0)
        previous = self.seen.get(key)
        if previous is None or previous[0] != count:
            self.seen[key] = (count, now)
            return True if count else None
        return now - previous[1] <= self.node_timeout

    def _replace(self, node_rank: int, spares: list[int], now: float) -> str | None:
        silent = round(now - self.seen[beat_key(node_rank)][1], 2)
        if not spares:
            info = node_info(self.store, node_rank) or {}
            return f"node {node_rank} ({info.get('host')}) lost: its keeper was silent for {silent} s and no spare " \
                   "keeper is left"
        self.report(self._hand_over(node_rank, spares[0], now, silent=silent))
        return None

    def _hand_over(self, node_rank: int, spare: int, now: float, *, silent: float) -> dict:
        """Spare `spare` takes node `node_rank`'s place in a new generation; the node_lost event's fields."""
        info = node_info(self.store, node_rank) or {}
        key = beat_key(node_rank)
        self.used.add(spare)
        generation = self.store.add(GEN_KEY, 0) + 1
        self.store.set(lost_key(generation), json.dumps([node_rank, info.get("host")]))
        self.store.set(spare_key(spare, "node"), json.dumps({**info, "node_rank": node_rank}))
        self.store.add(GEN_KEY, 1)
        self.seen[key] = (self.store.add(key, 0), now)  # the spare's turn to beat
        return {"event": "node_lost", "time": round(time.time(), 4), "node_rank": node_rank, "host": info.get("host"),
                "silent_s": silent, "spare": self.store.get(spare_key(spare, "host")).decode(),
                "generation": generation}

    def waiting_spares(self) -> list[int]:
        """The spares never handed a node (to tell them the run is over)."""
        return [i for i in range(1, self.store.add(SPARES_KEY, 0) + 1) if i not in self.used]
