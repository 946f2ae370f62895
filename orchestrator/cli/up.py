"""`orchestrator up`: run a job file: sync its workdir to every node, run its setup, then launch (or supervise).

    $ orchestrator up job.yaml --ssh-config ssh_config
    $ orchestrator up job.yaml --set nproc_per_node=4 --set 'run=train.py --steps 10'   # dotted FIELD=VALUE
    $ orchestrator up job.yaml --dry-run [--json]      # the resolved plan (secrets redacted); connects to nothing
    $ orchestrator up --schema                         # the job file's JSON Schema
    $ orchestrator up slurm-job.yaml                   # `slurm:` outside an allocation: sbatch, then follow the job

Output streams as `host/rank: line` like `orchestrator launch`; the run is recorded under RUN_DIR/RUN_ID
(job.json with this process's pid, logs/, plan.json, result.json) for `orchestrator jobs`, `logs` and `stop`.
Exit: the launch's (0 ok, 1 a rank failed, 255 a host unreachable, 128+N stopped by signal N); 1 when the sync or
the setup failed on a host; 2 for a bad job file (nothing started). With `preflight: true` the health gate of
`orchestrator check` runs first: a plain launch stops on a failed node (exit 1, 255 when unreachable; nothing
synced or started), a supervised one excludes it before attempt 0.

A job file with `slurm:` run inside an allocation (salloc, sbatch) runs there as one srun step. Outside one, `up`
submits a batch job with the section's nodes/gpus_per_node/partition/time/account whose batch step runs the
same job inside the allocation it gets (`up RUN/spec.json --inside`, orchestrator.job.batch), streams its output,
and exits with its exit code; Ctrl-C or `orchestrator stop` cancels it (scancel) and waits until it has ended.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import click

from orchestrator.cli.lines import line_printer
from orchestrator.cli.ssh_options import ssh_options


@click.command("up")
@click.argument("job_file", required=False, metavar="JOB_FILE")
@click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE",
              help="Override a job file field, dotted for sections: --set supervise.max_restarts=5 (repeatable).")
@click.option("--run-dir", default="runs", show_default=True, help="Base directory for runs/<run_id>/ on the head.")
@click.option("--run-id", default=None, help="Use this run id (default: a fresh one).")
@click.option("--dry-run", is_flag=True, help="Print the resolved plan and exit; connect to nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable: the plan (with --dry-run) as JSON on stdout.")
@click.option("--schema", is_flag=True, help="Print the job file's JSON Schema and exit.")
@click.option("--inside", is_flag=True, hidden=True,
              help="The batch step of a job file submitted from outside Slurm: the submitting `up` records the run.")
@ssh_options
def up_command(job_file, sets, run_dir, run_id, dry_run, as_json, schema, inside, ssh) -> int:
    """Run JOB_FILE (YAML): copy its workdir to the nodes, run its setup, launch or supervise its `run`."""
    from orchestrator.errors import ConfigError
    from orchestrator.job.plan import plan_job
    from orchestrator.job.spec import job_schema, load_job
    from orchestrator.contracts import new_run_id

    if schema:
        click.echo(json.dumps(job_schema(), indent=2))
        return 0
    if job_file is None:
        raise ConfigError("JOB_FILE", "", "give the job file, e.g. orchestrator up job.yaml")
    jp = plan_job(load_job(job_file, sets=sets), run_id=run_id or new_run_id(), run_dir=run_dir)
    if inside and jp.batch:
        raise ConfigError("--inside", job_file, "only the batch step of a submitted job file uses it, inside its "
                                                "allocation; leave it out")
    if dry_run:
        if as_json:
            click.echo(json.dumps(jp.to_json(ssh=ssh), indent=2, default=str))
        else:
            for line in jp.describe(ssh=ssh):
                click.echo(line)
        return 0
    return _up(jp, ssh, record=not inside)


class _Stopped(KeyboardInterrupt):
    """Ctrl-C's exception for a SIGTERM (`orchestrator stop`), which keeps the signal for the exit code (143)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum, _frame):
    raise _Stopped(signum)  # SIGTERM during sync/setup: end them like Ctrl-C (sessions closed, nodes clean)


