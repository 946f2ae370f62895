"""A job file's run, planned with launch's and the supervisor's own planners (pure apart from reading files).

    jp = plan_job(load_job("job.yaml"), run_id=new_run_id(), run_dir="runs")
    jp.hosts, jp.tree.digest              # the resolved hosts, the code version to sync
    jp.launch_plan(workdirs)              # launch's LaunchPlan with each node's code directory as its workdir
    jp.supervise_plan(workdirs)           # or the supervisor's SupervisePlan (job file with `supervise:`)
    jp.to_json(), jp.describe()           # --dry-run --json / --dry-run (secrets redacted as launch does)

Errors of the planners are reported under the job file's field names (`job.yaml:nproc_per_node=...`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

from orchestrator.errors import ConfigError
from orchestrator.hosts import HostList
from orchestrator.selection import resolve_hosts
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
           "--shared-run-dir": "supervise.shared_run_dir", "--checkpoint-every": "run"}


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
        with job_fields(self.job):
            plan = build_plan(self.launch_spec(workdirs), self.hosts)
        if self.job.spec.container:
            from orchestrator.containers.run import ContainerSpec, containerize

            plan = containerize(plan, ContainerSpec(image=self.job.spec.container,
                                                    python=self.job.spec.container_python))
        return plan

    def supervise_plan(self, workdirs: Mapping[str, str] | None = None, *, ssh=None):
        from orchestrator.supervisor import SuperviseOptions, plan_supervise

        spec, sup = self.job.spec, self.job.spec.supervise
        with job_fields(self.job):
            return plan_supervise(self.launch_spec(workdirs), SuperviseOptions(
                hosts=",".join(h.name for h in self.hosts), via="slurm" if spec.slurm else "ssh", ssh=ssh, nodes=sup.nodes, spare_hosts=sup.spares,
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

    def to_json(self) -> dict:
        spec = self.job.spec
        body = self.supervise_plan().to_json() if self.supervised else self.launch_plan().to_json()
        return {"job": spec.name, "job_file": str(self.job.source), "run_id": self.run_id,
                "preflight": self.preflight_plan(),
                "sync": None if self.tree is None else {"from": str(self.tree.root), "files": len(self.tree.files),
                                                        "digest": self.tree.digest, "to": self.planned_workdir()},
                "setup": spec.setup_script or None, "supervised": self.supervised, "plan": body}

    def describe(self) -> list[str]:
        from orchestrator.check.preflight import describe as describe_preflight

        spec = self.job.spec
        lines = [f"job {spec.name} ({self.job.source.name}), run {self.run_id}"]
        if gate := self.preflight_plan():
            lines.append(describe_preflight(gate))
        if self.tree is not None:
            lines.append(f"sync {self.tree.root} ({len(self.tree.files)} files, sha256 {self.tree.digest[:12]}) "
                         f"-> {self.planned_workdir()} on every host")
        if spec.setup_script:
            lines.append("setup on every host (skipped where unchanged): " + "; ".join(spec.setup_script.splitlines()))
        return lines + (self.supervise_plan().describe() if self.supervised else self.launch_plan().describe())


def plan_job(job: Job, *, run_id: str, run_dir: str = "runs", environ: Mapping[str, str] = os.environ) -> JobPlan:
    """Resolve hosts, env and the code tree, and check the launch plan builds (ConfigError on any problem)."""
    spec = job.spec
    if spec.slurm is not None and not (environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")):
        raise ConfigError(f"{job.source.name}:slurm", f"nodes: {spec.slurm.nodes}",
                          "run `orchestrator up` inside the allocation (salloc/sbatch); submitting a job file "
                          "from outside one is not supported yet")
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
    jp = JobPlan(job, run_id, run_dir, hosts, env, tree)
    jp.supervise_plan() if jp.supervised else jp.launch_plan()  # every check of the planners, before anything starts
    jp.preflight_plan()
    return jp
