"""A job file's run, planned with launch's and the supervisor's own planners (pure apart from reading files).

    jp = plan_job(load_job("job.yaml"), run_id=new_run_id(), run_dir="runs")
    jp.hosts, jp.tree.digest              # the resolved hosts, the code version to sync
    jp.launch_plan(workdirs)              # launch's LaunchPlan with each node's code directory as its workdir
    jp.supervise_plan(workdirs)           # or the supervisor's SupervisePlan (job file with `supervise:`)
    jp.to_json(), jp.describe()           # --dry-run --json / --dry-run (secrets redacted as launch does)
    jp.batch                              # `slurm:` outside an allocation: `up` submits a batch job (job/batch.py)

Errors of the planners are reported under the job file's field names (`job.yaml:nproc_per_node=...`).
"""

from __future__ import annotations

import contextlib
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, replace

from orchestrator.errors import ConfigError
from orchestrator.hosts import HostList
from orchestrator.selection import resolve_hosts
from orchestrator.slurm import nodelist_expr
from orchestrator.job.spec import Job
from orchestrator.job.sync import Tree, read_tree
from orchestrator.launch.env import EnvManifest, build_env_manifest
from orchestrator.launch.plan import LaunchPlan, LaunchSpec, build_plan

# launch/supervise option -> the job file's field
_FIELDS = {"--hosts": "hosts", "--hostfile": "hostfile", "--include": "include", "--exclude": "exclude",
           "--include/--exclude": "include", "--hosts/--hostfile": "hostfile", "--nproc-per-node": "nproc_per_node",
           "--python": "python", "--env": "env", "SCRIPT_OR_MODULE": "run", "-m": "run", "--launcher": "launcher",
           "--spare-hosts": "supervise.spares", "--nodes": "supervise.nodes", "--health-check": "supervise.health_check",
           "--run-id": "name", "--preflight": "preflight", "--straggler-threshold": "supervise.straggler_threshold",
           "--straggler-steps": "supervise.straggler_steps", "--straggler-action": "supervise.straggler_action",
           "--shared-run-dir": "supervise.shared_run_dir", "--checkpoint-every": "run",
           "--time": "slurm.time", "--partition": "slurm.partition", "--account": "slurm.account",
           "--gpus-per-node": "slurm.gpus_per_node", "--job-name": "name", "--container": "container",
           "--container-mount": "container_mounts"}


@contextlib.contextmanager
def job_fields(job: Job):
    """Re-raise a planner's ConfigError under the job file's field name."""
    try:
        yield
    except ConfigError as exc:
        if exc.field is None:
            raise
        name = _FIELDS.get(exc.field) or ("env_files" if exc.field.startswith("--env-file") else None)
        if name is None:
            raise
        raise ConfigError(f"{job.source.name}:{name}", exc.value, exc.fix) from None


