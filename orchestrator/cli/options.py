"""Click options shared by commands, so `run`, `launch`, `install`, `images`, `hosts` select hosts alike.

    @click.command()
    @host_options
    @click.option("--nproc-per-node", type=click.IntRange(min=1))
    def launch(host_selection: HostSelection, nproc_per_node: int | None) -> int:
        hosts = resolve_from_cli(host_selection, nproc_per_node=nproc_per_node)   # HostList, or ConfigError

`host_options` adds -w/--hosts, --hostfile, --include, --exclude and hands the command ONE argument,
`host_selection`, instead of four; nothing is resolved until the command calls resolve_from_cli, so a
command can add its own --nproc-per-node and `--help` stays fast.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import click

from orchestrator.hosts import HostList
from orchestrator.selection import resolve_hosts

__all__ = ["HostSelection", "host_options", "resolve_from_cli"]

_OPTION_NAMES = ("hosts", "hostfile", "include", "exclude")


@dataclass(frozen=True)
class HostSelection:
    """What the user asked for on the command line (unresolved)."""

    hosts: str | None = None
    hostfile: str | None = None
    include: str | None = None
    exclude: str | None = None


def host_options(command: Callable) -> Callable:
    """Decorator: the four host-selection options, collapsed into a `host_selection` keyword argument."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        selection = HostSelection(**{name: kwargs.pop(name) for name in _OPTION_NAMES})
        return command(*args, host_selection=selection, **kwargs)

    options = [
        click.option("-w", "--hosts", metavar="NODESET",
                     help="Hosts as a ClusterShell node set: node[01-16], gpu-[1-2]-[1-4], a,b, node[1-8]!node3."),
        click.option("--hostfile", metavar="FILE", type=click.Path(dir_okay=False),
                     help="DeepSpeed/OpenMPI hostfile ('host slots=N'), one host per line, or *.json."),
        click.option("--include", metavar="SPEC",
                     help="Keep only these hosts/slots, DeepSpeed syntax: node1:0,1@node2."),
        click.option("--exclude", metavar="SPEC",
                     help="Drop these hosts/slots, DeepSpeed syntax: node3@node4:7."),
    ]
    for option in reversed(options):  # reversed: click lists options in decoration order, top first
        wrapper = option(wrapper)
    return wrapper


def resolve_from_cli(
    selection: HostSelection, *, nproc_per_node: int | None = None, environ: Mapping[str, str] = os.environ
) -> HostList:
    """Resolve the selection (falling back to SLURM_JOB_NODELIST inside a Slurm job); ConfigError on bad input."""
    return resolve_hosts(**asdict(selection), nproc_per_node=nproc_per_node, environ=environ)
