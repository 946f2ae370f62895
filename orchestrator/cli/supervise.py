"""`orchestrator supervise`: `orchestrator launch` that survives failures (same options, plus the supervisor's).

    $ orchestrator supervise --hosts 'node[1-4]' --nproc-per-node 2 --nodes 2:4 --spare-hosts node5 \\
          --max-restarts 5 --hang-timeout 60 --health-check 'nvidia-smi -L' \\
          -m orchestrator.engine --config small --run-dir /shared/runs/s1 --checkpoint-every 100
    $ orchestrator status /shared/runs/s1          # live table; `orchestrator events /shared/runs/s1` for the log

Every option of `orchestrator launch` works the same here (they are the launch command's own options).
The run directory is the program's `--run-dir` when it has one (so events.jsonl sits next to metrics.jsonl
and checkpoints/), else RUN_DIR/RUN_ID. Exit: 0 done, 1 gave up (summary says why), 128+N stopped by signal N.

With --preflight the health gate of `orchestrator check` runs first on the hosts and the spares; the nodes that
fail it are excluded before attempt 0 (events `preflight`, `exclude`, `replace`/`shrink` in events.jsonl), and
when fewer than --nodes MIN pass, the run gives up before starting (exit 1).

Inside salloc/sbatch, `--via slurm` runs each attempt as one srun step over the allocation's nodes (or --hosts
among them) minus the excluded ones, health-checks nodes with single-node srun steps, and with
--drain-bad-nodes drains what it excludes. Exit codes follow the requeue contract: 0 done, 2 configuration
error (never retried), 1 gave up (restartable: `submit --max-restarts` may requeue the job). Warm restarts of the
engine happen inside the srun step (one keeper per node); a lost node is replaced warm by a spare, whose keeper
waits in a one-node step of its own (submit the job with --no-kill, so that it outlives the node).
With --no-shared-run-dir the run dir may be private to each node (no shared file system): each node's launcher
runs under a small forwarder that sends the ranks' heartbeats and the engine's metrics.jsonl lines back over the
node's SSH session (under --via slurm: the srun step's output), into the head's run dir, where `orchestrator
status` and the detectors read them.
A node persistently slower than the median one is named a straggler (`straggler` event, `orchestrator status`)
and, with a spare, swapped for it at the next checkpoint: --straggler-threshold 1.10 --straggler-steps 50
--straggler-action replace|name|off.
SSH keepalives (every 5 s, 3 missed = lost, as for every command; ServerAliveInterval/ServerAliveCountMax override):
a node whose link died is noticed as a lost control connection, not only by the heartbeat timeout.
"""

from __future__ import annotations

import json
import os
import sys

import click

from orchestrator.cli.launch import launch_command
from orchestrator.cli.lines import line_printer
from orchestrator.errors import ConfigError

_REPLACED = {"failure_grace"}


def _check_unsupported(extra: dict) -> None:
    """Launch options this command does not act on yet must keep their defaults (never silently ignored)."""
    defaults = {p.name: p.default for p in launch_command.params}
    for name, value in extra.items():
        if value != defaults.get(name) and value not in ((), None):
            flag = "--" + name.replace("_", "-")
            raise ConfigError(flag, value, "not supported by `orchestrator supervise` yet")


def _supervise(*, hosts, hostfile, include, exclude, nproc_per_node, launcher, master_addr, master_port, env_args,
               env_files, no_forward_env, workdir, python, module, run_dir, run_id, dry_run, as_json, ssh_config,
               ssh_option, user, port, connect_timeout, program, nodes, spare_hosts, max_restarts, hang_timeout,
               startup_timeout, health_check, health_timeout, no_progress_attempts, max_host_failures, backoff,
               backoff_max, model_parallel, global_batch, failure_grace, via, srun_opts, drain_bad_nodes,
               restart, preflight, straggler_threshold, straggler_steps, straggler_action, shared_run_dir,
               **extra) -> int:
    import asyncio

    from orchestrator.check.preflight import describe as describe_preflight
    from orchestrator.check.preflight import preflight_plan, preflight_spec
    from orchestrator.hosts import HostList
    from orchestrator.launch.env import build_env_manifest
    from orchestrator.launch.plan import LaunchSpec
    from orchestrator.contracts import new_run_id
    from orchestrator.remote.ssh import SshOptions
    from orchestrator.supervisor import Supervisor, SuperviseOptions, plan_supervise

    _check_unsupported(extra)
    ssh = SshOptions(config=ssh_config, user=user, port=port, connect_timeout=connect_timeout,
                     options=tuple(ssh_option))
    env = build_env_manifest(head_env=os.environ, env_files=env_files, env_args=env_args, forward=not no_forward_env)
    spec = LaunchSpec(program=((module,) if module else ()) + tuple(program), module=module is not None,
                      run_id=run_id or new_run_id(), nproc_per_node=nproc_per_node, launcher=launcher,
                      master_addr=master_addr, master_port=master_port, python=python, workdir=workdir, env=env,
                      run_dir=run_dir)
    check = preflight_spec(spec, via=via) if preflight else None
    plan = plan_supervise(spec, SuperviseOptions(
        hosts=hosts, hostfile=hostfile, include=include, exclude=exclude, via=via, srun_options=tuple(srun_opts),
        drain_bad_nodes=drain_bad_nodes, ssh=ssh, failure_grace=failure_grace, nodes=nodes, spare_hosts=spare_hosts,
        max_restarts=max_restarts, no_progress_attempts=no_progress_attempts, max_host_failures=max_host_failures,
        backoff=backoff, backoff_max=backoff_max, model_parallel=model_parallel, global_batch=global_batch,
        hang_timeout=hang_timeout, startup_timeout=startup_timeout, health_check=health_check,
        health_timeout=health_timeout, restart=restart, straggler_threshold=straggler_threshold,
        straggler_steps=straggler_steps, straggler_action=straggler_action, shared_run_dir=shared_run_dir))
    cfg = plan.config
    checked = HostList(cfg.hosts + cfg.spares)  # the spares too: a bad one must not replace a bad host
    gate = preflight_plan(checked, check, on_failure="exclude") if check else None  # validates it
    if dry_run:
        if as_json:
            click.echo(json.dumps(plan.to_json() | ({"preflight": gate} if gate else {}), indent=2, default=str))
        else:
            for line in plan.describe() + ([describe_preflight(gate)] if gate else []):
                click.echo(line)
        return 0
    report = None
    if check:
        from orchestrator.cli.preflight import run_preflight

        report = run_preflight(checked, check, ssh=ssh)
    sink = line_printer(sys.stderr if as_json else None)

    click.echo(f"[orch] supervised run {spec.run_id}: {len(cfg.hosts)} nodes x {cfg.limits.nproc_per_node}, "
               f"events in {cfg.run_dir}/events.jsonl", err=True)
    summary = asyncio.run(Supervisor(cfg, plan.runner, sink=sink, preflight=report).run())
    from orchestrator.cli.status import print_summary

    print_summary(summary)
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    return summary["exit_code"]


