"""The README's main job: the engine (or an all-reduce) across a sandbox cluster (root) or localhost.

    outcome = run_demo(nodes=4, nproc=2, say=print, sink=lambda line: print(line.formatted()))
    outcome.launch.exit_code, outcome.metrics   # engine job: one dict per step from metrics.jsonl
    outcome = run_demo(job="allreduce")         # rows: one dict per rank from the job's RESULT lines

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

from orchestrator.launch.output import OutputLine, Sink
from orchestrator.launch.runner import LaunchResult

DEMO_MODULE = "orchestrator.launch.examples.allreduce"
ENGINE_MODULE = "orchestrator.engine"
RESULT_PREFIX = "RESULT "
ENGINE_STEPS = 20


def engine_args(world_size: int, run_dir: str) -> tuple[str, ...]:
    """The engine's tiny config in the most 3D layout the world size allows: pp2 x dp x tp2 for 8 ranks."""
    tp = 2 if world_size % 2 == 0 else 1
    pp = 2 if world_size % (2 * tp) == 0 and world_size >= 8 else 1
    return ("--config", "tiny", "--steps", str(ENGINE_STEPS), "--tp", str(tp), "--pp", str(pp), "--dp-shard", "-1",
            "--checkpoint-every", "10", "--run-dir", run_dir)


@dataclass
class DemoOutcome:
    launch: LaunchResult
    rows: list[dict] = field(default_factory=list)
    sandbox: str | None = None
    metrics: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Exit 0 everywhere and: the engine logged every step; the all-reduce gave one correct RESULT per rank."""
        if self.launch.exit_code != 0:
            return False
        if self.launch.plan.program[0] == ENGINE_MODULE:
            return len(self.metrics) == ENGINE_STEPS
        if self.launch.plan.program[0] != DEMO_MODULE:
            return True
        return (len(self.rows) == self.launch.plan.world_size
                and all(r["sum"] == r["expected"] and r["env_rank"] == r["rank"] for r in self.rows))


def parse_result(line: OutputLine) -> dict | None:
    """A line 'RESULT {...}' (node2/3: RESULT {...} on the terminal) -> the dict; None for any other line."""
    if line.continued or not line.text.startswith(RESULT_PREFIX):
        return None
    try:
        return json.loads(line.text[len(RESULT_PREFIX):])
    except json.JSONDecodeError:
        return None


def run_demo(*, nodes: int = 4, nproc: int = 2, sandbox_name: str = "demo", run_dir: str = "runs",
             job: str = "engine", say: Callable[[str], None] = lambda m: None,
             sink: Sink | None = None, as_root: bool | None = None) -> DemoOutcome:
    from orchestrator.hosts import Host, HostList
    from orchestrator.launch.env import build_env_manifest
    from orchestrator.launch.plan import LaunchSpec, build_plan
    from orchestrator.contracts import new_run_id
    from orchestrator.launch.runner import run_plan

    rows: list[dict] = []

    def collect(line: OutputLine) -> None:
        if (row := parse_result(line)) is not None:
            rows.append(row)
        if sink is not None:
            sink(line)

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
        run_id = new_run_id()
        # Absolute: the ranks write metrics and checkpoints from the hosts, which share this filesystem.
        engine_dir = os.path.join(os.path.abspath(run_dir), run_id, "engine")
        program = ((ENGINE_MODULE, *engine_args(len(hosts) * nproc, engine_dir)) if job == "engine"
                   else (DEMO_MODULE,))
        spec = LaunchSpec(program=program, module=True, run_id=run_id, nproc_per_node=nproc,
                          python=(sys.executable,), env=env, run_dir=run_dir)
        plan = build_plan(spec, hosts)
        say(f"launch {plan.run_id}: {len(plan.nodes)} hosts x {nproc} processes, gloo, logs in {plan.run_dir}/logs/")
        result = run_plan(plan, ssh=ssh, sink=collect)
        metrics = _read_metrics(os.path.join(engine_dir, "metrics.jsonl")) if job == "engine" else []
        return DemoOutcome(result, sorted(rows, key=lambda r: r["rank"]), sandbox_name if sandbox else None, metrics)
    finally:
        if sandbox is not None:
            say(f"sandbox {sandbox_name}: tearing down")
            sandbox.down()


def _read_metrics(path: str) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
