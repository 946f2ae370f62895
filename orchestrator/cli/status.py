"""`orchestrator status RUN_DIR` (live table of a supervised run) and `orchestrator events RUN_DIR` (its log).

    $ orchestrator status runs/s1            # refreshes every second until the run ends; --once prints one table
    $ orchestrator events runs/s1            # one line per event; --json for the raw JSONL; --summary for totals

The table: one row per rank of the current attempt (host, rank, step, status, age of its last heartbeat, its
mean rank-local compute time per step this attempt, and "straggler 1.52x" on the ranks of a node the
supervisor named slow), under a header with the attempt, restarts, excluded hosts, stragglers and the newest
step, over the last failure's diagnosis (for a hang, where the ranks are stuck: `rank 1 on n2 is in read_batch
at data.py:120 while every other rank waits in all_reduce at train.py:88 (step)`). Read-only: safe on a live
run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

_END = ("done", "gave_up", "stopped")


def _snapshot(run_dir: Path):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from orchestrator.engine.heartbeat import read_heartbeats
    from orchestrator.supervisor.events import read_events, read_metrics, summarize

    events = read_events(run_dir)
    summary = summarize(events, read_metrics(run_dir))
    launch = next((e for e in reversed(events) if e["event"] == "launch"), None)
    title = (f"{run_dir}: {summary['outcome']}, attempt {launch['attempt'] if launch else '-'}, "
             f"restarts {summary['restarts']}, step {summary['last_step']}")
    if summary["excluded"]:
        title += f", excluded {','.join(summary['excluded'])}"
    attempt = launch["attempt"] if launch else None
    slow = {e["host"]: e for e in events if e["event"] == "straggler" and e.get("attempt") == attempt}
    if slow:
        title += ", stragglers " + ",".join(f"{h} ({e.get('slowdown')}x)" for h, e in slow.items())
    table = Table(title=title, title_justify="left")
    for column in ("host", "rank", "step", "status", "last heartbeat", "compute/step", "straggler"):
        table.add_column(column)
    beats = read_heartbeats(run_dir / "heartbeat") if (run_dir / "heartbeat").is_dir() else {}
    now = time.time()
    for beat in sorted(beats.values(), key=lambda b: b.get("rank", 0)):
        steps, named = beat.get("compute_steps"), slow.get(beat.get("host"))
        table.add_row(str(beat.get("host")), str(beat.get("rank")), str(beat.get("step")), str(beat.get("status")),
                      f"{now - float(beat.get('time', now)):.1f}s ago",
                      f"{1e3 * float(beat.get('compute_s', 0)) / steps:.2f} ms" if steps else "-",
                      f"{named.get('slowdown')}x" if named else "")
    missing = (launch or {}).get("world_size", 0) - len(beats)
    if missing > 0 and summary["outcome"] == "running":
        table.add_row(",".join(launch["hosts"]), "-", "-", f"{missing} rank(s) without a heartbeat yet", "-", "-", "")
    diagnosis = next((e for e in reversed(events) if e["event"] == "diagnosis"), None)
    if diagnosis is None:
        return table, summary
    last = Text(f"last failure (attempt {diagnosis.get('attempt')}): {diagnosis.get('cause')} on "
                f"{diagnosis.get('host') or '-'}: {diagnosis.get('culprit') or diagnosis.get('detail')}")
    return Group(table, last), summary


@click.command("status")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--once", is_flag=True, help="Print one table and exit (default: refresh until the run ends).")
@click.option("--interval", type=float, default=1.0, show_default=True)
def status_command(run_dir: str, once: bool, interval: float) -> int:
    """Live table of a supervised run: hosts, ranks, step, last heartbeat, restarts."""
    from rich.console import Console
    from rich.live import Live

    path = Path(run_dir)
    console = Console()
    table, summary = _snapshot(path)
    if once or summary["outcome"] in _END:
        console.print(table)
        return 0
    with Live(table, console=console, refresh_per_second=4) as live:
        while summary["outcome"] not in _END:
            time.sleep(interval)
            table, summary = _snapshot(path)
            live.update(table)
    return 0


def _describe(event: dict) -> str:
    fields = {k: v for k, v in event.items() if k not in ("event", "time", "summary")}
    stamp = time.strftime("%H:%M:%S", time.localtime(event.get("time", 0)))
    return f"{stamp} {event['event']:<10} " + " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in fields.items())


@click.command("events")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="The raw JSONL.")
@click.option("--summary", "only_summary", is_flag=True, help="Only the summary (outcome, time lost, ETTR).")
def events_command(run_dir: str, as_json: bool, only_summary: bool) -> int:
    """Print the supervisor's event log of RUN_DIR (events.jsonl)."""
    from orchestrator.errors import ConfigError
    from orchestrator.supervisor.events import EVENTS_FILE, read_events, read_metrics, summarize

    path = Path(run_dir)
    if not (path / EVENTS_FILE).is_file():
        raise ConfigError("RUN_DIR", run_dir, f"holds no {EVENTS_FILE}; give the run dir of `orchestrator supervise`")
    events = read_events(path)
    summary = summarize(events, read_metrics(path))
    if as_json:
        for event in ([] if only_summary else events):
            click.echo(json.dumps(event, default=str))
        if only_summary:
            click.echo(json.dumps(summary))
        return 0
    if not only_summary:
        for event in events:
            click.echo(_describe(event))
    print_summary(summary)
    return 0


def print_summary(summary: dict) -> None:
    """The end-of-run summary on stderr (stdout may carry --json)."""
    lines = [f"outcome: {summary['outcome']}" + (f" ({summary['reason']})" if summary.get("reason") else ""),
             f"attempts {summary['attempts']}, restarts {summary['restarts']} cold + {summary.get('warm_restarts', 0)} "
             f"warm, last step {summary['last_step']}, "
             f"steps lost {summary['steps_lost']}",
             f"causes: {', '.join(str(c) for c in summary['causes']) or '-'}; "
             f"excluded: {', '.join(summary['excluded']) or '-'}; "
             f"stragglers: {', '.join(summary.get('stragglers', [])) or '-'}",
             f"time lost to failures {summary['time_lost_s']} s of {summary['wall_s']} s wall; ETTR {summary['ettr']}"]
    for line in lines:
        click.echo(line, err=True)


commands = [status_command, events_command]
