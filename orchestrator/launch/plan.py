"""The launch plan: everything `orchestrator launch` will start, built by pure functions before any connection.

    spec = LaunchSpec(program=("train.py", "--lr", "3e-4"), nproc_per_node=2,
                      python=("/opt/venv/bin/python", "node[3-4]=/usr/local/bin/python3"),
                      workdir=("/srv/job",), env=build_env_manifest(head_env=os.environ, env_args=["A=1"]))
    plan = build_plan(spec, resolve_hosts(hosts="node[1-4]", nproc_per_node=2))
    plan.nodes[1].argv      # node2's torchrun argv (rendezvous on node1)
    plan.to_json()          # what --json prints (secrets redacted)
    plan.describe()         # what --dry-run prints
    plan.node_env(plan.nodes[1])   # the full, unredacted env node2's launcher gets

Per-host values: --python and --workdir take `VALUE` (every host) or `NODESET=VALUE` (those hosts; later
entries win), e.g. `--python /opt/venv/bin/python --python 'gpu[9-12]=/opt/py311/bin/python'`. A NODESET part
never contains '/', so a plain path is never mistaken for one. Defaults: `python3` from each host's PATH and the
remote login directory: nothing about the head's interpreter or cwd is assumed to exist on the nodes.
"""

from __future__ import annotations

import re
import shlex
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from orchestrator.contracts import RUN_ID, RUN_TMPDIR
from orchestrator.errors import ConfigError
from orchestrator.hosts import Host, expand, fold
from orchestrator.inline import shown_argv
from orchestrator.launch import deepspeed, torchrun
from orchestrator.launch.env import EnvManifest, redact_argv, redact_value

LAUNCHERS = ("torchrun", "deepspeed", "warm")
WARM_MODULE = "orchestrator.engine"  # the one program the warm launcher runs
DEFAULT_PYTHON = "python3"
PORT_BASE, PORT_SPAN = 29500, 1000
_ADDRESS = re.compile(r"[A-Za-z0-9_\[][A-Za-z0-9._:\[\]-]{0,252}\Z")  # names, IPv4, [IPv6]


@dataclass(frozen=True, kw_only=True)
class LaunchSpec:
    """What the user asked for (validated by build_plan, which raises ConfigError)."""

    program: tuple[str, ...]
    """[script, args...] or, with module=True, [module, args...]: run on every rank."""
    run_id: str
    nproc_per_node: int | None = None
    """Processes per node; None: each host's slots."""
    module: bool = False
    launcher: str = "torchrun"
    master_addr: str | None = None
    """Rendezvous address the nodes dial; default the first host's name."""
    master_port: int | None = None
    """Default: a port in 29500-30499 derived from the run id, so concurrent runs on one head host differ."""
    python: tuple[str, ...] = ()
    workdir: tuple[str, ...] = ()
    env: EnvManifest = field(default_factory=EnvManifest)
    run_dir: str = "runs"
    """Base directory on the head; this run's files go to RUN_DIR/RUN_ID."""
    store: str | None = None
    """HOST:PORT of the run's TCPStore when the supervisor hosts it on the head (warm launcher only)."""
    node_tmp_dir: str = "/tmp"
    """Where each node's agent makes the run's private TMPDIR (NODE_TMP_DIR/orch-RUN_ID-PID), removed at the end:
    torchrun's per-rank files and the ranks' temp files go there."""


@dataclass(frozen=True)
class NodePlan:
    host: str
    node_rank: int
    nproc: int
    first_rank: int
    python: str
    workdir: str | None
    argv: tuple[str, ...]
    env: dict[str, str]
    """Node-specific variables on top of the manifest (CUDA_VISIBLE_DEVICES when slots were picked)."""

    @property
    def ranks(self) -> range:
        return range(self.first_rank, self.first_rank + self.nproc)


