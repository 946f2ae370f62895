"""Host selection: which hosts a command uses, from --hosts, --hostfile or the enclosing Slurm job.

    from orchestrator.selection import resolve_hosts
    hosts = resolve_hosts(hosts="node[01-04]", nproc_per_node=8)          # 4 x Host(slots=8)
    hosts = resolve_hosts(hostfile="hostfiles/example-deepspeed.txt", include="node01:0,1@node03")
    hosts.names    -> ["node01", "node03"]         hosts.folded -> "node[01,03]"

Sources, first match wins: --hosts, --hostfile, then SLURM_JOB_NODELIST inside a Slurm job. Slots per host
come from the hostfile (`host slots=N`), else the GPUs Slurm gave each node (orchestrator.slurm.gpus_per_node:
SLURM_GPUS_ON_NODE, else a plain SLURM_GPUS_PER_NODE), else --nproc-per-node, else 1. Node-set syntax and the
--include/--exclude filters are orchestrator.hosts'.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from orchestrator import hostfile as hostfile_mod
from orchestrator.errors import ConfigError
from orchestrator.hosts import MAX_SLOTS, Host, HostList, apply_filter, expand, fold
from orchestrator.slurm import gpus_per_node, nodelist_expr

log = logging.getLogger("orchestrator.selection")

__all__ = ["resolve_hosts", "slurm_hosts"]


def slurm_hosts(environ: Mapping[str, str], default_slots: int) -> HostList | None:
    """The hosts of the enclosing Slurm job (SLURM_JOB_NODELIST), or None outside a job."""
    expr = nodelist_expr(environ)
    if not expr:
        return None
    slots = gpus_per_node(environ) or default_slots
    return HostList(Host(name, slots) for name in expand(expr, field="SLURM_JOB_NODELIST"))


def _check_slots(hosts: HostList, nproc_per_node: int, source: str) -> None:
    short = [h for h in hosts if h.slots < nproc_per_node]
    if short:
        fewest = min(h.slots for h in short)
        raise ConfigError(
            "--nproc-per-node", nproc_per_node,
            f"{fold(h.name for h in short)} {'has' if len(short) == 1 else 'have'} only {fewest} slot(s) "
            f"({source}); use --nproc-per-node {fewest} or give those hosts more slots",
        )


def resolve_hosts(
    *,
    hosts: str | None = None,
    hostfile: str | os.PathLike | None = None,
    include: str | None = None,
    exclude: str | None = None,
    nproc_per_node: int | None = None,
    environ: Mapping[str, str] = os.environ,
) -> HostList:
    """The one entry point for commands: node set / hostfile / Slurm job -> filtered, checked HostList.

    Raises ConfigError (exit 2) for every bad input, before anything is started.
    """
    if nproc_per_node is not None and not 1 <= nproc_per_node <= MAX_SLOTS:
        raise ConfigError("--nproc-per-node", nproc_per_node, f"use 1 to {MAX_SLOTS}")
    if hosts is not None and hostfile is not None:
        raise ConfigError("--hosts/--hostfile", f"{hosts} / {hostfile}", "give one of them, not both")
    default_slots = nproc_per_node or 1
    if hosts is not None:
        resolved, source = HostList(Host(n, default_slots) for n in expand(hosts)), "--hosts"
    elif hostfile is not None:
        resolved, source = hostfile_mod.load(hostfile, default_slots=default_slots), f"hostfile {hostfile}"
    else:
        resolved, source = slurm_hosts(environ, default_slots), "SLURM_JOB_NODELIST"
        if resolved is None:
            raise ConfigError("--hosts", None, "give --hosts node[1-4] or --hostfile FILE, or run inside a Slurm job")
    resolved = apply_filter(resolved, include=include, exclude=exclude)
    if nproc_per_node is not None:
        _check_slots(resolved, nproc_per_node, source)
    log.debug("resolved %d hosts from %s: %s", len(resolved), source, resolved.folded)
    return resolved
