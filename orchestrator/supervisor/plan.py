"""Plan a supervised run (pure apart from reading the Slurm environment): options in, a checked SupervisePlan out.

    spec = LaunchSpec(program=("orchestrator.engine", "--tp", "2", "--run-dir", "/shared/runs/s1"), module=True,
                      run_id="s1", nproc_per_node=2)
    plan = plan_supervise(spec, SuperviseOptions(hosts="node[1-5]", nodes="2:4", spare_hosts="node9",
                                                 ssh=SshOptions(config="ssh_config")))
    plan.config.run_dir, plan.config.limits.model_parallel, [h.name for h in plan.config.spares]
    # Path('/shared/runs/s1'), 2, ['node9', 'node5']        (hosts beyond MAX wait as spares)
    plan.first_attempt.describe()      # attempt 0's launch plan; plan.to_json() is `supervise --dry-run --json`
    summary = asyncio.run(Supervisor(plan.config, plan.runner).run())

Bad input raises ConfigError naming the option (exit 2) before anything is written or started. Two settings come
from the program's own arguments, read in one place (program_option):
- the run dir: the program's `--run-dir` when it has one (the engine's: events.jsonl then sits next to its
  metrics.jsonl and checkpoints/), else LAUNCH_RUN_DIR/RUN_ID;
- the model-parallel size (unless `--model-parallel` is given): the product of the engine's `--tp` and `--pp`
  (`--tp N` or `--tp=N`, the last one wins); absent, or -1 (the engine infers it), counts as 1; any other value
  that is not a positive integer is a ConfigError naming it.
"""

from __future__ import annotations

import os
import secrets
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.contracts import CODE_PIN_ENV, HEARTBEAT_ENV, RELAY_KEY_ENV, STEP_TIMING_ENV
from orchestrator.engine import flight_recorder
from orchestrator.errors import ConfigError
from orchestrator.hosts import Host, expand
from orchestrator.inline import shown_argv
from orchestrator.job.inuse import PIN_S
from orchestrator.selection import resolve_hosts
from orchestrator.launch.env import EnvManifest
from orchestrator.launch.plan import WARM_MODULE, LaunchPlan, LaunchSpec, build_plan
from orchestrator.supervisor.policy import Limits
from orchestrator.supervisor.relay import Relay, forward_plan
from orchestrator.supervisor.runner import AttemptRunner, SshAttempts
from orchestrator.supervisor.straggler import StragglerOptions

if TYPE_CHECKING:
    from orchestrator.remote.ssh import SshOptions

RESTART_MODES = ("auto", "warm", "cold")
WARM_TMP_DIR = "/dev/shm"

__all__ = ["RESTART_MODES", "SupervisePlan", "SuperviseOptions", "SupervisorConfig", "attempt_plan", "local_checkpoints",
           "model_parallel_of", "parse_nodes", "plan_supervise", "program_option", "relay_of", "restart_mode"]


@dataclass(frozen=True, kw_only=True)
class SupervisorConfig:
    spec: LaunchSpec
    """The launch as the user gave it; run_id is the supervised run's id."""
    hosts: list[Host]
    run_dir: Path
    spares: list[Host] = field(default_factory=list)
    limits: Limits = Limits()
    hang_timeout: float = 60.0
    startup_timeout: float = 600.0
    health_command: tuple[str, ...] = ()
    health_timeout: float = 20.0
    poll_s: float = 0.2
    restart: str = "cold"
    """'warm': each node runs a keeper (engine/keeper.py) that restarts a failed rank in-attempt from a standby and
    in-memory snapshots, the supervisor kills hung ranks instead of stopping the attempt, and a cold restart from
    disk is the fallback; 'cold': every failure ends the attempt."""
    restart_reason: str = ""
    straggler: StragglerOptions = StragglerOptions()
    shared_run_dir: bool = True
    """False: the nodes may not see the head's run dir; each node's launcher runs under the forwarder
    (forwarder.py), which relays heartbeats and metrics lines over its SSH session or srun step (relay.py)."""
    relay_key: str = ""
    """The nonce that marks the forwarders' lines (shared_run_dir False)."""
    via: str = "ssh"
    """'ssh' or 'slurm' (SuperviseOptions.via): under Slurm the srun step's task is the forwarder, so attempt
    plans do not wrap the launchers themselves."""