@dataclass(frozen=True)
class LaunchPlan:
    run_id: str
    launcher: str
    run_dir: str
    master_addr: str
    master_port: int
    program: tuple[str, ...]
    module: bool
    env: EnvManifest
    launcher_env: dict[str, str]
    nodes: tuple[NodePlan, ...]
    hostfile: str | None = None
    """DeepSpeed hostfile text (deepspeed launcher only); written to the run dir."""
    spares: tuple[NodePlan, ...] = ()
    """Spare keepers (warm launcher only): started with the run, each takes a lost node's place (node_rank -1).
    The run goes on when a host is lost: the keepers decide whether it can."""

    @property
    def hosts(self) -> list[str]:
        return [n.host for n in self.nodes]

    @property
    def started(self) -> list[NodePlan]:
        """Every node the run starts something on: the nodes, then the spares."""
        return [*self.nodes, *self.spares]

    @property
    def world_size(self) -> int:
        return sum(n.nproc for n in self.nodes)

    def node(self, host: str) -> NodePlan:
        return next(n for n in self.nodes if n.host == host)

    def rank_location(self, rank: int) -> tuple[str, int] | None:
        """Global rank -> (host, local rank), from the static node order."""
        for n in self.nodes:
            if rank in n.ranks:
                return n.host, rank - n.first_rank
        return None

    def node_env(self, node: NodePlan) -> dict[str, str]:
        """The full environment additions for one node's launcher (NOT redacted: this is what ranks get)."""
        return {**self.env.values, **self.launcher_env, **node.env}

    def to_json(self) -> dict:
        return {
            "run_id": self.run_id,
            "launcher": self.launcher,
            "run_dir": self.run_dir,
            "rendezvous": {"master_addr": self.master_addr, "master_port": self.master_port, "backend": "static"},
            "world_size": self.world_size,
            "program": redact_argv(self.program),
            "module": self.module,
            "env": self.env.to_json(),
            "hostfile": self.hostfile,
            "nodes": [
                {
                    "host": n.host, "node_rank": n.node_rank, "nproc": n.nproc,
                    "ranks": [n.ranks.start, n.ranks.stop - 1], "python": n.python, "workdir": n.workdir,
                    "env": {k: redact_value(k, v) for k, v in n.env.items()}, "argv": _shown_argv(n.argv),
                }
                for n in self.nodes
            ],
            "spares": [{"host": n.host, "nproc": n.nproc, "python": n.python, "argv": _shown_argv(n.argv)}
                       for n in self.spares],
        }

    def describe(self) -> list[str]:
        """Human-readable plan for --dry-run: env once, then 'would run' per host (secrets redacted)."""
        lines = [
            f"run {self.run_id}: {self.launcher}, {len(self.nodes)} nodes, world size {self.world_size}, "
            f"rendezvous {self.master_addr}:{self.master_port}, run dir {self.run_dir}",
            "env (every rank):",
        ]
        lines += [f"  {k}={_shown(v)}  # {self.env.sources.get(k, 'launcher')}"
                  for k, v in {**self.env.redacted(), **self.launcher_env}.items()]
        if self.hostfile:
            lines.append(f"DeepSpeed hostfile ({self.run_dir}/hostfile; its world info is in each --world_info):")
            lines += [f"  {line}" for line in self.hostfile.splitlines()]
        for n in self.nodes:
            where = f" in {n.workdir}" if n.workdir else ""
            extra = "".join(f" {k}={_shown(redact_value(k, v))}" for k, v in n.env.items())
            lines.append(f"would run on {n.host} (node rank {n.node_rank}, ranks {n.ranks.start}-{n.ranks.stop - 1})"
                         f"{where}:{extra} {shlex.join(_shown_argv(n.argv))}")
        for n in self.spares:
            lines.append(f"would run on {n.host} (spare: takes a lost node's place): {shlex.join(_shown_argv(n.argv))}")
        return lines


def _shown_argv(argv: Sequence[str]) -> list[str]:
    return redact_argv(shown_argv(argv))


def _shown(value: str) -> str:
    """Shell-quoted, with control characters escaped so the terminal shows them (e.g. torchrun's prefix marker)."""
    return shlex.quote(value if value.isprintable() else value.encode("unicode_escape").decode())