def _up(jp, ssh, *, record: bool = True) -> int:
    from orchestrator.contracts import signal_exit_code
    from orchestrator.errors import ConfigError
    from orchestrator.job.history import record_end, record_start

    spec = jp.job.spec
    run = Path(jp.run_dir) / jp.run_id
    work = jp.supervise_plan(ssh=ssh).config.run_dir if jp.supervised else run
    if record:
        record_start(run, name=spec.name, hosts=[h.name for h in jp.hosts] if not jp.batch else [],
                     run_dir=work, supervised=jp.supervised, job_file=str(jp.job.source),
                     code=jp.tree.digest if jp.tree else None)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    rc, restarts = signal_exit_code(signal.SIGINT), None
    try:
        if jp.batch:
            from orchestrator.job.batch import submit_and_follow

            rc = submit_and_follow(jp, ssh, run)
            return rc
        report = None
        if gate := jp.preflight():
            from orchestrator.cli.preflight import refuse, run_preflight

            report = run_preflight(*gate, ssh=ssh)
            if report.failed and not jp.supervised:
                rc = refuse(report, run.resolve(), rerun=f"orchestrator up {jp.job.source.name} --set hosts=null "
                                                         "--set hostfile={hostfile}")
                return rc
        # after a gate, the spares that passed get the code too (one may replace a failed host); failed nodes do not
        targets = [h.name for h in gate[0] if h.name not in report.failed] if gate else [h.name for h in jp.hosts]
        workdirs, rc = _sync(jp, ssh, targets) if jp.tree is not None else (None, 0)
        if rc:
            return rc
        if spec.setup_script:
            rc = _setup(jp, ssh, run, workdirs, targets)
            if rc:
                return rc
        signal.signal(signal.SIGTERM, previous)  # the launcher installs its own stop handlers
        rc, restarts = _launch(jp, ssh, workdirs, report)
        return rc
    except KeyboardInterrupt as exc:
        rc = signal_exit_code(getattr(exc, "signum", signal.SIGINT))
        click.echo("orchestrator: interrupted", err=True)
        return rc
    except ConfigError as exc:  # e.g. Slurm refused the batch job: recorded as the exit 2 it is
        rc = exc.exit_code
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        if record:
            record_end(run, exit_code=rc, restarts=restarts)


def _sync(jp, ssh, hosts: list[str]) -> tuple[dict[str, str] | None, int]:
    """Code on every node: (host -> its code directory, 0), or (None, exit code) when a host failed."""
    from orchestrator.hosts import fold
    from orchestrator.job.sync import sync_tree

    results = sync_tree(jp.tree, hosts, ssh=ssh, python=jp.job.spec.python, dest=jp.job.spec.sync.dest)
    by_status: dict[str, list[str]] = {}
    for r in results.values():
        status = f"{r.status} (changed files only, the rest linked from {r.delta_from[:12]})" if r.delta_from else r.status
        by_status.setdefault(status if r.ok else f"failed: {r.error}", []).append(r.host)
    summary = "; ".join(f"{fold(h)} {status}" for status, h in by_status.items())
    click.echo(f"[orch] sync {len(jp.tree.files)} files (sha256 {jp.tree.digest[:12]}): {summary}", err=True)
    failed = [r for r in results.values() if not r.ok]
    if failed:
        return None, 255 if any(r.path is None for r in failed) else 1
    return {h: results[h].path for h in hosts}, 0


def _setup(jp, ssh, run: Path, workdirs, hosts: list[str]) -> int:
    from orchestrator.contracts import CODE_PIN_ENV
    from orchestrator.job.inuse import PIN_S
    from orchestrator.job.setup import setup_argv
    from orchestrator.launch.rundir import RunDir
    from orchestrator.remote import run_on

    rundir = RunDir(run)
    rundir.create()
    with rundir.host_logs(hosts) as logs:
        def on_line(host: str, stream: str, line: str) -> None:
            text = f"{host}: setup: {line}"
            logs.write(host, text)
            click.echo(text, err=stream == "stderr")

        result = run_on(hosts, setup_argv(script=jp.job.spec.setup_script, digest=jp.tree.digest if jp.tree else ""),
                        ssh=ssh, cwd=(lambda h: workdirs[h]) if workdirs else None,
                        env={**jp.env.values, CODE_PIN_ENV: str(PIN_S)},  # the copy is kept for the launch
                        python=jp.job.spec.python, run_id=f"{jp.run_id}-setup", on_line=on_line)
    for line in result.grouped_failures():
        click.echo(f"[orch] setup failed: {line}", err=True)
    return result.exit_code


def _launch(jp, ssh, workdirs, preflight) -> tuple[int, int | None]:
    from orchestrator.cli.launch import launch_via_slurm, report_launch

    sink = line_printer()

    if jp.supervised:
        import asyncio

        from orchestrator.cli.status import print_summary
        from orchestrator.supervisor import Supervisor

        plan = jp.supervise_plan(workdirs, ssh=ssh)
        click.echo(f"[orch] supervised run {jp.run_id}: {len(plan.config.hosts)} nodes, "
                   f"events in {plan.config.run_dir}/events.jsonl", err=True)
        summary = asyncio.run(Supervisor(plan.config, plan.runner, sink=sink, preflight=preflight).run())
        print_summary(summary)
        return summary["exit_code"], summary.get("restarts")
    plan = jp.launch_plan(workdirs)
    if jp.job.spec.slurm is not None:
        return launch_via_slurm(plan, (), dry_run=False, as_json=False, what="slurm:"), None
    if jp.job.spec.container:
        from orchestrator.containers.run import run_containerized as run_plan
    else:
        from orchestrator.launch.runner import run_plan
    click.echo(f"[orch] run {plan.run_id}: {len(plan.nodes)} nodes x {plan.nodes[0].nproc} ({plan.launcher}), "
               f"logs in {plan.run_dir}/logs/", err=True)
    result = run_plan(plan, ssh=ssh, sink=sink)
    report_launch(result)
    return result.exit_code, 0


commands = [up_command]
