"""The job file: one typed definition of a run (where, what code, which setup, what to run, how to supervise).

    job = load_job("job.yaml", sets=["nproc_per_node=4", "supervise.max_restarts=5"])
    job.spec.run_argv, job.spec.module     # ("train.py", "--steps", "3"), False
    job.path("data/")                      # a path of the job file relative to its directory, made absolute
    job.data()                             # the job as plain data, paths absolute (load_job reads it back anywhere)
    job_schema()                           # the JSON Schema `orchestrator up --schema` prints

The smallest job file:

    name: hello
    hosts: node[1-2]
    nproc_per_node: 2
    python: /opt/venv/bin/python
    workdir: .
    run: train.py --steps 3

Paths in the file (workdir, hostfile, env_files) are relative to the job file's directory. `run` is split like
shell words (shlex) and never given to a shell; `run: -m package.module --flag` runs a module.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from orchestrator.errors import ConfigError
from orchestrator.job.typed import apply_set, doc, load, schema
from orchestrator.contracts import RUN_ID

__all__ = ["Job", "JobSpec", "SlurmSection", "SuperviseSection", "SyncSection", "job_schema", "load_job"]


@dataclass(frozen=True, kw_only=True)
class SlurmSection:
    """Run inside a Slurm allocation instead of on named hosts."""

    nodes: int = field(metadata=doc("Number of nodes (sbatch --nodes)."))
    gpus_per_node: int | None = field(default=None, metadata=doc("GPUs per node (Slurm gres); also the default "
                                                                 "processes per node."))
    partition: str | None = field(default=None, metadata=doc("Slurm partition."))
    time: str | None = field(default=None, metadata=doc("Time limit: MM, HH:MM:SS or D-HH:MM:SS."))
    account: str | None = field(default=None, metadata=doc("Slurm account."))


@dataclass(frozen=True, kw_only=True)
class SyncSection:
    """How the workdir travels to the nodes."""

    exclude: list[str] = field(default_factory=tuple, metadata=doc(
        "Glob patterns (relative paths or file names) left out of the copy, on top of .gitignore."))
    dest: str = field(default="~/.cache/orchestrator/code", metadata=doc(
        "Directory on every node under which each version of the code gets its own <sha256> directory."))


@dataclass(frozen=True, kw_only=True)
class SuperviseSection:
    """Present: the run is supervised (restarts from the newest checkpoint, drops bad hosts, detects hangs)."""

    max_restarts: int = field(default=3, metadata=doc("Give up after this many restarts."))
    spares: str | None = field(default=None, metadata=doc("Node set of spare hosts that replace excluded ones."))
    nodes: str | None = field(default=None, metadata=doc("MIN:MAX node count: shrink down to MIN when hosts are "
                                                         "lost and no spare is left."))
    hang_timeout: float = field(default=60.0, metadata=doc("Seconds without a heartbeat from every rank "
                                                           "before the run counts as hung."))
    health_check: str | None = field(default=None, metadata=doc("Command run on every host between attempts "
                                                                "(exit 0 = healthy), e.g. 'nvidia-smi -L'."))
    restart: Literal["auto", "warm", "cold"] = field(default="auto", metadata=doc(
        "warm: a failed or hung rank is replaced in-run by a standby restoring in-memory snapshots (the engine "
        "over SSH); cold: every failure restarts the run from the disk checkpoint; auto: warm when possible."))
    straggler_threshold: float = field(default=1.10, metadata=doc(
        "A node whose ranks spend at least this multiple of the median node's time in their rank-local compute "
        "is a straggler..."))
    straggler_steps: int = field(default=50, metadata=doc("...when it is that slow throughout this many steps."))
    straggler_action: Literal["replace", "name", "off"] = field(default="replace", metadata=doc(
        "replace: swap a straggler for a spare at the next checkpoint (no spare: name it); name: only name it; "
        "off: no detection."))
    shared_run_dir: bool = field(default=True, metadata=doc(
        "false: the run dir is not on a file system the head and the nodes share; each node's heartbeats and the "
        "engine's metrics.jsonl lines come back over its SSH session (under slurm: the srun step's output) into "
        "the head's run dir. The engine's checkpoints then need `--checkpoint-local` in `run` (each rank keeps its "
        "own state on its node, with a copy on the next node)."))


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """An orchestrator job: where it runs, the code it needs there, and what it runs."""

    name: str = field(metadata=doc("The job's name (letters, digits, . _ -), shown by `orchestrator jobs`."))
    hosts: str | None = field(default=None, metadata=doc("Node set to run on, e.g. node[1-4]."))
    hostfile: str | None = field(default=None, metadata=doc("Hostfile ('host slots=N' lines), relative to the job "
                                                            "file."))
    include: str | None = field(default=None, metadata=doc("Keep only these hosts/slots (DeepSpeed syntax)."))
    exclude: str | None = field(default=None, metadata=doc("Drop these hosts/slots (DeepSpeed syntax)."))
    slurm: SlurmSection | None = field(default=None, metadata=doc("Run in a Slurm allocation instead of on hosts."))
    workdir: str | None = field(default=None, metadata=doc(
        "Directory on the head (relative to the job file) copied to every node; the run starts in the copy."))
    sync: SyncSection = field(default_factory=SyncSection, metadata=doc("How the workdir is copied."))
    setup: str | list[str] | None = field(default=None, metadata=doc(
        "Shell commands run once per node in the copied workdir before the run; skipped while the code and these "
        "commands are unchanged since their last success on that node."))
    env: dict[str, str] = field(default_factory=dict, metadata=doc("Variables set on every rank."))
    env_files: list[str] = field(default_factory=tuple, metadata=doc("NAME=VALUE files (relative to the job file)."))
    forward_env: bool = field(default=True, metadata=doc("Forward the head's NCCL_*, TORCH_*, CUDA_*, PYTHON*, "
                                                         "OMP_*, GLOO_* variables."))
    run: str | list[str] = field(metadata=doc(
        "The script and its arguments (or -m MODULE ...): a string split like shell words, or a list of words."))
    launcher: Literal["torchrun", "deepspeed"] = field(default="torchrun", metadata=doc("The per-node launcher."))
    nproc_per_node: int | None = field(default=None, metadata=doc("Processes per node (default: each host's slots)."))
    python: str = field(default="python3", metadata=doc("Interpreter on the nodes."))
    container: str | None = field(default=None, metadata=doc("Run each node's launcher in this docker image "
                                                             "(load it first with `orchestrator images load`)."))
    container_python: str = field(default="python3", metadata=doc("The interpreter inside the container image."))
    container_mounts: list[str] = field(default_factory=tuple, metadata=doc(
        "Bind mounts into the container, SRC:DST or SRC:DST:ro, absolute paths on the nodes (data, checkpoints)."))
    container_gpus: bool = field(default=False, metadata=doc("Give the container the node's GPUs (docker run --gpus "
                                                             "all; the NVIDIA container toolkit on the nodes)."))
    supervise: SuperviseSection | None = field(default=None, metadata=doc(
        "Supervise the run (restarts, spares, hang detection) instead of a plain launch."))
    preflight: bool = field(default=False, metadata=doc(
        "Run the health gate of `orchestrator check` on the hosts (and spares) before the sync: a failed node "
        "stops a plain launch before anything starts; a supervised run excludes it before attempt 0."))

    @property
    def run_words(self) -> tuple[str, ...]:
        return tuple(shlex.split(self.run)) if isinstance(self.run, str) else tuple(self.run)

    @property
    def module(self) -> bool:
        return self.run_words[:1] == ("-m",)

    @property
    def program(self) -> tuple[str, ...]:
        """The LaunchSpec program: [script, args...] or, with module, [module, args...]."""
        return self.run_words[1:] if self.module else self.run_words

    @property
    def setup_script(self) -> str:
        if self.setup is None:
            return ""
        return self.setup if isinstance(self.setup, str) else "\n".join(self.setup)


@dataclass(frozen=True)
class Job:
    spec: JobSpec
    source: Path
    """The job file (its directory is the base of relative paths)."""

    def path(self, relative: str) -> Path:
        return (self.source.parent / Path(relative).expanduser()).resolve()

    def data(self) -> dict:
        """The spec as a job file's mapping (--set applied), its paths absolute: written next to a submitted run
        and read back by the batch step, which starts in another directory and must not see later edits."""
        def plain(value):
            if isinstance(value, (tuple, list)):
                return [plain(v) for v in value]
            return {k: plain(v) for k, v in value.items()} if isinstance(value, dict) else value

        data = plain(dataclasses.asdict(self.spec))
        for name in ("workdir", "hostfile"):
            if data[name] is not None:
                data[name] = str(self.path(data[name]))
        data["env_files"] = [str(self.path(f)) for f in data["env_files"]]
        return data


def job_schema() -> dict:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "orchestrator job file"} | schema(JobSpec)


def load_job(path: str | Path, *, sets: tuple[str, ...] | list[str] = ()) -> Job:
    """Read, override (--set) and check a job file; ConfigError (exit 2) naming the field on any problem."""
    source = Path(path)
    try:
        data = yaml.safe_load(source.read_text())
    except OSError as exc:
        raise ConfigError("JOB_FILE", str(path), f"cannot read it: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("JOB_FILE", str(path), f"not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError("JOB_FILE", str(path), "the file must hold a mapping, e.g. `name: hello` and `run: train.py`")
    for assignment in sets:
        data = apply_set(data, assignment)
    where = source.name
    spec = load(JobSpec, data, where=where)
    _check(spec, where)
    return Job(spec, source.resolve())


def _check(spec: JobSpec, where: str) -> None:
    """Rules across fields (load() checked each field alone)."""

    def bad(path: str, value, fix: str) -> ConfigError:
        return ConfigError(f"{where}:{path}", value, fix)

    if not RUN_ID.match(spec.name):
        raise bad("name", spec.name, "use 1-64 characters from A-Z a-z 0-9 . _ - (it names runs)")
    if spec.hosts is not None and spec.hostfile is not None:
        raise bad("hostfile", spec.hostfile, "give hosts or hostfile, not both")
    if spec.slurm is not None and (spec.hosts is not None or spec.hostfile is not None):
        raise bad("slurm", f"slurm and {'hosts' if spec.hosts is not None else 'hostfile'}", "give slurm or hosts/hostfile, not both (the allocation chooses the hosts)")
    if spec.container is None and (spec.container_mounts or spec.container_gpus):
        field_name = "container_mounts" if spec.container_mounts else "container_gpus"
        raise bad(field_name, getattr(spec, field_name), "set container: IMAGE too, or remove the field")
    if spec.container is not None and (spec.slurm is not None or spec.supervise is not None):
        other = "slurm" if spec.slurm is not None else "supervise"
        raise bad("container", spec.container, f"containers run over SSH without {other}: (srun steps and the "
                                                f"supervisor start the ranks on the nodes' python); drop one of them")
    if spec.include is not None and spec.exclude is not None:
        raise bad("include", spec.include, "give include or exclude, not both")
    try:
        words = spec.run_words
    except ValueError as exc:
        raise bad("run", spec.run, f"cannot split it like shell words ({exc}); close the quote") from None
    if not words or (spec.module and len(words) < 2):
        raise bad("run", spec.run, "give the script and its arguments, e.g. run: train.py --steps 3")
    if spec.program[0].startswith("-"):
        raise bad("run", spec.run, "start with the script (or -m MODULE), e.g. run: train.py --steps 3")
    if spec.nproc_per_node is not None and spec.nproc_per_node < 1:
        raise bad("nproc_per_node", spec.nproc_per_node, "use a positive integer")
    if spec.slurm is not None and spec.slurm.nodes < 1:
        raise bad("slurm.nodes", spec.slurm.nodes, "use a positive integer")
    if spec.supervise is not None and spec.supervise.max_restarts < 0:
        raise bad("supervise.max_restarts", spec.supervise.max_restarts, "use 0 or more")
    if spec.setup is not None and not spec.setup_script.strip():
        raise bad("setup", spec.setup, "give the commands, or remove the field")