def default_master_port(run_id: str) -> int:
    return PORT_BASE + zlib.crc32(run_id.encode()) % PORT_SPAN


def per_host_values(values: Sequence[str], hosts: list[str], *, field: str, default: str | None) -> dict[str, str | None]:
    """Resolve `VALUE` / `NODESET=VALUE` entries (later wins) into one value per host."""
    result: dict[str, str | None] = dict.fromkeys(hosts, default)
    for entry in values:
        target, sep, value = entry.partition("=")
        if sep and target and "/" not in target:
            names = expand(target, field=field)
            unknown = [n for n in names if n not in result]
            if unknown:
                raise ConfigError(field, entry, f"{fold(unknown)} is not one of the launch hosts ({fold(hosts)})")
        else:
            names, value = hosts, entry
        if not value or "\0" in value:
            raise ConfigError(field, entry, "give a non-empty value, e.g. /opt/venv/bin/python or node[1-2]=/srv/job")
        for name in names:
            result[name] = value
    return result


def _validate(spec: LaunchSpec, hosts: Sequence[Host]) -> None:
    if not RUN_ID.match(spec.run_id):
        raise ConfigError("--run-id", spec.run_id, "use 1-64 characters from A-Z a-z 0-9 . _ - (it names a directory)")
    if spec.master_addr is not None and not _ADDRESS.match(spec.master_addr):
        raise ConfigError("--master-addr", spec.master_addr, "give a host name or IP address the nodes can reach")
    if not spec.run_dir.strip() or "\0" in spec.run_dir:  # '' would put the run at the file-system root
        raise ConfigError("--run-dir", spec.run_dir, "give a directory for the run's files, e.g. runs")
    if spec.launcher not in LAUNCHERS:
        raise ConfigError("--launcher", spec.launcher, f"use one of {', '.join(LAUNCHERS)}")
    if not spec.program or not spec.program[0]:
        raise ConfigError("SCRIPT_OR_MODULE", "", "give the script (or -m MODULE) after '--', e.g. -- train.py --lr 3e-4")
    if spec.program[0].startswith("-"):
        raise ConfigError("SCRIPT_OR_MODULE", spec.program[0], "the first word after '--' is the script or module")
    if spec.module and not all(part.isidentifier() for part in spec.program[0].split(".")):
        raise ConfigError("-m", spec.program[0], "give a dotted module name, e.g. -m orchestrator.engine")
    if spec.launcher == "warm" and not (spec.module and spec.program[0] == WARM_MODULE):
        raise ConfigError("--launcher", "warm", f"warm restarts run the engine only: -m {WARM_MODULE} -- ARGS "
                          "(use --launcher torchrun for other programs)")
    if spec.nproc_per_node is not None and spec.nproc_per_node < 1:
        raise ConfigError("--nproc-per-node", spec.nproc_per_node, "use a positive integer")
    if spec.master_port is not None and not 1 <= spec.master_port <= 65535:
        raise ConfigError("--master-port", spec.master_port, "use a TCP port 1-65535")
    if not hosts:
        raise ConfigError("--hosts", "", "give at least one host")
    if any("\0" in arg for arg in spec.program):
        raise ConfigError("SCRIPT_OR_MODULE", spec.program, "arguments cannot contain NUL bytes")
    if any("\0" in v for v in spec.env.values.values()):
        raise ConfigError("--env", "", "values cannot contain NUL bytes")


def keeper_argv(*, python: str, host: str, nnodes: int, node_rank: int | None, nproc: int, first_rank: int,
                world_size: int, master_addr: str, master_port: int, store: str | None,
                engine_args: list[str]) -> list[str]:
    """argv of one node's warm keeper (engine/keeper.py): torchrun's place for warm restarts; node_rank None: a
    spare keeper."""
    where = ["--spare"] if node_rank is None else [f"--node-rank={node_rank}", f"--first-rank={first_rank}"]
    return [python, "-m", "orchestrator.engine.keeper", f"--nnodes={nnodes}", *where, f"--host={host}",
            f"--nproc-per-node={nproc}", f"--world-size={world_size}", f"--master-addr={master_addr}",
            f"--master-port={master_port}", *([f"--store={store}"] if store else []), "--", *engine_args]