@dataclass(frozen=True)
class JobPlan:
    job: Job
    run_id: str
    run_dir: str
    hosts: HostList
    env: EnvManifest
    tree: Tree | None
    """The workdir's files and digest; None without a workdir (the run starts in each node's login dir)."""
    stand_in: Mapping[str, str] | None = None
    """`slurm:` outside an allocation: the environment of a stand-in allocation (nodes node1..nodeN) that lets
    the planners check the job before it is submitted; the batch step plans again on the nodes it gets."""

    @property
    def batch(self) -> bool:
        """`up` submits a batch job whose batch step runs this job inside its allocation (job/batch.py)."""
        return self.stand_in is not None

    @property
    def supervised(self) -> bool:
        return self.job.spec.supervise is not None

    def planned_workdir(self) -> str | None:
        """Where the code will be on the nodes, before the nodes said where exactly (for --dry-run)."""
        return f"{self.job.spec.sync.dest.rstrip('/')}/{self.tree.digest}" if self.tree else None

    def launch_spec(self, workdirs: Mapping[str, str] | None = None) -> LaunchSpec:
        """workdirs: host -> its code directory (from the sync); None: planned_workdir() on every host."""
        spec = self.job.spec
        if workdirs is None:
            where = (self.planned_workdir(),) if self.tree else ()
        elif len(set(workdirs.values())) == 1:  # the usual case: one path for all (srun takes only one --chdir)
            where = (next(iter(workdirs.values())),)
        else:
            where = tuple(f"{host}={path}" for host, path in workdirs.items())
        return LaunchSpec(program=spec.program, module=spec.module, run_id=self.run_id,
                          nproc_per_node=spec.nproc_per_node, launcher=spec.launcher, python=(spec.python,),
                          workdir=where, env=self.env, run_dir=self.run_dir)

    def launch_plan(self, workdirs: Mapping[str, str] | None = None) -> LaunchPlan:
        from orchestrator.containers.run import ContainerSpec, containerize

        spec = self.job.spec
        with job_fields(self.job):
            plan = build_plan(self.launch_spec(workdirs), self.hosts)
            if spec.container:
                plan = containerize(plan, ContainerSpec(image=spec.container, python=spec.container_python,
                                                        mounts=spec.container_mounts, gpus=spec.container_gpus))
        return plan

    def supervise_plan(self, workdirs: Mapping[str, str] | None = None, *, ssh=None):
        from orchestrator.supervisor import SuperviseOptions, plan_supervise

        spec, sup = self.job.spec, self.job.spec.supervise
        with job_fields(self.job):
            return plan_supervise(self.launch_spec(workdirs), environ=self.stand_in or os.environ, opts=SuperviseOptions(
                hosts=",".join(h.name for h in self.hosts), via="slurm" if spec.slurm else "ssh", ssh=ssh,
                nodes=sup.nodes, spare_hosts=sup.spares,
                max_restarts=sup.max_restarts, hang_timeout=sup.hang_timeout, health_check=sup.health_check,
                restart=sup.restart, straggler_threshold=sup.straggler_threshold,
                straggler_steps=sup.straggler_steps, straggler_action=sup.straggler_action,
                shared_run_dir=sup.shared_run_dir))

    def preflight(self):
        """(the hosts the gate checks, its CheckSpec), or None without `preflight: true`. The gate runs before the
        sync, so it checks the disk of the login directory (where the code cache lives by default)."""
        if not self.job.spec.preflight:
            return None
        from orchestrator.check.preflight import preflight_spec

        spec = self.job.spec
        with job_fields(self.job):
            check = preflight_spec(self.launch_spec(), via="slurm" if spec.slurm else "ssh",
                                   container=spec.container)
        hosts = HostList(self.hosts)
        if self.supervised:
            hosts += [s for s in self.supervise_plan().config.spares if s.name not in hosts.names]
        return hosts, replace(check, workdir=())

    def preflight_plan(self) -> dict | None:
        from orchestrator.check.preflight import preflight_plan

        gate = self.preflight()
        return gate and preflight_plan(*gate, on_failure="exclude" if self.supervised else "refuse")

    def _sbatch(self, ssh) -> str:
        from orchestrator.job.batch import submit_spec
        from orchestrator.launch.sbatch import render_sbatch

        return render_sbatch(submit_spec(self, ssh))

    def to_json(self, *, ssh=None) -> dict:
        """With `batch`, "plan" is null (the batch step plans on the nodes it gets) and "sbatch" is the script."""
        spec = self.job.spec
        body = None if self.batch else \
            self.supervise_plan().to_json() if self.supervised else self.launch_plan().to_json()
        return {"job": spec.name, "job_file": str(self.job.source), "run_id": self.run_id,
                "preflight": None if self.batch else self.preflight_plan(),
                "sync": None if self.tree is None else {"from": str(self.tree.root), "files": len(self.tree.files),
                                                        "digest": self.tree.digest, "to": self.planned_workdir()},
                "setup": spec.setup_script or None, "supervised": self.supervised, "plan": body,
                "sbatch": self._sbatch(ssh) if self.batch else None}

    def describe(self, *, ssh=None) -> list[str]:
        from orchestrator.check.preflight import describe as describe_preflight

        spec = self.job.spec
        hosts = "allocated node, from the batch step" if self.batch else "host"
        lines = [f"job {spec.name} ({self.job.source.name}), run {self.run_id}"]
        if self.batch:
            lines += ["outside a Slurm allocation: submit this batch job, then follow it:",
                      *(f"  {line}" for line in self._sbatch(ssh).splitlines() if line)]
        elif gate := self.preflight_plan():
            lines.append(describe_preflight(gate))
        if self.tree is not None:
            lines.append(f"sync {self.tree.root} ({len(self.tree.files)} files, sha256 {self.tree.digest[:12]}) "
                         f"-> {self.planned_workdir()} on every {hosts}")
        if spec.setup_script:
            lines.append(f"setup on every {hosts} (skipped where unchanged): "
                         + "; ".join(spec.setup_script.splitlines()))
        if self.batch:
            return lines + [f"then {'the supervisor runs' if self.supervised else 'one srun step runs'} "
                            f"{shlex.join(spec.run_words)} on the {spec.slurm.nodes} nodes"
                            + (" (preflight first)" if spec.preflight else "")]
        return lines + (self.supervise_plan().describe() if self.supervised else self.launch_plan().describe())


def plan_job(job: Job, *, run_id: str, run_dir: str = "runs", environ: Mapping[str, str] = os.environ) -> JobPlan:
    """Resolve hosts, env and the code tree, and check the launch plan builds (ConfigError on any problem)."""
    spec = job.spec
    stand_in = None
    if spec.slurm is not None and nodelist_expr(environ) is None:
        stand_in = {**environ, "SLURM_JOB_ID": "0", "SLURM_JOB_NODELIST": f"node[1-{spec.slurm.nodes}]",
                    "SLURM_GPUS_ON_NODE": str(spec.slurm.gpus_per_node or "")}
        environ = stand_in
    with job_fields(job):
        hosts = resolve_hosts(hosts=spec.hosts, hostfile=str(job.path(spec.hostfile)) if spec.hostfile else None,
                              include=spec.include, exclude=spec.exclude, nproc_per_node=spec.nproc_per_node,
                              environ=environ)
        env = build_env_manifest(head_env=environ, env_files=[str(job.path(f)) for f in spec.env_files],
                                 env_args=[f"{k}={v}" for k, v in spec.env.items()], forward=spec.forward_env)
    if spec.slurm is not None and len(hosts) != spec.slurm.nodes:
        raise ConfigError(f"{job.source.name}:slurm.nodes", spec.slurm.nodes,
                          f"the allocation has {len(hosts)} nodes; ask for {len(hosts)} or allocate {spec.slurm.nodes}")
    tree = (read_tree(job.path(spec.workdir), exclude=spec.sync.exclude, field=f"{job.source.name}:workdir")
            if spec.workdir is not None else None)
    jp = JobPlan(job, run_id, run_dir, hosts, env, tree, stand_in)
    jp.supervise_plan() if jp.supervised else jp.launch_plan()  # every check of the planners, before anything starts
    if jp.batch:
        from orchestrator.job.batch import submit_spec

        submit_spec(jp)  # the sbatch options (slurm.time, partition, ...)
    jp.preflight_plan()
    return jp
