"""Pure detectors and the event-log summary."""

import json

from orchestrator.launch.output import OutputLine
from orchestrator.supervisor.detect import MetricsTail, parse_rank_exit, stalled_ranks
from orchestrator.supervisor.events import EventLog, read_events, summarize

TEXT = ("E1123 10:42:51.649000 22901 torch/distributed/elastic/multiprocessing/api.py:1002] "
        "failed (exitcode: -9) local_rank: 1 (pid: 22931) of binary: .venv/bin/python")


def out(host, rank, text, **kw):
    return OutputLine(host, rank, "stderr", text, text.encode(), **kw)


def test_parse_rank_exit_from_torchrun_line():
    found = parse_rank_exit(out("node2", None, TEXT), now=5.0)
    assert (found.host, found.local_rank, found.exitcode, found.pid, found.signal) == ("node2", 1, -9, 22931, "SIGKILL")


def test_rank_output_is_not_a_rank_exit():
    assert parse_rank_exit(out("node2", 3, TEXT)) is None  # a rank printed it: the program's, not torchrun's
    assert parse_rank_exit(out("node2", None, "hello")) is None
    assert parse_rank_exit(out(None, None, TEXT)) is None  # srun's own message
    assert parse_rank_exit(out("node2", None, TEXT, continued=True)) is None  # the middle of a long line


def _beat(rank, step, t, status="training"):
    return {"rank": rank, "host": "n1", "step": step, "time": t, "status": status, "pid": 100 + rank}


def test_stalled_ranks():
    beats = {"a": _beat(0, 5, 100.0), "b": _beat(1, 4, 90.0), "c": _beat(2, 0, 50.0, "starting"),
             "d": _beat(3, 12, 10.0, "done")}
    # rank 1 waits (a slow peer, a busy host) while rank 0 still beats: the run moves, no hang
    assert stalled_ranks(beats, now=101.0, hang_timeout=5, startup_timeout=60, launched_at=0, expected=4) == []
    stalled = stalled_ranks(beats, now=120.0, hang_timeout=5, startup_timeout=60, launched_at=0, expected=4)
    assert [b["rank"] for b in stalled] == [2, 1, 0]


def test_missing_heartbeats_count_after_startup_timeout():
    assert stalled_ranks({}, now=10, hang_timeout=5, startup_timeout=60, launched_at=0, expected=2) == []
    assert stalled_ranks({}, now=61, hang_timeout=5, startup_timeout=60, launched_at=0, expected=2) == [
        {"rank": None, "missing": 2}]


def test_metrics_tail_waits_for_whole_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.poll() == []
    path.write_text('{"step": 1, "loss": 5}\n{"step": 2, "lo')
    assert [r["step"] for r in tail.poll()] == [1]
    with path.open("a") as f:
        f.write('ss": 4}\n')
    assert [r["step"] for r in tail.poll()] == [2]


def test_event_log_and_summary(tmp_path):
    log = EventLog(tmp_path)
    log.emit("start", hosts=["n1"])
    log.emit("launch", attempt=0)
    log.emit("diagnosis", cause="killed", host="n1")
    log.emit("restart", attempt=1, resume_step=3, steps_lost=2)
    log.emit("first_step", attempt=1, step=4, time_lost_s=7.5)
    log.close()
    events = read_events(tmp_path)
    events.append({"event": "done", "time": events[0]["time"] + 100})
    metrics = [{"step": s, "step_time_s": 1.0} for s in (1, 2, 3, 4, 5, 4, 5, 6)]
    summary = summarize(events, metrics)
    assert summary["outcome"] == "done" and summary["restarts"] == 1 and summary["causes"] == ["killed"]
    assert summary["steps_lost"] == 2 and summary["time_lost_s"] == 7.5 and summary["last_step"] == 6
    assert summary["useful_s"] == 6.0 and abs(summary["ettr"] - 0.06) < 1e-3
    assert all("event" in json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines())
