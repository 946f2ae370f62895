"""`--preflight` of launch, supervise and up: the health gate of `orchestrator check` before anything starts.

    report = run_preflight(hosts, preflight_spec(launch_spec), ssh=ssh)   # progress, then the table (stderr)
    if report.failed:
        return refuse(report, Path("runs/ID"), rerun="orchestrator launch --hostfile {hostfile} ...")   # launch
    Supervisor(cfg, runner, preflight=report)      # supervise: its failed nodes are excluded before attempt 0

The gate is orchestrator.check.run_check with the run's hosts, SSH options, --python and --workdir; its table
goes to stderr (stdout may carry --json or the ranks' output).
"""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.hosts import fold

__all__ = ["refuse", "run_preflight"]


def run_preflight(hosts, check, *, ssh):
    """Run the gate on `hosts` (a HostList) and show its per-node table; the CheckReport."""
    from orchestrator.check import run_check
    from orchestrator.cli.check import show_report

    click.echo(f"[preflight] checking {hosts.folded} before the run", err=True)
    report = run_check(hosts, check, ssh=ssh, progress=lambda msg: click.echo(f"[preflight] {msg}", err=True))
    show_report(report, err=True)
    return report


def refuse(report, run: Path, *, rerun: str) -> int:
    """Nothing starts: write the hostfile of the nodes that passed (and the gate's JSON) under `run`, say how to
    run on them (`rerun` with {hostfile} in it), and return the gate's exit code (1 failed, 255 unreachable)."""
    from orchestrator.check.report import write_hostfile
    from orchestrator.launch.rundir import RunDir

    rundir = RunDir(run)
    rundir.create()
    rundir.write_json("preflight.json", report.to_json())
    hostfile = write_hostfile(report, run / "preflight.hostfile")
    passed = len(report.admitted())
    click.echo(f"[orch] preflight: {fold(report.failed)} failed; nothing was started", err=True)
    if passed:
        click.echo(f"[orch] the {passed} node(s) that passed: {hostfile}; to run on them: "
                   + rerun.format(hostfile=hostfile), err=True)
    return report.exit_code
