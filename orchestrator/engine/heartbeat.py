"""Heartbeat files: every rank says which step it reached, where a supervisor can read it cheaply.

    export ORCH_HEARTBEAT_DIR=/shared/run42/heartbeat     # set by the launcher; unset = no heartbeat
    hb = Heartbeat.from_env(rank=3, local_rank=1, world_size=8)
    hb.add_compute(0.0061)                                 # every step: seconds in its rank-local section
    hb.beat(step=17, status="training")                    # every step
    hb.beat(status="failed")                               # on the way out of an exception: keeps step 17
    read_heartbeats("/shared/run42/heartbeat")             # the supervisor: {"node2-rank3": {...}, ...}

Contract (for the supervisor):
- one file per rank: $ORCH_HEARTBEAT_DIR/<hostname>-rank<RANK>.json, replaced atomically (write to a
  temporary name in the same directory, then rename), so a reader never sees a torn file;
- content: {"rank", "local_rank", "world_size", "host", "pid", "step", "status", "time"} with time in Unix
  seconds (time.time()) and status one of "starting" (before the first step: model build, checkpoint
  load), "training", "checkpointing", "done", "failed";
- written before the first step, after every step, and at exit. A rank whose file's "time" stops moving
  while "status" is "starting" or "training" is stalled (a hung collective); compare with the step time in
  metrics.jsonl to choose a timeout. Cost: one small write + rename per step (~50 us on a local disk).
- straggler input (supervisor/straggler.py), present once a step was timed: "compute_s" and "compute_steps",
  the running totals since this process started of the seconds spent in a rank-local section of the step (no
  collectives: the torch engine times its optimizer step) and of the steps timed, and "compute_group", a label
  of the ranks doing the same work there (the torch engine: "pp<stage>"; only ranks of one group compare).
  Why local and why totals: in synchronous training every rank's whole step takes as long as the slowest one's
  (the others wait in collectives), so only a section without collectives tells ranks apart; and the reader
  differences two beats for the mean over any span of steps -- a median would miss a host under a CPU quota,
  whose pauses land in a short section in only some steps (measured: median unchanged, mean 4x). With
  ORCH_STEP_TIMING=0 nothing is timed and the fields are absent.
- "flight_recorder", present once the rank armed its dumper (engine/flight_recorder.py): the path its
  flight recorder dump goes to on SIGUSR2. Only ranks that carry it may be sent the signal (its default action
  ends a process).
The directory is shared with the supervisor's head, or node-local: under `supervise --no-shared-run-dir` a
forwarder on each node sends the changed files to the head over SSH (supervisor/forwarder.py).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.contracts import HEARTBEAT_ENV, STEP_TIMING_ENV

__all__ = ["Heartbeat", "read_heartbeats", "STATUSES"]

STATUSES = ("starting", "training", "checkpointing", "done", "failed")


@dataclass
class Heartbeat:
    """Writes this rank's heartbeat file; a no-op when no directory is configured."""

    directory: Path | None
    rank: int
    local_rank: int
    world_size: int
    step: int = 0
    """The last step reported (a "failed" beat repeats it, so the supervisor sees how far the rank got)."""
    timing: bool = True
    """Whether the engine should time its rank-local section (False under ORCH_STEP_TIMING=0)."""
    steps: int | None = None
    """The run's last step, when the program says (the supervisor then knows a checkpoint of it ends the run)."""
    compute_group: str = ""
    compute_s: float = 0.0
    compute_steps: int = 0
    flight_recorder: str | None = None
    """Where this rank dumps its flight recorder on SIGUSR2, once armed (flight_recorder.py)."""

    @classmethod
    def from_env(cls, *, rank: int, local_rank: int, world_size: int) -> Heartbeat:
        value = os.environ.get(HEARTBEAT_ENV)
        directory = Path(value) if value else None
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        return cls(directory, rank, local_rank, world_size,
                   timing=directory is not None and os.environ.get(STEP_TIMING_ENV, "1") != "0")

    def add_compute(self, seconds: float) -> None:
        """Count one step's time in the rank-local section (reported with the next beat)."""
        self.compute_s += seconds
        self.compute_steps += 1

    @property
    def path(self) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / f"{socket.gethostname()}-rank{self.rank}.json"

    def beat(self, *, step: int | None = None, status: str = "training") -> None:
        """Report `step` (default: the last one reported) with `status`."""
        self.step = self.step if step is None or step < 0 else step
        path = self.path
        if path is None:
            return
        record = {"rank": self.rank, "local_rank": self.local_rank, "world_size": self.world_size,
                  "host": socket.gethostname(), "pid": os.getpid(), "step": self.step, "status": status,
                  "time": time.time()}
        if self.steps is not None:
            record["steps"] = self.steps
        if self.flight_recorder:
            record["flight_recorder"] = self.flight_recorder
        if self.compute_steps:
            record |= {"compute_s": self.compute_s, "compute_steps": self.compute_steps,
                       "compute_group": self.compute_group}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)


def read_heartbeats(directory: str | os.PathLike) -> dict[str, dict]:
    """Every rank's latest heartbeat, keyed by file stem; unreadable files are skipped."""
    beats = {}
    for path in Path(directory).glob("*-rank*.json"):
        try:
            beats[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return beats
