"""The supervisor's event log (RUN_DIR/events.jsonl) and the run summary computed from it.

    log = EventLog(Path("runs/r1"))
    log.emit("launch", attempt=0, hosts=["node1", "node2"], world_size=4, resume_step=None)
    log.emit("failure", attempt=0, kind="rank_exit", host="node2", rank=3, signal="SIGKILL", detect_s=0.31)
    read_events(Path("runs/r1"))                    # [{"event": "launch", "time": ..., ...}, ...]
    summarize(read_events(...), read_metrics(...))  # {"outcome", "restarts", "time_lost_s", "ettr", ...}

One JSON object per line, flushed at once (a live run is readable by `orchestrator status/events`), each with
"event" (its kind) and "time" (Unix seconds on the head). Kinds, in the order a recovery writes them:
    start        the supervised run: hosts, spares, limits
    preflight    with --preflight, before attempt 0: the health gate's verdict per host, exit_code, timings
                 (its failed nodes follow as exclude events, spare: true for a spare, then replace / shrink)
    launch       one attempt: attempt, hosts, world_size, resume_step (the checkpoint it will resume from; for
                 node-local checkpoints the newest step the engine reported every rank holds)
    first_step   the attempt's first finished step: step, resumed_from, since_launch_s; after a restore from the
                 engine's node-local checkpoints also resume_source (local, or peer when a rank fetched its state
                 from the next node's copy) and restored ({rank: "local HOST" | "peer HOST"})
    straggler    a node persistently slower than the median (straggler.py): host, slowdown, steps, step, ranks,
                 compute_ms, median_ms, action (what follows: a replacement at the next checkpoint, or a name only)
    failure      what the detector saw: kind (rank_exit | hang | unreachable | launcher_error | straggler), host, ...
    health       per-host results: {host: "ok" | why not}
    diagnosis    the culprit after health checks: cause, host, rank, detail (the cascade is named, not blamed)
    exclude      a host leaves the run: host, reason
    replace      a spare takes its place: host, spare
    shrink       fewer nodes: from_nodes, to_nodes
    restart      the next attempt: attempt, resume_step, steps_lost, backoff_s, cause
    warm_*       warm restarts inside an attempt (supervisor/warm.py): warm_restart, warm_resumed (steps_lost,
                 time_lost_s, phases), warm_kill, warm_stuck, warm_give_up
    done / gave_up / stopped   the end, with the summary
Summary definitions: time lost to a failure = head time from when the step it resumed from finished to when
the first step after the restart finished, minus that step's own time (the recomputed work, the detection,
teardown, health checks, backoff and the cold start). ETTR = useful step time / wall time, where useful step
time counts each step's final execution once (re-trained steps and start-up are not useful).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("orchestrator.supervisor.events")

__all__ = ["EVENTS_FILE", "EventLog", "read_events", "read_metrics", "summarize"]

EVENTS_FILE = "events.jsonl"


class EventLog:
    """Append-only JSONL of supervisor events; thread-safe (the detector and the loop both write)."""

    def __init__(self, run_dir: Path):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / EVENTS_FILE
        self._lock = threading.Lock()
        self._file = self.path.open("a", buffering=1)

    def emit(self, event: str, **fields: Any) -> dict:
        record = {"event": event, "time": round(time.time(), 3), **fields}
        with self._lock:
            self._file.write(json.dumps(record, default=str) + "\n")
        return record

    def close(self) -> None:
        self._file.close()


def _jsonl(path: Path, valid) -> list[dict]:
    """The JSON objects of a JSONL file that pass `valid`; any other line (not UTF-8, not JSON, not an object of
    the expected shape) is skipped with one warning naming the line numbers. A last line without its newline is
    a live writer mid-line: skipped without a word."""
    if not path.is_file():
        return []
    out, bad = [], []
    *lines, partial = path.read_bytes().split(b"\n")  # partial: b"" when the file ends with a newline
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
            record = None
        if isinstance(record, dict) and valid(record):
            out.append(record)
        else:
            bad.append(lineno)
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
        log.warning("%s: skipped %d line(s) that are not a JSON %s (line %s)", path, len(bad),
                    "object of the expected shape", shown)
    return out


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_events(run_dir: Path) -> list[dict]:
    return _jsonl(Path(run_dir) / EVENTS_FILE, lambda r: isinstance(r.get("event"), str) and _number(r.get("time")))


def read_metrics(run_dir: Path) -> list[dict]:
    return _jsonl(Path(run_dir) / "metrics.jsonl",
                  lambda r: type(r.get("step")) is int and (r.get("step_time_s") is None or _number(r["step_time_s"])))


def useful_step_time(metrics: list[dict]) -> float:
    """Sum of step_time_s over each step's last execution (a re-trained step counts once)."""
    last: dict[int, float] = {}
    for record in metrics:
        last[record["step"]] = float(record.get("step_time_s") or 0.0)
    return sum(last.values())


def summarize(events: list[dict], metrics: list[dict]) -> dict:
    """Outcome, restarts, causes, time lost and ETTR of a supervised run (see the module docstring)."""
    start = next((e["time"] for e in events if e["event"] == "start"), None)
    end_event = next((e for e in reversed(events) if e["event"] in ("done", "gave_up", "stopped")), None)
    end = end_event["time"] if end_event else (events[-1]["time"] if events else None)
    restarts = [e for e in events if e["event"] == "restart"]
    warm = [e for e in events if e["event"] == "warm_resumed"]
    lost = [float(e["time_lost_s"]) for e in events
            if e["event"] in ("first_step", "warm_resumed") and e.get("time_lost_s") is not None]
    wall = (end - start) if start is not None and end is not None else None
    useful = useful_step_time(metrics)
    steps = sorted({r["step"] for r in metrics})
    return {
        "outcome": end_event["event"] if end_event else "running",
        "reason": end_event.get("reason") if end_event else None,
        "attempts": sum(1 for e in events if e["event"] == "launch"),
        "restarts": len(restarts),
        "warm_restarts": len(warm),
        "causes": [e.get("cause") for e in events if e["event"] == "diagnosis"],
        "excluded": [str(e.get("host")) for e in events if e["event"] == "exclude"],
        "stragglers": [str(e.get("host")) for e in events if e["event"] == "straggler"],
        "last_step": steps[-1] if steps else None,
        "steps_lost": sum(int(e.get("steps_lost") or 0) for e in restarts + warm),
        "time_lost_s": round(sum(lost), 2),
        "wall_s": round(wall, 2) if wall is not None else None,
        "useful_s": round(useful, 2),
        "ettr": round(useful / wall, 4) if wall else None,
    }