def build_plan(spec: LaunchSpec, hosts: Sequence[Host], spares: Sequence[Host] = ()) -> LaunchPlan:
    """Validate the spec against the resolved hosts and build every node's command. Pure; ConfigError on bad input.
    spares: hosts for spare keepers (warm launcher only; others ignore them)."""
    _validate(spec, hosts)
    spares = list(spares) if spec.launcher == "warm" else []
    names = [h.name for h in hosts] + [h.name for h in spares]
    pythons = per_host_values(spec.python, names, field="--python", default=DEFAULT_PYTHON)
    workdirs = per_host_values(spec.workdir, names, field="--workdir", default=None)
    master_addr = spec.master_addr or names[0]
    master_port = spec.master_port or default_master_port(spec.run_id)
    nprocs = [spec.nproc_per_node or h.slots for h in hosts]
    world_info = deepspeed.world_info_b64([(h.name, h.devices[:n]) for h, n in zip(hosts, nprocs)])
    nodes, first_rank = [], 0
    for node_rank, (host, nproc) in enumerate(zip(hosts, nprocs)):
        python = pythons[host.name]
        if spec.launcher == "warm":
            argv = keeper_argv(python=python, host=host.name, nnodes=len(hosts), node_rank=node_rank, nproc=nproc,
                               first_rank=first_rank, world_size=sum(nprocs), master_addr=master_addr,
                               master_port=master_port, store=spec.store, engine_args=list(spec.program[1:]))
        elif spec.launcher == "torchrun":
            argv = torchrun.torchrun_argv(
                python=python, nnodes=len(hosts), node_rank=node_rank, nproc=nproc, master_addr=master_addr,
                master_port=master_port, program=list(spec.program), module=spec.module,
            )
        else:
            argv = deepspeed.deepspeed_argv(
                python=python, world_info=world_info, node_rank=node_rank, master_addr=master_addr,
                master_port=master_port, program=list(spec.program), module=spec.module,
            )
        # Devices picked with --include/--exclude: torchrun does not know slots, so pin them via the env
        # (DeepSpeed's world_info carries the slot ids itself).
        node_env = {}
        if host.slot_ids is not None and spec.launcher != "deepspeed":
            node_env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in host.slot_ids[:nproc])
        nodes.append(NodePlan(host.name, node_rank, nproc, first_rank, python, workdirs[host.name], tuple(argv), node_env))
        first_rank += nproc
    spare_nodes = []
    for host in spares:
        argv = keeper_argv(python=pythons[host.name], host=host.name, nnodes=len(hosts), node_rank=None,
                           nproc=nprocs[0], first_rank=0, world_size=sum(nprocs), master_addr=master_addr,
                           master_port=master_port, store=spec.store, engine_args=list(spec.program[1:]))
        spare_nodes.append(NodePlan(host.name, -1, nprocs[0], 0, pythons[host.name], workdirs[host.name],
                                    tuple(argv), {}))
    hostfile_text = None
    if spec.launcher == "deepspeed":
        from orchestrator.hostfile import render

        hostfile_text = render([Host(h.name, n) for h, n in zip(hosts, nprocs)], "deepspeed")
    return LaunchPlan(
        run_id=spec.run_id, launcher=spec.launcher, run_dir=f"{spec.run_dir.rstrip('/')}/{spec.run_id}",
        master_addr=master_addr, master_port=master_port, program=tuple(spec.program), module=spec.module,
        env=spec.env, launcher_env={RUN_TMPDIR: spec.node_tmp_dir,
                                    **(torchrun.torchrun_env() if spec.launcher == "torchrun" else {})},
        nodes=tuple(nodes), hostfile=hostfile_text, spares=tuple(spare_nodes),
    )