@dataclass(frozen=True, kw_only=True)
class SuperviseOptions:
    """What `orchestrator supervise` takes besides the launch itself (the LaunchSpec), typed."""

    hosts: str | None = None
    """Node set; with hostfile/include/exclude resolved like `launch` (default: the Slurm job's nodes)."""
    hostfile: str | None = None
    include: str | None = None
    exclude: str | None = None
    via: str = "ssh"
    """'ssh', or 'slurm': each attempt is an srun step of the enclosing allocation."""
    srun_options: tuple[str, ...] = ()
    drain_bad_nodes: bool = False
    ssh: SshOptions | None = None
    """orchestrator.remote.ssh.SshOptions."""
    failure_grace: float = 2.0
    nodes: str | None = None
    """'MIN:MAX' or 'N'; default: exactly the hosts given."""
    spare_hosts: str | None = None
    max_restarts: int = 3
    no_progress_attempts: int = 3
    max_host_failures: int = 3
    backoff: float = 1.0
    backoff_max: float = 60.0
    model_parallel: int | None = None
    """tp x pp; None: from the program's --tp/--pp."""
    global_batch: int | None = None
    hang_timeout: float = 60.0
    startup_timeout: float = 600.0
    health_check: str | None = None
    """A command line (split like a shell would, run without one); None: reachability only."""
    health_timeout: float = 20.0
    restart: str = "auto"
    """'warm', 'cold', or 'auto': warm when the program is the engine (-m orchestrator.engine, torch engine), over
    SSH or as srun steps, else cold."""
    straggler_threshold: float = 1.10
    straggler_steps: int = 50
    straggler_action: str = "replace"
    """'replace', 'name' or 'off' (straggler.py)."""
    shared_run_dir: bool = True
    """False: the run dir is not on a file system the head and the nodes share (heartbeats and metrics.jsonl lines
    travel over SSH, or srun's output under --via slurm); not with the engine's DCP checkpoints (its
    --checkpoint-local ones are node-local)."""


@dataclass(frozen=True)
class SupervisePlan:
    config: SupervisorConfig
    first_attempt: LaunchPlan
    """Attempt 0's launch plan (every later one is attempt_plan() over the hosts then chosen)."""
    runner: AttemptRunner
    srun: list[str] | None = None
    """Under --via slurm: each attempt's srun argv."""

    def to_json(self) -> dict:
        from orchestrator.launch.env import redact_argv

        return {"run_dir": str(self.config.run_dir), "shared_run_dir": self.config.shared_run_dir,
                "plan": self.first_attempt.to_json(),
                "restart": self.config.restart, "restart_reason": self.config.restart_reason,
                "limits": vars(self.config.limits), "spares": [s.name for s in self.config.spares]} | (
            {"srun": redact_argv(shown_argv(self.srun))} if self.srun else {})

    def describe(self) -> list[str]:
        from orchestrator.launch.env import redact_argv

        cfg, limits = self.config, self.config.limits
        lines = list(self.first_attempt.describe())
        if self.srun:
            lines.append(f"each attempt: {shlex.join(redact_argv(shown_argv(self.srun)))}")
        channel = "the srun step's output" if cfg.via == "slurm" else "each node's SSH session"
        sharing = "" if cfg.shared_run_dir else f" (not shared: heartbeats and metrics.jsonl lines come back over {channel})"
        lines.append(f"supervised: run dir {cfg.run_dir}{sharing}, nodes {limits.min_nodes}:{limits.max_nodes}, spares "
                     f"{','.join(s.name for s in cfg.spares) or '-'}, max restarts {limits.max_restarts}, "
                     f"hang timeout {cfg.hang_timeout:g} s, {_stragglers(cfg)}")
        lines.append(f"restarts: {cfg.restart} ({cfg.restart_reason})")
        return lines


def _stragglers(cfg: SupervisorConfig) -> str:
    slow = cfg.straggler
    if slow.action == "off":
        return "stragglers: off"
    action = "name (no spare)" if slow.action == "replace" and not cfg.spares else slow.action
    return f"stragglers: {action} a node >= {slow.threshold:g}x the median for {slow.steps} steps"