_params = [p for p in launch_command.params if p.name not in _REPLACED]
_program = next(p for p in _params if p.name == "program")
_params.remove(_program)
supervise_command = click.Command(
    "supervise",
    callback=lambda **kw: _supervise(**kw),
    params=_params + [
        click.Option(["--nodes"], metavar="MIN:MAX", help="Node count range: shrink down to MIN when hosts are lost "
                     "and no spare is left (default: exactly the hosts given; extra hosts beyond MAX are spares)."),
        click.Option(["--spare-hosts"], metavar="NODESET", help="Hosts that replace excluded ones."),
        click.Option(["--max-restarts"], type=click.IntRange(min=0), default=3, show_default=True),
        click.Option(["--hang-timeout"], type=float, default=60.0, show_default=True,
                     help="Seconds without a heartbeat from every training rank before the run counts as hung "
                          "(under warm restarts a rank stopped by a signal counts at once)."),
        click.Option(["--startup-timeout"], type=float, default=600.0, show_default=True,
                     help="Seconds a rank may take from launch to its first step (model build, checkpoint load)."),
        click.Option(["--health-check"], metavar="CMD", help="Command run on every host between attempts "
                     "(exit 0 = healthy), e.g. 'nvidia-smi -L'. Default: reachability only."),
        click.Option(["--health-timeout"], type=float, default=20.0, show_default=True),
        click.Option(["--no-progress-attempts"], type=click.IntRange(min=1), default=3, show_default=True,
                     help="Give up after this many attempts in a row without a new checkpoint."),
        click.Option(["--max-host-failures"], type=click.IntRange(min=1), default=3, show_default=True,
                     help="Exclude a host blamed for this many host faults (signals, hangs, losses)."),
        click.Option(["--backoff"], type=float, default=1.0, show_default=True,
                     help="Seconds before the first restart; doubles per failure in a row."),
        click.Option(["--backoff-max"], type=float, default=60.0, show_default=True),
        click.Option(["--model-parallel"], type=click.IntRange(min=1), default=None,
                     help="tp x pp of the program (default: from its --tp/--pp); world sizes stay multiples of it."),
        click.Option(["--global-batch"], type=click.IntRange(min=1), default=None,
                     help="When given, a shrunk data-parallel degree must divide it."),
        click.Option(["--drain-bad-nodes"], is_flag=True, help="With --via slurm: drain (scontrol) the nodes "
                     "the supervisor excludes, with the reason, so later jobs avoid them too."),
        click.Option(["--restart"], type=click.Choice(["auto", "warm", "cold"]), default="auto", show_default=True,
                     help="warm: a failed or hung rank is replaced in about a second by a standby process on its "
                          "node, every rank restoring the newest in-memory snapshot (the engine; over SSH or inside "
                          "the srun step); "
                          "cold: every failure restarts the whole run from the disk checkpoint; auto: warm when "
                          "possible. A warm restart that cannot finish falls back to cold."),
        click.Option(["--straggler-threshold"], type=float, default=1.10, show_default=True, metavar="RATIO",
                     help="A node whose ranks spend at least RATIO x the median node's time in their rank-local "
                          "compute (the optimizer step) is a straggler..."),
        click.Option(["--straggler-steps"], type=int, default=50, show_default=True,
                     help="...when it is that slow throughout this many steps."),
        click.Option(["--straggler-action"], type=click.Choice(["replace", "name", "off"]), default="replace",
                     show_default=True, help="replace: swap a straggler for a spare at the next checkpoint (with no "
                     "spare: name it); name: only name it (events, status); off: no detection, no timing."),
        click.Option(["--shared-run-dir/--no-shared-run-dir"], default=True, show_default=True,
                     help="--no-shared-run-dir: the run dir is not on a file system the head and the nodes share; "
                          "each node's heartbeats and the engine's metrics.jsonl lines come back over its SSH "
                          "session (or the srun step's output) into the head's run dir (a node that does see the "
                          "head's run dir writes there itself). The engine's --checkpoint-every needs its "
                          "--checkpoint-local (node-local checkpoints, a copy on the next node)."),
        click.Option(["--failure-grace"], type=float, default=2.0, show_default=True,
                     help="Seconds other nodes get to exit on their own after the first failure."),
        _program,
    ],
    help="Run `orchestrator launch` under the supervisor: detect failed or hung ranks, drop bad hosts, "
         "restart from the newest checkpoint.",
    context_settings={"ignore_unknown_options": False},
)

commands = [supervise_command]
