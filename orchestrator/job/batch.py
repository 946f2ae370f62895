"""A job file's `slurm:` section from outside an allocation: `up` submits a batch job, then follows it.

    spec = submit_spec(jp, ssh)                # sbatch options from `slurm:`; the batch step is `up SPEC --inside`
    render_sbatch(spec)                        # the script `up --dry-run` shows
    rc = submit_and_follow(jp, ssh, run)       # RUN/spec.json + RUN/job.sbatch, sbatch, RUN/logs/batch.log streamed;
                                               # the job's exit code; Ctrl-C or SIGTERM (`stop`) scancels first;
                                               # job.json gets slurm_job, then the hosts once the job has them

The batch step runs `PYTHON -m orchestrator up RUN/spec.json --inside --run-id ID --run-dir DIR [ssh options]`
on the allocation's first node with the job's `python` (the srun step's node entry needs orchestrator in that
interpreter anyway). Inside the allocation it does what `up` does under salloc: resolves the nodes it got, syncs
the workdir to them over SSH, runs the setup, then one srun step (or the supervisor). spec.json is the job file
as submitted (--set applied, paths absolute), so later edits of the job file do not reach a queued job; nor do
edits of the workdir: its files are copied at submit into RUNS/.code/<digest> (once per distinct tree: resubmitting
unchanged code copies nothing), and spec.json names that copy as the workdir. Like spec.json it must be readable by
the batch step. The head records the run (job.json, with `slurm_job`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import click

from orchestrator import slurm
from orchestrator.launch.sbatch import SubmitSpec, follow, log_path, render_sbatch, submit_script

SPEC = "spec.json"
CODE = ".code"
SCRIPT = "job.sbatch"
LOG = "batch.log"


def submit_spec(jp, ssh=None) -> SubmitSpec:
    """The batch job of a planned job file (ConfigError under the job file's field names)."""
    from orchestrator.cli.ssh_options import ssh_argv
    from orchestrator.job.plan import job_fields

    spec, section = jp.job.spec, jp.job.spec.slurm
    run = Path(jp.run_dir).absolute() / jp.run_id
    inside = (str(run / SPEC), "--inside", "--run-id", jp.run_id, "--run-dir", str(run.parent),
              *(ssh_argv(ssh) if ssh is not None else ()))
    with job_fields(jp.job):
        return SubmitSpec(nodes=section.nodes, gpus_per_node=section.gpus_per_node, time=section.time,
                          partition=section.partition, account=section.account, job_name=spec.name,
                          python=spec.python, workdir=os.getcwd(), log_dir=str(run / "logs"), log_name=LOG,
                          command="up", launch_args=inside)


def snapshot_tree(tree, store: Path) -> Path:
    """STORE/<digest>: a copy of the tree's files (modes and symlinks kept), made once per digest; it appears with
    one rename, so a directory named after a digest is always complete."""
    final = store / tree.digest
    if final.is_dir():
        return final
    store.mkdir(parents=True, exist_ok=True)
    part = store / f".{tree.digest}.{os.getpid()}.part"
    shutil.rmtree(part, ignore_errors=True)
    try:
        for rel in tree.files:
            src, dst = tree.root / rel, part / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_symlink():
                os.symlink(os.readlink(src), dst)
            else:
                shutil.copy2(src, dst)
        os.rename(part, final)
    except OSError:
        shutil.rmtree(part, ignore_errors=True)
        if not final.is_dir():  # (another submit of the same tree renamed first: its copy is as good)
            raise
    return final


def submit_and_follow(jp, ssh, run: Path) -> int:
    """Submit the batch job, record its id in RUN/job.json, stream its output; the job's exit code.

    KeyboardInterrupt (Ctrl-C, or SIGTERM turned into it by `up`) cancels the job and waits until Slurm has ended
    every step of it (nothing of the run left on the nodes), then propagates."""
    from orchestrator.job.history import record_update

    spec = submit_spec(jp, ssh)
    run.mkdir(parents=True, exist_ok=True)
    Path(spec.log_dir).mkdir(exist_ok=True)
    data = jp.job.data()
    if jp.tree is not None:
        data["workdir"] = str(snapshot_tree(jp.tree, run.absolute().parent / CODE))
    fd = os.open(run / SPEC, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # env values may be secrets
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    (run / SCRIPT).write_text(render_sbatch(spec))
    job_id = submit_script(run / SCRIPT, env=os.environ)  # sbatch forwards this environment to the batch step
    record_update(run, slurm_job=job_id)
    log = log_path(spec, job_id)
    click.echo(f"[orch] submitted Slurm job {job_id} ({spec.nodes} nodes); output in {log}", err=True)

    def started(job: slurm.Job) -> None:  # `jobs` shows the nodes, `logs --host` accepts them
        record_update(run, hosts=slurm.nodelist(job.nodes))

    try:
        return follow(job_id, log, out=sys.stdout, on_start=started)
    except KeyboardInterrupt:
        slurm.cancel(job_id)
        click.echo(f"[orch] cancelled Slurm job {job_id}; waiting for it to end", err=True)
        follow(job_id, log, out=sys.stdout)
        raise
