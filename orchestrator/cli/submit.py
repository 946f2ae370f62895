"""`orchestrator submit` (an sbatch job that runs the srun wrapper) and `orchestrator slurm-launch` (the wrapper).

    $ orchestrator submit --nodes 4 --gpus-per-node 8 --time 04:00:00 --partition gpu --requeue \\
          -m orchestrator.engine -- --config tiny                       # prints the job id
    $ orchestrator submit --nodes 2 --wait -m orchestrator.engine -- --config tiny    # streams the log, exits as the job
    $ orchestrator submit --nodes 2 --dry-run -- train.py --lr 3e-4     # prints the sbatch script, submits nothing
    $ orchestrator submit --export-launchers launchers   # srun-torchrun + sbatch templates to edit: sbatch launchers/...
    # inside salloc or an sbatch script (launchers/srun-torchrun runs this):
    $ orchestrator slurm-launch --nproc-per-node 2 -- train.py          # one torchrun per node, one srun step
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import click

_env_options = [
    click.option("--env", "env_args", multiple=True, metavar="NAME=VALUE", help="Set a variable on every rank (repeatable)."),
    click.option("--env-file", "env_files", multiple=True, metavar="FILE", help="NAME=VALUE lines for every rank."),
    click.option("--nproc-per-node", type=click.IntRange(min=1), default=None,
                 help="Processes per node (default: the GPUs Slurm gives each node, else 1)."),
    click.option("--python", default=None, metavar="PATH",
                 help="Interpreter for the ranks and the batch step (default: the one running orchestrator)."),
    click.option("-m", "--module", default=None, metavar="MODULE", help="Run a module (python -m) instead of a script."),
]


def env_options(command):
    for option in reversed(_env_options):
        command = option(command)
    return command


def _launch_args(env_files, nproc_per_node, module, program) -> list[str]:
    """The options `submit` hands to `slurm-launch` in the batch script. --env values travel in the environment
    (sbatch forwards it), never in the script, which Slurm stores and shows."""
    args = [f"--nproc-per-node={nproc_per_node}"] if nproc_per_node else []
    args += [f"--env-file={os.path.abspath(f)}" for f in env_files]
    if module:
        args += ["-m", module]
    return [*args, "--", *program]


@click.command("submit")
@click.option("-N", "--nodes", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--gpus-per-node", type=click.IntRange(min=1), default=None, help="GPUs per node (Slurm gres).")
@click.option("-t", "--time", "time_limit", default=None, metavar="TIME", help="Time limit: MM, HH:MM:SS, D-HH:MM:SS.")
@click.option("-p", "--partition", default=None)
@click.option("-A", "--account", default=None)
@click.option("-x", "--exclude", default=None, metavar="NODESET", help="Nodes the job must not use.")
@click.option("--requeue/--no-requeue", default=False, show_default=True,
              help="Requeue the job after a restartable failure (never after exit 2, a config error).")
@click.option("--max-restarts", type=click.IntRange(min=0), default=3, show_default=True)
@click.option("-J", "--job-name", default="orchestrator", show_default=True)
@click.option("--log-dir", default="runs/slurm", show_default=True, help="Where slurm-<jobid>.out goes.")
@click.option("--sbatch-opt", "sbatch_opts", multiple=True, metavar="OPT", help="Extra sbatch option (repeatable).")
@env_options
@click.option("--wait", is_flag=True, help="Stream the job's log and exit with the job's exit code.")
@click.option("--dry-run", is_flag=True, help="Print the sbatch script and exit; submit nothing.")
@click.option("--export-launchers", metavar="DIR", default=None,
              help="Copy the bundled srun-torchrun wrapper and sbatch templates to DIR (new or empty, else --force) "
                   "and exit.")
@click.option("--force", is_flag=True, help="With --export-launchers: write into a non-empty DIR.")
@click.argument("program", nargs=-1, type=click.UNPROCESSED)
def submit_command(nodes, gpus_per_node, time_limit, partition, account, exclude, requeue, max_restarts, job_name,
                   log_dir, sbatch_opts, env_args, env_files, nproc_per_node, python, module, wait, dry_run,
                   export_launchers, force, program) -> int:
    """Write an sbatch script that runs PROGRAM with one torchrun per node, and submit it."""
    from orchestrator import slurm
    from orchestrator.errors import ConfigError
    from orchestrator.launch.env import build_env_manifest
    from orchestrator.launch.sbatch import SubmitSpec, follow, log_path, render_sbatch, submit_script

    if export_launchers is not None:
        return _export(export_launchers, force)
    if force:
        raise ConfigError("--force", True, "use it with --export-launchers DIR")
    if not program and not module:
        raise ConfigError("SCRIPT_OR_MODULE", "", "give the script (or -m MODULE) to run, e.g. -- train.py --lr 3e-4")
    manifest = build_env_manifest(head_env=os.environ, env_files=env_files, env_args=env_args)  # validates names
    spec = SubmitSpec(nodes=nodes, gpus_per_node=gpus_per_node, time=time_limit, partition=partition, account=account,
                      exclude=exclude, requeue=requeue, max_restarts=max_restarts, job_name=job_name,
                      log_dir=os.path.abspath(log_dir), python=python or sys.executable, workdir=os.getcwd(),
                      launch_args=tuple(_launch_args(env_files, nproc_per_node, module, program)))
    script_text = render_sbatch(spec)
    if dry_run:
        click.echo(script_text, nl=False)
        if sbatch_opts:
            click.echo(f"# extra sbatch options: {' '.join(sbatch_opts)}")
        for name, value in manifest.redacted().items():
            click.echo(f"# env (from the submit environment): {name}={value}")
        return 0
    Path(spec.log_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", prefix="orch-", suffix=".sbatch", dir=spec.log_dir, delete=False) as fh:
        fh.write(script_text)
    job_id = submit_script(Path(fh.name), env={**os.environ, **manifest.values}, extra_options=sbatch_opts)
    click.echo(job_id)
    if not wait:
        click.echo(f"orchestrator: log: {log_path(spec, job_id)}", err=True)
        return 0
    try:
        return follow(job_id, log_path(spec, job_id), out=sys.stdout)
    except KeyboardInterrupt:
        slurm.cancel(job_id)
        click.echo(f"orchestrator: interrupted; cancelled job {job_id}", err=True)
        return 130


def _export(dest: str, force: bool) -> int:
    from orchestrator import bundled

    target = bundled.export("launchers", dest, force=force, option="--export-launchers")
    click.echo(f"wrote {target}/srun-torchrun and the sbatch templates; the templates find the wrapper in "
               f"ORCH_LAUNCHERS (default: launchers/ of the directory you run sbatch from)")
    return 0


@click.command("slurm-launch")
@env_options
@click.option("--no-forward-env", is_flag=True, help="Do not forward the NCCL_*, TORCH_*, ... variables of the manifest.")
@click.option("--workdir", default=None, metavar="DIR", help="Working directory of the ranks (srun --chdir).")
@click.option("--master-port", type=int, default=None, help="Rendezvous port on the first node (default: from the run id).")
@click.option("--run-id", default=None)
@click.option("--srun-opt", "srun_opts", multiple=True, metavar="OPT", help="Extra srun option (repeatable).")
@click.option("--requeue-max", type=click.IntRange(min=0), default=0, show_default=True,
              help="In a batch job: requeue it after a restartable failure, at most this many times.")
@click.option("--dry-run", is_flag=True, help="Print the srun command line and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: the plan and srun argv as JSON.")
@click.argument("program", nargs=-1, type=click.UNPROCESSED)
def slurm_launch_command(env_args, env_files, nproc_per_node, python, module, no_forward_env, workdir, master_port,
                         run_id, srun_opts, requeue_max, dry_run, as_json, program) -> int:
    """Inside a Slurm allocation: one torchrun per node via one srun, rendezvous on the first node."""
    from orchestrator import slurm
    from orchestrator.cli.launch import launch_via_slurm
    from orchestrator.launch import slurm as via_slurm
    from orchestrator.launch.env import build_env_manifest
    from orchestrator.launch.plan import LaunchSpec, build_plan
    from orchestrator.contracts import new_run_id

    alloc = slurm.require_allocation("slurm-launch")
    env = build_env_manifest(head_env=os.environ, env_files=env_files, env_args=env_args, forward=not no_forward_env)
    spec = LaunchSpec(program=((module,) if module else ()) + tuple(program), module=module is not None,
                      run_id=run_id or new_run_id(), nproc_per_node=nproc_per_node, master_port=master_port,
                      python=(python or sys.executable,), workdir=(workdir,) if workdir else (), env=env)
    plan = build_plan(spec, via_slurm.allocation_hosts(alloc, nproc_per_node=nproc_per_node))
    rc = launch_via_slurm(plan, srun_opts, dry_run=dry_run, as_json=as_json, what="slurm-launch")
    if requeue_max and not dry_run:
        via_slurm.maybe_requeue(rc, max_restarts=requeue_max)
    return rc


commands = [submit_command, slurm_launch_command]
