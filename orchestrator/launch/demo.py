"""The README's main job: a multi-node torch.distributed all-reduce on a sandbox cluster (root) or localhost.

    outcome = run_demo(nodes=4, nproc=2, say=print, sink=lambda line, stream: print(line))
    outcome.launch.exit_code, outcome.rows    # rows: one dict per rank from the job's RESULT lines

As root: `Sandbox.up` N namespace hosts (the venv and this checkout are shared onto them), launch the job over
SSH with the venv's interpreter, tear the sandbox down (also on Ctrl-C/SIGTERM). As non-root: the same job on
localhost alone, through the local transport (no sshd needed).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.launch.runner import LaunchResult, Sink

DEMO_MODULE = "orchestrator.launch.examples.allreduce"
RESULT_PREFIX = "RESULT "


@dataclass
class DemoOutcome:
    launch: LaunchResult
    rows: list[dict] = field(default_factory=list)
    sandbox: str | None = None

    @property
    def ok(self) -> bool:
        """Exit 0 everywhere and, for the all-reduce job, one correct RESULT per rank (other jobs: exit 0)."""
        if self.launch.exit_code != 0:
            return False
        if self.launch.plan.program[0] != DEMO_MODULE:
            return True
        return (len(self.rows) == self.launch.plan.world_size
                and all(r["sum"] == r["expected"] and r["env_rank"] == r["rank"] for r in self.rows))


def parse_result(line: str) -> dict | None:
    """'node2/3: RESULT {...}' -> the dict; None for any other line."""
    _, sep, rest = line.partition(": ")
    if not sep or not rest.startswith(RESULT_PREFIX):
        return None
    try:
        return json.loads(rest[len(RESULT_PREFIX):])
    except json.JSONDecodeError:
        return None


def run_demo(*, nodes: int = 4, nproc: int = 2, sandbox_name: str = "demo", run_dir: str = "runs",
             module: str = DEMO_MODULE, args: tuple[str, ...] = (), say: Callable[[str], None] = lambda m: None,
             sink: Sink | None = None, as_root: bool | None = None) -> DemoOutcome:
    from orchestrator.hosts import Host, HostList
    from orchestrator.launch.env import build_env_manifest
    from orchestrator.launch.plan import LaunchSpec, build_plan
    from orchestrator.launch.rundir import new_run_id
    from orchestrator.launch.runner import run_plan

    rows: list[dict] = []

    def collect(line: str, stream: str) -> None:
        if (row := parse_result(line)) is not None:
            rows.append(row)
        if sink is not None:
            sink(line, stream)

    env = build_env_manifest(head_env=os.environ, env_args=["OMP_NUM_THREADS=1"])
    as_root = os.geteuid() == 0 if as_root is None else as_root
    sandbox = None
    try:
        if as_root:
            from orchestrator.remote.ssh import SshOptions
            from orchestrator.sandbox import Sandbox

            say(f"sandbox {sandbox_name}: bringing up {nodes} hosts")
            sandbox = Sandbox.up(sandbox_name, nodes=nodes, progress=say)
            hosts, ssh = HostList(Host(h, nproc) for h in sandbox.hosts), SshOptions(config=str(sandbox.ssh_config))
        else:
            say("not root: running on localhost alone (no sandbox)")
            hosts, ssh = HostList([Host("localhost", nproc)]), None
        spec = LaunchSpec(program=(module, *args), module=True, run_id=new_run_id(), nproc_per_node=nproc,
                          python=(sys.executable,), env=env, run_dir=run_dir)
        plan = build_plan(spec, hosts)
        say(f"launch {plan.run_id}: {len(plan.nodes)} hosts x {nproc} processes, gloo, logs in {plan.run_dir}/logs/")
        result = run_plan(plan, ssh=ssh, sink=collect)
        return DemoOutcome(result, sorted(rows, key=lambda r: r["rank"]), sandbox_name if sandbox else None)
    finally:
        if sandbox is not None:
            say(f"sandbox {sandbox_name}: tearing down")
            sandbox.down()
