"""Slurm state in one place: the current allocation, node lists, jobs, nodes, drain/cancel.

    from orchestrator import slurm
    slurm.nodelist("gpu[01-03],cpu7")       # ['gpu01', 'gpu02', 'gpu03', 'cpu7'] (checked by scontrol)
    alloc = slurm.allocation()              # Allocation(job_id='42', nodes=['node1', ...], gpus_per_node=2) or None
    slurm.require_allocation("--via slurm")  # the same, or ConfigError (exit 2) outside salloc/sbatch
    slurm.job("42").state, slurm.job("42").exit_code       # 'COMPLETED', 0
    slurm.nodes()["node3"].state            # 'idle'
    slurm.node_address("node3")             # '10.0.0.3' (its NodeAddr)
    slurm.drain(["node3"], reason="ecc errors")           # what the supervisor does with a bad node

Backends: pyslurm when it imports and matches the running Slurm (PyPI only builds it for Slurm 25.11; importing
it against Debian's 22.05 fails with "Slurm version mismatch"), otherwise the Slurm CLI: `squeue --json`,
`sinfo --json` and `scontrol` (22.05 has no `scontrol --json`). Writes (drain, resume, cancel) always go
through `scontrol`/`scancel`, which every Slurm version has.

Node lists are expanded in Slurm's order by orchestrator.hosts.expand and, where `scontrol` can run, compared with
`scontrol show hostnames`: Slurm is the authority on its own lists, so on a disagreement its answer wins and the
difference is logged (tests/unit/test_slurm_nodelist.py keeps the two equal on a table of lists). Known difference: Slurm 22.05 rejects a suffix after the last bracket (`n[1-2]-ib`), which
ClusterShell expands; Slurm never produces such a list itself.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from orchestrator.contracts import signal_exit_code
from orchestrator.errors import ConfigError, RemoteError
from orchestrator.hosts import expand, fold

log = logging.getLogger("orchestrator.slurm")

__all__ = ["Allocation", "Job", "Node", "nodelist", "scontrol_hostnames", "allocation", "require_allocation",
           "job", "jobs", "nodes", "drain", "resume", "cancel", "backend", "exit_code_from_status"]

CLI_TIMEOUT = 30.0
_GPU_COUNT = re.compile(r"(?:[A-Za-z0-9_-]+:)*([0-9]+)")  # `4`, `a100:4`, `gpu:a100:4`
ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING",
                           "SIGNALING", "STAGE_OUT", "REQUEUE_HOLD", "REQUEUE_FED"})


@dataclass(frozen=True, slots=True)
class Allocation:
    """The Slurm job this process runs in (salloc shell, sbatch script, or an srun step)."""

    job_id: str
    nodes: list[str]
    gpus_per_node: int | None
    """GPUs Slurm gave each node (SLURM_GPUS_ON_NODE, else a plain SLURM_GPUS_PER_NODE), None if none asked."""

    @property
    def first_node(self) -> str:
        return self.nodes[0]


@dataclass(frozen=True, slots=True)
class Job:
    job_id: str
    name: str
    state: str
    """PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, ..."""
    nodes: str
    partition: str
    reason: str
    exit_code: int | None
    """Shell-style: the batch script's exit code, or 128+signal; None while the job has not ended."""
    batch_host: str = ""
    restarts: int = 0

    @property
    def finished(self) -> bool:
        return self.state not in ACTIVE_STATES


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    state: str
    """Lower-case base state as sinfo prints it: idle, mixed, allocated, down, drained, draining, ..."""
    reason: str
    gres: str
    cpus: int


def exit_code_from_status(raw: int) -> int:
    """Slurm reports a wait(2) status (512 = exit 2, 15 = SIGTERM); return the shell's view (2, 143)."""
    return signal_exit_code(raw & 0x7F) if raw & 0x7F else (raw >> 8) & 0xFF


# ---- running the Slurm CLI --------------------------------------------------------------------------------
def _run(argv: list[str], *, what: str) -> subprocess.CompletedProcess:
    if not shutil.which(argv[0]):
        raise ConfigError("slurm", argv[0], "the Slurm client tools are not installed (Debian: slurm-client)")
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RemoteError(f"slurm: {what}: `{argv[0]}` gave no answer in {CLI_TIMEOUT:.0f} s (is slurmctld up?)") from None
    return out


