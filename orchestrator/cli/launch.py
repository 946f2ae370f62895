"""`orchestrator launch`: one torchrun (or DeepSpeed launcher) per node, every rank's output in front of you.

    $ orchestrator launch --hosts 'node[1-4]' --nproc-per-node 2 --python /opt/venv/bin/python \\
          --env NCCL_DEBUG=INFO --env-file run.env -m orchestrator.launch.examples.allreduce
    $ orchestrator launch --hostfile hostfiles/a100.txt --launcher deepspeed --workdir /srv/job -- train.py --ds ds.json
    $ orchestrator launch --hosts 'node[1-2]' --nproc-per-node 8 --dry-run -- train.py     # would run ... per host
    $ orchestrator launch --hosts 'node[1-2]' --nproc-per-node 8 --dry-run --json -- train.py   # the plan as JSON
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from orchestrator.cli.lines import line_printer
from orchestrator.cli.options import HostSelection, host_options, resolve_from_cli
from orchestrator.cli.ssh_options import ssh_options


@click.command("launch")
@host_options
@click.option("--nproc-per-node", type=click.IntRange(min=1), default=None,
              help="Processes per node (default: each host's slots from the hostfile).")
@click.option("--launcher", type=click.Choice(["torchrun", "deepspeed", "warm"]), default="torchrun", show_default=True,
              help="warm: the engine only (-m orchestrator.engine); a node keeper restarts a failed rank from a "
                   "standby and in-memory snapshots in about a second, without stopping the others.")
@click.option("--via", type=click.Choice(["ssh", "slurm"]), default="ssh", show_default=True,
              help="slurm: inside salloc/sbatch, one `srun --ntasks-per-node=1 --kill-on-bad-exit=1` step "
                   "over the allocation's nodes (or --hosts among them).")
@click.option("--srun-opt", "srun_opts", multiple=True, metavar="OPT", help="Extra srun option with --via slurm.")
@click.option("--container", default=None, metavar="IMAGE",
              help="Run each node's launcher in `docker run --network host --ipc host` of IMAGE (load it first "
                   "with `orchestrator images load`); the run's containers are removed afterwards.")
@click.option("--container-python", default="python3", show_default=True, metavar="PATH",
              help="The interpreter inside the image.")
@click.option("--container-mount", "container_mounts", multiple=True, metavar="SRC:DST[:ro]",
              help="Extra bind mount (data, checkpoints), absolute paths on the node (repeatable).")
@click.option("--gpus/--no-gpus", default=False, show_default=True, help="With --container: docker run --gpus all.")
@click.option("--shm-size", default="16g", show_default=True, help="With --container: /dev/shm size.")
@click.option("--master-addr", default=None, metavar="ADDR",
              help="Rendezvous address the nodes dial (default: the first host's name).")
@click.option("--master-port", type=int, default=None, metavar="PORT",
              help="Rendezvous port (default: 29500-30499, derived from the run id).")
@click.option("--env", "env_args", multiple=True, metavar="NAME=VALUE", help="Set a variable on every rank (repeatable).")
@click.option("--env-file", "env_files", multiple=True, metavar="FILE", help="NAME=VALUE lines for every rank (repeatable).")
@click.option("--no-forward-env", is_flag=True,
              help="Do not forward the head's NCCL_*, TORCH_*, CUDA_*, PYTHON*, OMP_*, GLOO_* variables.")
@click.option("--workdir", multiple=True, metavar="[NODESET=]DIR",
              help="Working directory on the nodes; NODESET=DIR for some hosts (repeatable, later wins).")
@click.option("--python", multiple=True, metavar="[NODESET=]PATH",
              help="Interpreter on the nodes (default python3); NODESET=PATH for some hosts (repeatable).")
@click.option("-m", "--module", default=None, metavar="MODULE", help="Run a module (python -m) instead of a script.")
@click.option("--run-dir", default="runs", show_default=True, help="Base directory for runs/<run_id>/ on the head.")
@click.option("--run-id", default=None, help="Use this run id (default: a fresh one).")
@click.option("--failure-grace", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Seconds other nodes get to exit on their own after the first node failed, before teardown.")
@click.option("--preflight", is_flag=True,
              help="First run the health gate of `orchestrator check` on the hosts, with this run's SSH options, "
                   "--python and --workdir. launch: if a node fails, start nothing and exit 1 (255 when a node "
                   "was unreachable), with RUN_DIR/RUN_ID/preflight.hostfile of the nodes that passed. "
                   "supervise: failed nodes (spares too) are excluded before attempt 0; when fewer than "
                   "--nodes MIN pass, it gives up before starting (exit 1).")
@click.option("--dry-run", is_flag=True, help="Print what would run on each host and exit; connect to nothing.")
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable: the plan (with --dry-run) or plan + result as one JSON document on stdout.")
@ssh_options
@click.argument("program", nargs=-1, type=click.UNPROCESSED)
def launch_command(host_selection: HostSelection, nproc_per_node, launcher, via, srun_opts, container,
                   container_python, container_mounts, gpus, shm_size, master_addr, master_port, env_args,
                   env_files, no_forward_env, workdir, python, module, run_dir, run_id, failure_grace, preflight,
                   dry_run, as_json, ssh, program) -> int:
    """Start a multi-node torchrun/DeepSpeed job: plan, validate, then run it on every host.

    Everything after `--` is the script and its arguments (or, with -m, the module's arguments).

    Exit code: 0 every rank succeeded, 1 a rank failed, 255 a host was unreachable, 2 bad input (nothing
    started). With --preflight, a node that fails the gate is exit 1 (255 when unreachable) and nothing starts.
    """
    from orchestrator.check.preflight import describe as describe_preflight
    from orchestrator.check.preflight import preflight_plan, preflight_spec
    from orchestrator.launch.env import build_env_manifest
    from orchestrator.launch.plan import LaunchSpec, build_plan
    from orchestrator.contracts import new_run_id
    from orchestrator.launch.rundir import RunDir

    hosts = resolve_from_cli(host_selection, nproc_per_node=nproc_per_node)
    env = build_env_manifest(head_env=os.environ, env_files=env_files, env_args=env_args, forward=not no_forward_env)
    spec = LaunchSpec(
        program=((module,) if module else ()) + tuple(program), module=module is not None,
        run_id=run_id or new_run_id(), nproc_per_node=nproc_per_node, launcher=launcher,
        master_addr=master_addr, master_port=master_port, python=python, workdir=workdir, env=env, run_dir=run_dir,
    )
    plan = build_plan(spec, hosts)
    if container:
        from orchestrator.containers.run import ContainerSpec, containerize

        plan = containerize(plan, ContainerSpec(image=container, mounts=container_mounts, gpus=gpus,
                                                shm_size=shm_size, python=container_python))
    check = preflight_spec(spec, via=via, container=container) if preflight else None
    gate = preflight_plan(hosts, check, on_failure="refuse") if check else None  # validates it
    if via == "slurm":
        return launch_via_slurm(plan, srun_opts, dry_run=dry_run, as_json=as_json)
    if dry_run:
        if as_json:
            click.echo(json.dumps(plan.to_json() | ({"preflight": gate} if gate else {}), indent=2))
        else:
            for line in plan.describe() + ([describe_preflight(gate)] if gate else []):
                click.echo(line)
        return 0
    RunDir(Path(plan.run_dir)).create()  # a run dir that cannot be made is exit 2, before the header and any host
    if check:
        from orchestrator.cli.preflight import refuse, run_preflight

        report = run_preflight(hosts, check, ssh=ssh)
        if report.failed:
            rc = refuse(report, Path(plan.run_dir), rerun="orchestrator launch --hostfile {hostfile} with the "
                                                          "same options, without --hosts/--hostfile")
            if as_json:
                click.echo(json.dumps({"plan": plan.to_json(), "preflight": report.to_json()}, indent=2))
            return rc
    if container:
        from orchestrator.containers.run import run_containerized as run_plan  # also removes the containers
    else:
        from orchestrator.launch.runner import run_plan
    sink = line_printer(sys.stderr if as_json else None)

    click.echo(f"[orch] run {plan.run_id}: {len(plan.nodes)} nodes x {plan.nodes[0].nproc} ({plan.launcher}), "
               f"logs in {plan.run_dir}/logs/", err=True)
    result = run_plan(plan, ssh=ssh, sink=sink, failure_grace=failure_grace)
    report_launch(result)
    if as_json:
        click.echo(json.dumps({"plan": plan.to_json(), "result": result.to_json()}
                              | ({"preflight": report.to_json()} if check else {}), indent=2))
    return result.exit_code


def launch_via_slurm(plan, srun_opts, *, dry_run: bool, as_json: bool, what: str = "--via slurm") -> int:
    """--via slurm (and slurm-launch): the plan as one srun step of the enclosing allocation (exit 2 outside one)."""
    import shlex

    from orchestrator import slurm
    from orchestrator.launch import slurm as via_slurm
    from orchestrator.launch.env import redact_argv

    alloc = slurm.require_allocation(what)
    argv = via_slurm.srun_argv(plan, alloc, srun_options=srun_opts)  # validates before anything starts
    if dry_run:
        click.echo(json.dumps({"plan": plan.to_json(), "srun": redact_argv(argv)}, indent=2) if as_json
                   else f"would run: {shlex.join(redact_argv(argv))}")
        return 0
    return via_slurm.run_via_slurm(plan, srun_options=srun_opts, alloc=alloc)


def report_launch(result) -> None:
    """Per-host table, then the root cause (stderr: stdout may carry --json)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    table = Table(title=f"run {result.plan.run_id}", title_justify="left")
    for column in ("host", "ranks", "exit", "time", "status"):
        table.add_column(column)
    failed = {f.host: f for f in result.failures}
    for node in result.plan.nodes:
        r = result.hosts.get(node.host)
        status = ("ok" if r is not None and r.ok else
                  result.unreachable.get(node.host) or (failed[node.host].headline() if node.host in failed else
                                                        (r.error if r is not None and r.error else "failed")))
        table.add_row(node.host, f"{node.ranks.start}-{node.ranks.stop - 1}",
                      "-" if r is None or r.exit_code is None else str(r.exit_code),
                      "-" if r is None else f"{r.duration_s:.1f}s", status)
    console.print(table)
    first = result.first_failure
    if result.unreachable:
        for host, why in result.unreachable.items():
            click.echo(f"unreachable: {host}: {why}", err=True)
    if first is not None:
        click.echo(f"first failure: {first.describe()}", err=True)
    if result.stopped_by is not None:
        console.print(f"stopped by {signal_name(result.stopped_by)}", highlight=False)
    for line in result.teardown_lines():
        click.echo(line, err=True)  # one line per group, unwrapped: scripts grep it


def signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


commands = [launch_command]