def attempt_plan(cfg: SupervisorConfig, number: int, hosts: list[Host], spares: list[Host] = (),
                 store: str | None = None) -> LaunchPlan:
    """The launch plan of attempt `number` (pure): run id RUNID-aN, logs under RUN_DIR/attempts/, heartbeat env
    (and ORCH_STEP_TIMING=0 when straggler detection is off), torch's flight recorder on with dumps to
    RUN_DIR/flight-recorder/rank<N> (engine/flight_recorder.py; the user's --env wins); under warm restarts a
    spare keeper on each spare (over SSH, or in a one-node srun step of its own under --via slurm) and the
    keepers' store at `store` (HOST:PORT on the head) when given; with a run dir that is not shared, every node's
    launcher under the forwarder (relay.py; under Slurm SlurmSteps puts it in front of the node entry instead)."""
    spec = cfg.spec
    # the code copy is kept between attempts: teardown, health check and backoff pass before the next one holds it
    pin_s = cfg.limits.backoff_max_s + (cfg.health_timeout or 0) + PIN_S
    ours = {HEARTBEAT_ENV: str((cfg.run_dir / "heartbeat").resolve()), CODE_PIN_ENV: f"{pin_s:g}"}
    if cfg.straggler.action == "off":
        ours[STEP_TIMING_ENV] = "0"
    if not cfg.shared_run_dir:
        ours[RELAY_KEY_ENV] = cfg.relay_key
    ours |= flight_recorder.run_env(str((cfg.run_dir / "flight-recorder" / "rank").resolve()), spec.env.values)
    env = EnvManifest(values={**spec.env.values, **ours},
                      sources={**spec.env.sources, **dict.fromkeys(ours, "supervisor")})
    plan = build_plan(replace(spec, run_id=f"{spec.run_id}-a{number}", run_dir=str(cfg.run_dir / "attempts"),
                              env=env, store=store), hosts,
                      spares if cfg.restart == "warm" else ())
    relay = relay_of(cfg)
    return plan if relay is None or cfg.via == "slurm" else forward_plan(plan, relay)


def relay_of(cfg: SupervisorConfig) -> Relay | None:
    """The head side of a run dir that is not shared (relay.py), None when it is (pure)."""
    if cfg.shared_run_dir:
        return None
    base = program_option(cfg.spec.program, "--run-dir")  # the engine's metrics.jsonl, on each node
    return Relay(cfg.relay_key, cfg.run_dir, node_metrics=f"{base.rstrip('/')}/metrics.jsonl" if base else None,
                 every=cfg.poll_s)


def plan_supervise(spec: LaunchSpec, opts: SuperviseOptions, *,
                   environ: Mapping[str, str] = os.environ) -> SupervisePlan:
    """The supervised run of `spec` (ConfigError on bad input; nothing is written or started)."""
    steps = _slurm_steps(opts, environ)
    if not opts.shared_run_dir:
        _check_unshared(spec)
    restart, restart_reason = restart_mode(spec, opts)
    if restart == "warm":  # snapshots go to the agent's per-run temp dir: host memory, removed however the run ends
        spec = replace(spec, launcher="warm", node_tmp_dir=WARM_TMP_DIR)
    host_list = list(resolve_hosts(hosts=opts.hosts, hostfile=opts.hostfile, include=opts.include,
                                   exclude=opts.exclude, nproc_per_node=spec.nproc_per_node, environ=environ))
    nproc = spec.nproc_per_node or host_list[0].slots
    spares = [Host(n, nproc) for n in (expand(opts.spare_hosts, field="--spare-hosts") if opts.spare_hosts else [])]
    if overlap := {s.name for s in spares} & {h.name for h in host_list}:
        raise ConfigError("--spare-hosts", opts.spare_hosts, f"{sorted(overlap)} are already run hosts")
    lo, hi = parse_nodes(opts.nodes, len(host_list))
    if lo < min(hi, len(host_list)) and local_checkpoints(spec):
        raise ConfigError("--nodes", opts.nodes, "the engine's --checkpoint-local files are per rank and cannot be "
                          "resharded onto fewer nodes: give a fixed node count (and spares), or use DCP "
                          "checkpoints on a shared run dir")
    model_parallel = opts.model_parallel if opts.model_parallel is not None else model_parallel_of(spec.program)
    base = program_option(spec.program, "--run-dir")
    limits = Limits(min_nodes=lo, max_nodes=min(hi, len(host_list)), max_restarts=opts.max_restarts,
                    no_progress_attempts=opts.no_progress_attempts, max_host_failures=opts.max_host_failures,
                    nproc_per_node=nproc, model_parallel=model_parallel, global_batch=opts.global_batch,
                    backoff_s=opts.backoff, backoff_max_s=opts.backoff_max)
    cfg = SupervisorConfig(
        spec=spec, hosts=host_list[:limits.max_nodes], run_dir=Path(base) if base else Path(spec.run_dir) / spec.run_id,
        spares=spares + [Host(h.name, nproc) for h in host_list[limits.max_nodes:]], limits=limits,
        hang_timeout=opts.hang_timeout, startup_timeout=opts.startup_timeout,
        health_command=tuple(shlex.split(opts.health_check)) if opts.health_check else (),
        health_timeout=opts.health_timeout, restart=restart, restart_reason=restart_reason,
        straggler=StragglerOptions(threshold=opts.straggler_threshold, steps=opts.straggler_steps,
                                   action=opts.straggler_action),
        shared_run_dir=opts.shared_run_dir, relay_key="" if opts.shared_run_dir else secrets.token_hex(8),
        via=opts.via)
    first = attempt_plan(cfg, 0, cfg.hosts, cfg.spares)
    if steps is None:
        return SupervisePlan(cfg, first, SshAttempts(ssh=opts.ssh, failure_grace=opts.failure_grace,
                                                     relay=relay_of(cfg)))
    steps.relay = relay_of(cfg)
    steps.spare_argvs(first)  # the spares' steps fit the allocation too
    return SupervisePlan(cfg, first, steps, srun=steps.argv(first))  # argv() checks the step fits the allocation