def _checked(argv: list[str], *, what: str) -> str:
    out = _run(argv, what=what)
    if out.returncode:
        raise RemoteError(f"slurm: {what} failed (exit {out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def _json(argv: list[str], *, what: str) -> dict:
    text = _checked(argv, what=what)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RemoteError(f"slurm: {what}: `{' '.join(argv)}` did not print JSON ({exc})") from None
    errors = [e.get("description") or e.get("error") for e in data.get("errors", []) if e]
    if errors:
        raise RemoteError(f"slurm: {what}: {'; '.join(map(str, errors))}")
    return data


# ---- node lists -------------------------------------------------------------------------------------------
def scontrol_hostnames(expr: str) -> list[str] | None:
    """`scontrol show hostnames EXPR`; None when scontrol is missing or cannot read a slurm.conf.

    Raises ConfigError when Slurm calls the list invalid (it prints "Invalid hostlist" and still exits 0).
    """
    if not shutil.which("scontrol"):
        return None
    out = subprocess.run(["scontrol", "show", "hostnames", expr], capture_output=True, text=True,
                         timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL)
    if "Invalid hostlist" in out.stderr or "Invalid range" in out.stderr:
        raise ConfigError("nodelist", expr, "Slurm rejects this host list (scontrol show hostnames)")
    if out.returncode:
        log.debug("scontrol show hostnames unavailable: %s", out.stderr.strip())
        return None
    return out.stdout.split()


def nodelist(expr: str, *, field: str = "SLURM_JOB_NODELIST", check: bool = True) -> list[str]:
    """Expand a Slurm node list in Slurm's order; with `check`, confirmed by scontrol."""
    names = expand(expr, field=field)
    if check:
        slurm_names = scontrol_hostnames(expr)
        if slurm_names is not None and slurm_names != names:
            log.warning("%s=%s: ClusterShell gives %s, Slurm gives %s; using Slurm's", field, expr, names, slurm_names)
            return slurm_names
    return names


# ---- the current allocation -------------------------------------------------------------------------------
def gpus_per_node(environ: Mapping[str, str] = os.environ) -> int | None:
    """GPUs Slurm gave each node: SLURM_GPUS_ON_NODE, else SLURM_GPUS_PER_NODE when it is a plain count
    (`4`, `a100:4`, `gpu:a100:4`); None when neither says (or says something fancier, e.g. per-type lists)."""
    for name in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        match = _GPU_COUNT.fullmatch(environ.get(name, ""))
        if match and int(match.group(1)) > 0:
            return int(match.group(1))
    return None


def nodelist_expr(environ: Mapping[str, str] = os.environ) -> str | None:
    """The enclosing job's node list expression (SLURM_JOB_NODELIST, or the older SLURM_NODELIST), or None."""
    return environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST") or None


def allocation(environ: Mapping[str, str] = os.environ, *, check: bool = True) -> Allocation | None:
    """The enclosing Slurm job from its environment, or None outside one."""
    job_id = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")
    expr = nodelist_expr(environ)
    if not job_id or not expr:
        return None
    return Allocation(job_id=job_id, nodes=nodelist(expr, check=check), gpus_per_node=gpus_per_node(environ))


def require_allocation(what: str, environ: Mapping[str, str] = os.environ) -> Allocation:
    alloc = allocation(environ)
    if alloc is None:
        raise ConfigError(what, "no Slurm allocation",
                          "run it inside `salloc -N N` or an sbatch script, or use `orchestrator submit`")
    return alloc


# ---- jobs and nodes ---------------------------------------------------------------------------------------
@functools.cache
def backend() -> str:
    """'pyslurm' when it imports against this Slurm, else 'cli' (the reason is logged once)."""
    try:
        import pyslurm  # noqa: F401  (raises on a Slurm version mismatch)
    except Exception as exc:  # ImportError, or pyslurm's own RuntimeError about the version
        log.debug("pyslurm not usable (%s); using the Slurm CLI", exc)
        return "cli"
    return "pyslurm"


def _job_from_squeue(raw: dict) -> Job:
    state = raw.get("job_state", "")
    done = state not in ACTIVE_STATES
    return Job(job_id=str(raw["job_id"]), name=raw.get("name", ""), state=state, nodes=raw.get("nodes", ""),
               partition=raw.get("partition", ""), reason=raw.get("state_reason", ""),
               exit_code=exit_code_from_status(int(raw.get("exit_code") or 0)) if done else None,
               batch_host=raw.get("batch_host", ""), restarts=int(raw.get("restart_cnt") or 0))


def _job_from_pyslurm(raw) -> Job:
    """pyslurm >= 23 `Job` (attribute names of its docs); getattr keeps a renamed field from breaking state reads."""
    state = getattr(raw, "state", "") or ""
    code = getattr(raw, "exit_code", None)
    return Job(job_id=str(raw.id), name=getattr(raw, "name", "") or "", state=state,
               nodes=getattr(raw, "allocated_nodes", None) or getattr(raw, "required_nodes", None) or "",
               partition=getattr(raw, "partition", "") or "", reason=getattr(raw, "state_reason", "") or "",
               exit_code=None if state in ACTIVE_STATES or code is None else int(code),
               batch_host=getattr(raw, "batch_host", "") or "", restarts=int(getattr(raw, "requeue_count", 0) or 0))


def jobs(job_ids: Sequence[str] = ()) -> list[Job]:
    """Jobs Slurm still knows (pending, running, and finished ones for MinJobAge seconds)."""
    if backend() == "pyslurm":
        import pyslurm

        found = [_job_from_pyslurm(j) for j in pyslurm.Jobs.load().values()]
        return [j for j in found if not job_ids or j.job_id in job_ids]
    argv = ["squeue", "--json", *(["--jobs", ",".join(job_ids)] if job_ids else [])]
    return [_job_from_squeue(j) for j in _json(argv, what="squeue").get("jobs", [])]


def job(job_id: str) -> Job | None:
    found = [j for j in jobs([job_id]) if j.job_id == str(job_id)]
    return found[0] if found else None


def nodes() -> dict[str, Node]:
    """Every node of the cluster by name."""
    if backend() == "pyslurm":
        import pyslurm

        return {n.name: Node(name=n.name, state=(getattr(n, "state", "") or "").lower(), reason=getattr(n, "reason", "") or "",
                             gres=str(getattr(n, "configured_gres", "") or ""), cpus=int(getattr(n, "total_cpus", 0) or 0))
                for n in pyslurm.Nodes.load().values()}
    found = {}
    for raw in _json(["sinfo", "--json"], what="sinfo").get("nodes", []):
        flags = [f.lower() for f in raw.get("state_flags", [])]
        state = "drained" if "drain" in flags and raw.get("state") == "idle" else \
            "draining" if "drain" in flags else raw.get("state", "")
        found[raw["name"]] = Node(name=raw["name"], state=state, reason=raw.get("reason", ""), gres=raw.get("gres", ""),
                                  cpus=int(raw.get("cpus") or 0))
    return found


def node_address(name: str) -> str:
    """The node's NodeAddr (`scontrol show node`): where slurmctld reaches its slurmd (the node's name when unset)."""
    text = _checked(["scontrol", "--oneliner", "show", "node", name], what=f"the address of {name}")
    found = re.search(r"(?:^|\s)NodeAddr=(\S+)", text)
    if not found:
        raise RemoteError(f"slurm: scontrol shows no NodeAddr for {name}")
    return found.group(1)


# ---- acting -----------------------------------------------------------------------------------------------
def on_node(name: str) -> list[str]:
    """srun's argv prefix for one task on node `name` of the current allocation, beside its running steps."""
    return ["srun", "--quiet", "--overlap", "--nodes=1", "--ntasks=1", f"--nodelist={name}"]


def _node_arg(names: Sequence[str]) -> str:
    if not names:
        raise ConfigError("nodes", list(names), "name at least one node")
    return fold(expand(",".join(names), field="nodes"))


def drain(names: Sequence[str], *, reason: str) -> None:
    """Take nodes out of scheduling (running jobs finish); Slurm requires a reason and keeps it for `sinfo -R`."""
    if not reason.strip():
        raise ConfigError("reason", reason, "say why the node is drained (Slurm shows it in sinfo -R)")
    _checked(["scontrol", "update", f"NodeName={_node_arg(names)}", "State=DRAIN", f"Reason={reason}"], what="drain")


def resume(names: Sequence[str]) -> None:
    _checked(["scontrol", "update", f"NodeName={_node_arg(names)}", "State=RESUME"], what="resume")


def cancel(job_id: str, *, signal: str | None = None) -> None:
    """scancel a job (all its steps); with `signal`, only send it (e.g. 'INT') without ending the job."""
    argv = ["scancel", *([f"--signal={signal}", "--full"] if signal else []), str(job_id)]
    _checked(argv, what=f"scancel {job_id}")
