"""`orchestrator plot`: metrics split into attempts at each resume, restarts from events.jsonl, a PNG written."""

import json
import subprocess

import pytest

from orchestrator.engine.plot import plot_run, read_history
from orchestrator.errors import ConfigError
from orch_cli import ORCH


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def metrics(steps, resumed_from=None):
    records = [{"step": s, "loss": 5 - 0.1 * s, "lr": 1e-3, "tokens_per_s": 1000.0 + s, "step_time_s": 0.1}
               for s in steps]
    if resumed_from is not None:
        records[0]["resumed_from"] = resumed_from
    return records


@pytest.fixture
def run_dir(tmp_path):
    write_jsonl(tmp_path / "metrics.jsonl", metrics(range(1, 8)) + metrics(range(5, 11), resumed_from=4))
    return tmp_path


def test_history_splits_attempts_and_marks_the_resume(run_dir):
    history = read_history(run_dir)
    assert [[r["step"] for r in seg][0] for seg in history.segments] == [1, 5]
    assert [(r.step, r.label) for r in history.restarts] == [(4, "resumed")]


def test_events_name_the_cause(run_dir):
    """The supervisor's log (orchestrator/supervisor/events.py): restart events carry resume_step and cause."""
    write_jsonl(run_dir / "events.jsonl", [
        {"event": "launch", "attempt": 0, "resume_step": None}, {"event": "failure", "kind": "rank_exit", "rank": 2},
        {"event": "restart", "attempt": 1, "resume_step": 4, "steps_lost": 3, "cause": "rank 2 exited -9"},
        {"event": "first_step", "attempt": 1, "step": 5, "resumed_from": 4}])
    (restart,) = read_history(run_dir).restarts
    assert restart.step == 4 and "rank 2 exited -9" in restart.label


def test_event_without_a_step_takes_it_from_the_metrics(run_dir):
    write_jsonl(run_dir / "events.jsonl", [{"event": "restart", "cause": "hang"}])
    assert [(r.step, r.label) for r in read_history(run_dir).restarts] == [(4, "restart: hang")]


def test_cli_writes_a_png(run_dir):
    out = subprocess.run([*ORCH, "plot", str(run_dir)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    png = run_dir / "training.png"
    assert out.stdout.strip() == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_metrics_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="metrics.jsonl"):
        plot_run(tmp_path)