def _check_unshared(spec: LaunchSpec) -> None:
    """ConfigError for what a run dir private to each node cannot do (--no-shared-run-dir)."""
    every = program_option(spec.program, "--checkpoint-every")
    if _engine(spec) and every not in (None, "0") and not local_checkpoints(spec):
        raise ConfigError("--checkpoint-every", every, "the engine's DCP checkpoints need a run dir every rank sees "
                          "(each node would hold only its own shards): with --no-shared-run-dir add "
                          "--checkpoint-local (each rank keeps its own state on its node, copied to the next node), "
                          "or put --run-dir on a shared file system")


def _engine(spec: LaunchSpec) -> bool:
    return spec.module and bool(spec.program) and spec.program[0] == WARM_MODULE


def local_checkpoints(spec: LaunchSpec) -> bool:
    """The engine with --checkpoint-local: per-rank files on each node, not DCP in the run dir."""
    return _engine(spec) and "--checkpoint-local" in spec.program


def restart_mode(spec: LaunchSpec, opts: SuperviseOptions) -> tuple[str, str]:
    """('warm' or 'cold', why) for --restart; ConfigError when warm is asked for and cannot be had."""
    if opts.restart not in RESTART_MODES:
        raise ConfigError("--restart", opts.restart, f"use one of {', '.join(RESTART_MODES)}")
    if opts.restart == "cold":
        return "cold", "--restart cold"
    obstacle = None
    if not _engine(spec):
        obstacle = f"the program is not the engine (-m {WARM_MODULE})"
    elif spec.launcher == "deepspeed" or program_option(spec.program, "--engine") == "deepspeed":
        obstacle = "the DeepSpeed path restarts cold"
    if obstacle is None and opts.via == "slurm":
        return "warm", ("standby workers and in-memory snapshots on every node, inside each srun step; a spare "
                        "keeper in a one-node step of its own per spare; cold from disk as the fallback")
    if obstacle is None:
        return "warm", "standby workers and in-memory snapshots on every node; cold from disk as the fallback"
    if opts.restart == "warm":
        raise ConfigError("--restart", "warm", f"{obstacle}; use --restart cold or auto")
    return "cold", obstacle


def _slurm_steps(opts: SuperviseOptions, environ: Mapping[str, str]):
    """The Slurm runner under --via slurm (ConfigError outside an allocation), else None."""
    if opts.via == "slurm":  # inside salloc/sbatch: attempts are srun steps; hosts default to the allocation's nodes
        from orchestrator import slurm
        from orchestrator.supervisor.slurm import SlurmSteps

        return SlurmSteps(slurm.require_allocation("--via slurm", environ), srun_options=opts.srun_options,
                          drain_bad_nodes=opts.drain_bad_nodes)
    if opts.srun_options or opts.drain_bad_nodes:
        raise ConfigError("--srun-opt/--drain-bad-nodes", list(opts.srun_options) or True, "only with --via slurm")
    return None


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


def program_option(program: Sequence[str], name: str) -> str | None:
    """The value of `--name V` or `--name=V` in the program's arguments (last wins)."""
    value = None
    for i, arg in enumerate(program):
        if arg == name and i + 1 < len(program):
            value = program[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def model_parallel_of(program: Sequence[str]) -> int:
    """tp x pp from the engine's --tp/--pp in the program's arguments; absent or -1 counts as 1.

    Any other value that is not a positive integer is a ConfigError now: the engine would reject it on every
    attempt."""
    size = 1
    for name in ("--tp", "--pp"):
        value = program_option(program, name)
        if value is None or value == "-1":
            continue
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(name, value, "the program's value: use a positive integer or -1 (the engine infers "
                                           "it), or give --model-parallel")
        size *= int(value)
    return size
