"""`orchestrator jobs`, `logs` and `stop`: the runs recorded under the head's run directory.

    $ orchestrator jobs [--run-dir runs] [--json]        # id, name, state, hosts, started, duration, exit, restarts
    $ orchestrator logs [RUN] [--host node2] [--rank 3] [--follow]   # RUN: id, unique id prefix, job name, or last
    $ orchestrator stop RUN [--timeout 30]               # SIGTERM to the run's launcher; waits for its teardown

`stop` signals the `orchestrator up` process recorded in RUN/job.json (checked by pid and process start time);
that process then closes every session, and each node's agent kills the run's processes, as after Ctrl-C. A job
file submitted from outside Slurm is cancelled by its `up` (scancel); when that `up` is gone but the Slurm job
still runs, `stop` cancels it itself. Exit of `stop`: 0 when the run ended, 1 when it did not end within
--timeout, 2 when it is not running. States: running, pending (a submitted batch job Slurm has not started yet),
done, failed, stopped (by a signal), lost (its launcher is gone without recording an end).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import click

_run_dir = click.option("--run-dir", default="runs", show_default=True, help="Base directory of the runs on the head.")


@click.command("jobs")
@_run_dir
@click.option("--json", "as_json", is_flag=True, help="The table as a JSON list.")
def jobs_command(run_dir, as_json) -> int:
    """List the runs under RUN_DIR, oldest first."""
    from orchestrator.job.history import list_runs

    rows = [r.row() for r in list_runs(Path(run_dir))]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("id", "name", "state", "hosts", "started", "duration", "exit", "restarts"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row.values())
    Console(width=200).print(table)
    return 0


@click.command("logs")
@click.argument("run", required=False)
@_run_dir
@click.option("--host", default=None, help="Only this host's log.")
@click.option("--rank", type=click.IntRange(min=0), default=None, help="Only this global rank's lines.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the run ends.")
def logs_command(run, run_dir, host, rank, follow) -> int:
    """Print a run's per-host logs (the newest run when RUN is omitted)."""
    from orchestrator.errors import ConfigError
    from orchestrator.job.history import find_run

    found = find_run(Path(run_dir), run)
    if host is not None and host not in (found.record.get("hosts") or [host]):
        raise ConfigError("--host", host, f"not a host of run {found.id}: {', '.join(found.record['hosts'])}")
    tag = f"/{rank}: " if rank is not None else None
    offsets: dict[Path, int] = {}

    def drain() -> None:
        for path in found.log_files(host):
            with open(path, "rb") as fh:
                fh.seek(offsets.get(path, 0))
                data = fh.read()
            end = data.rfind(b"\n") + 1  # a partial last line waits for its newline
            offsets[path] = offsets.get(path, 0) + end
            for line in data[:end].decode("utf-8", "replace").splitlines():
                if tag is None or tag in line.split(" ", 1)[0] + " " or line.startswith(f"[rank{rank}]: "):
                    click.echo(line)

    drain()
    while follow and found.alive:
        time.sleep(0.5)
        drain()
    if follow:
        drain()
    return 0


@click.command("stop")
@click.argument("run")
@_run_dir
@click.option("--timeout", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Seconds to wait for the run's teardown to finish.")
def stop_command(run, run_dir, timeout) -> int:
    """Stop a running job: SIGTERM to its launcher, then wait until it has torn the run down."""
    from orchestrator.errors import ConfigError
    from orchestrator.job.history import find_run, load_run

    found = find_run(Path(run_dir), run)
    if not found.alive and found.record.get("slurm_job"):
        return _cancel_orphaned(found, timeout)
    if not found.alive:
        raise ConfigError("RUN", run, f"run {found.id} is not running (state {found.state})")
    os.kill(found.record["pid"], signal.SIGTERM)
    click.echo(f"[orch] sent SIGTERM to run {found.id} (pid {found.record['pid']}); waiting for its teardown",
               err=True)
    deadline = time.monotonic() + timeout
    while found.alive and time.monotonic() < deadline:
        time.sleep(0.2)
    if found.alive:
        click.echo(f"orchestrator: run {found.id} still running after {timeout:g} s", err=True)
        return 1
    ended = load_run(found.path)
    code = ended.record.get("exit_code") if ended else None
    click.echo(f"run {found.id}: {ended.state if ended else 'ended'}" + (f" (exit {code})" if code is not None else ""),
               file=sys.stdout)
    return 0


def _cancel_orphaned(found, timeout: float) -> int:
    """A submitted job file whose `up` is gone (killed, its terminal closed): scancel its Slurm job if it still
    runs, wait for Slurm to end it, and record the run as stopped."""
    from orchestrator import slurm
    from orchestrator.contracts import signal_exit_code
    from orchestrator.errors import ConfigError
    from orchestrator.job.history import record_end

    job_id = found.record["slurm_job"]
    job = slurm.job(job_id)
    if job is None or job.finished:
        raise ConfigError("RUN", found.id, f"run {found.id} is not running (state {found.state}; Slurm job "
                                           f"{job_id} {job.state if job else 'gone'})")
    slurm.cancel(job_id)
    click.echo(f"[orch] run {found.id}: its `up` is gone; cancelled Slurm job {job_id}", err=True)
    deadline = time.monotonic() + timeout
    while (job := slurm.job(job_id)) is not None and not job.finished and time.monotonic() < deadline:
        time.sleep(0.2)
    if job is not None and not job.finished:
        click.echo(f"orchestrator: Slurm job {job_id} still {job.state} after {timeout:g} s", err=True)
        return 1
    record_end(found.path, exit_code=signal_exit_code(signal.SIGTERM))
    click.echo(f"run {found.id}: stopped (Slurm job {job_id} cancelled)")
    return 0


commands = [jobs_command, logs_command, stop_command]
