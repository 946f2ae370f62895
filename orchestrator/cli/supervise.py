"""`orchestrator supervise`: `orchestrator launch` that survives failures (same options, plus the supervisor's).

    $ orchestrator supervise --hosts 'node[1-4]' --nproc-per-node 2 --nodes 2:4 --spare-hosts node5 \\
          --max-restarts 5 --hang-timeout 60 --health-check 'nvidia-smi -L' \\
          -m orchestrator.engine --config small --run-dir /shared/runs/s1 --checkpoint-every 100
    $ orchestrator status /shared/runs/s1          # live table; `orchestrator events /shared/runs/s1` for the log

Every option of `orchestrator launch` works the same here (they are the launch command's own options).
The run directory is the program's `--run-dir` when it has one (so events.jsonl sits next to metrics.jsonl
and checkpoints/), else RUN_DIR/RUN_ID. Exit: 0 done, 1 gave up (summary says why), 128+N stopped by signal N.

Inside salloc/sbatch, `--via slurm` runs each attempt as one srun step over the allocation's nodes (or --hosts
among them) minus the excluded ones, health-checks nodes with single-node srun steps, and with
--drain-bad-nodes drains what it excludes. Exit codes follow the requeue contract: 0 done, 2 configuration
error (never retried), 1 gave up (restartable: `submit --max-restarts` may requeue the job).
SSH keepalives (ServerAliveInterval=5, ServerAliveCountMax=3) are on unless --ssh-option sets them: a node whose
link died is then noticed as a lost control connection, not only by the heartbeat timeout.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import click

from orchestrator.cli.launch import launch_command
from orchestrator.cli.options import HostSelection, resolve_from_cli
from orchestrator.errors import ConfigError

_REPLACED = {"failure_grace"}
KEEPALIVE = ("ServerAliveInterval=5", "ServerAliveCountMax=3")


def _program_option(program: tuple[str, ...], name: str) -> str | None:
    """The value of `--name V` or `--name=V` in the program's arguments (last wins)."""
    value = None
    for i, arg in enumerate(program):
        if arg == name and i + 1 < len(program):
            value = program[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def parse_nodes(text: str | None, available: int) -> tuple[int, int]:
    """'MIN:MAX', 'N' (= N:N) or None (= every given host) -> (MIN, MAX)."""
    if text is None:
        return available, available
    low, sep, high = text.partition(":")
    try:
        lo, hi = int(low), int(high) if sep else int(low)
    except ValueError:
        raise ConfigError("--nodes", text, "use MIN:MAX, e.g. 2:4") from None
    if not 1 <= lo <= hi:
        raise ConfigError("--nodes", text, "use 1 <= MIN <= MAX, e.g. 2:4")
    if lo > available:
        raise ConfigError("--nodes", text, f"MIN is more than the {available} hosts given")
    return lo, hi


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
               **extra) -> int:
    import asyncio

    _check_unsupported(extra)
    steps = None
    if via == "slurm":  # inside salloc/sbatch: attempts are srun steps; hosts default to the allocation's nodes
        from orchestrator import slurm
        from orchestrator.supervisor.slurm import SlurmSteps

        steps = SlurmSteps(slurm.require_allocation("--via slurm"), srun_options=srun_opts,
                           drain_bad_nodes=drain_bad_nodes)
    elif srun_opts or drain_bad_nodes:
        raise ConfigError("--srun-opt/--drain-bad-nodes", list(srun_opts) or True, "only with --via slurm")

    from orchestrator.hosts import Host, expand
    from orchestrator.launch.env import build_env_manifest, redact_argv
    from orchestrator.launch.plan import LaunchSpec
    from orchestrator.launch.rundir import new_run_id
    from orchestrator.remote.ssh import SshOptions
    from orchestrator.supervisor import Supervisor, SupervisorConfig
    from orchestrator.supervisor.loop import attempt_plan
    from orchestrator.supervisor.policy import Limits

    selection = HostSelection(hosts=hosts, hostfile=hostfile, include=include, exclude=exclude)
    host_list = list(resolve_from_cli(selection, nproc_per_node=nproc_per_node))
    nproc = nproc_per_node or host_list[0].slots
    spares = [Host(n, nproc) for n in (expand(spare_hosts, field="--spare-hosts") if spare_hosts else [])]
    if overlap := {s.name for s in spares} & {h.name for h in host_list}:
        raise ConfigError("--spare-hosts", spare_hosts, f"{sorted(overlap)} are already run hosts")
    lo, hi = parse_nodes(nodes, len(host_list))
    full_program = ((module,) if module else ()) + tuple(program)
    if model_parallel is None:
        model_parallel = 1
        for opt in ("--tp", "--pp"):
            value = _program_option(full_program, opt)
            if value and value.lstrip("-").isdigit() and int(value) > 0:
                model_parallel *= int(value)
    rid = run_id or new_run_id()
    base = _program_option(full_program, "--run-dir")
    sup_dir = Path(base) if base else Path(run_dir) / rid
    env = build_env_manifest(head_env=os.environ, env_files=env_files, env_args=env_args, forward=not no_forward_env)
    spec = LaunchSpec(program=full_program, module=module is not None, run_id=rid, nproc_per_node=nproc_per_node,
                      launcher=launcher, master_addr=master_addr, master_port=master_port, python=python,
                      workdir=workdir, env=env, run_dir=run_dir)
    limits = Limits(min_nodes=lo, max_nodes=min(hi, len(host_list)), max_restarts=max_restarts,
                    no_progress_attempts=no_progress_attempts, max_host_failures=max_host_failures,
                    nproc_per_node=nproc, model_parallel=model_parallel, global_batch=global_batch,
                    backoff_s=backoff, backoff_max_s=backoff_max)
    cfg = SupervisorConfig(spec=spec, hosts=host_list[:limits.max_nodes], spares=spares + [
        Host(h.name, nproc) for h in host_list[limits.max_nodes:]], run_dir=sup_dir, limits=limits,
        hang_timeout=hang_timeout, startup_timeout=startup_timeout,
        health_command=tuple(shlex.split(health_check)) if health_check else (), health_timeout=health_timeout,
        failure_grace=failure_grace)
    plan = attempt_plan(cfg, 0, cfg.hosts)  # plan (and validate) before anything is written or started
    srun = steps.argv(plan) if steps is not None else None
    if dry_run:
        doc = {"run_dir": str(sup_dir), "plan": plan.to_json(), "limits": vars(limits),
               "spares": [s.name for s in cfg.spares]} | ({"srun": redact_argv(srun)} if srun else {})
        if as_json:
            click.echo(json.dumps(doc, indent=2, default=str))
        else:
            for line in plan.describe():
                click.echo(line)
            if srun:
                click.echo(f"each attempt: {shlex.join(redact_argv(srun))}")
            click.echo(f"supervised: run dir {sup_dir}, nodes {lo}:{limits.max_nodes}, spares "
                       f"{','.join(doc['spares']) or '-'}, max restarts {max_restarts}, hang timeout {hang_timeout:g} s")
        return 0
    out = sys.stderr if as_json else sys.stdout

    def sink(line: str, stream: str) -> None:
        print(line, file=sys.stderr if stream == "stderr" else out, flush=True)

    options = tuple(ssh_option)
    if not any(o.lower().startswith("serveraliveinterval") for o in options):
        options += KEEPALIVE  # a pulled cable closes the control connection in ~15 s, whatever the heartbeat says
    ssh = SshOptions(config=ssh_config, user=user, port=port, connect_timeout=connect_timeout, options=options)
    click.echo(f"[orch] supervised run {rid}: {len(cfg.hosts)} nodes x {nproc}, events in {sup_dir}/events.jsonl",
               err=True)
    supervisor = Supervisor(cfg, ssh=ssh, sink=sink, slurm=steps)
    summary = asyncio.run(supervisor.run())
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
                     help="Seconds without a heartbeat from a training rank before the run counts as hung."),
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
        click.Option(["--failure-grace"], type=float, default=2.0, show_default=True,
                     help="Seconds other nodes get to exit on their own after the first failure."),
        _program,
    ],
    help="Run `orchestrator launch` under the supervisor: detect failed or hung ranks, drop bad hosts, "
         "restart from the newest checkpoint.",
    context_settings={"ignore_unknown_options": False},
)

commands = [supervise_command]
