"""`orchestrator hosts ...`: see and render the host set a command would use.

    $ orchestrator hosts expand -w 'node[1-3],gpu-[1-2]-1'
    $ orchestrator hosts render --format deepspeed --hostfile hostfiles/example-deepspeed.txt --exclude node03
    $ orchestrator hosts render --format pdsh -w 'node[01-16]!node07' -o -
"""

from __future__ import annotations

import click

from orchestrator.cli.options import HostSelection, host_options, resolve_from_cli

_NPROC = click.option("--nproc-per-node", type=click.IntRange(min=1), default=None,
                      help="Slots per host where the source gives none; hosts with fewer slots are an error.")


@click.group("hosts")
def hosts_group() -> None:
    """Expand node sets and render hostfiles (deepspeed, mpi, pdsh, slurm, json)."""


@hosts_group.command("expand")
@host_options
@_NPROC
@click.option("--slots", "show_slots", is_flag=True, help="Print 'HOST SLOTS' instead of the bare name.")
def expand_command(host_selection: HostSelection, nproc_per_node: int | None, show_slots: bool) -> None:
    """Print the resolved hosts, one per line, in rank order."""
    for host in resolve_from_cli(host_selection, nproc_per_node=nproc_per_node):
        click.echo(f"{host.name} {host.slots}" if show_slots else host.name)


@hosts_group.command("render")
@host_options
@_NPROC
@click.option("--format", "fmt", type=click.Choice(["deepspeed", "mpi", "pdsh", "slurm", "json"]), default="deepspeed",
              show_default=True, help="Hostfile format.")
@click.option("-o", "--output", metavar="FILE", default=None,
              help="Where to write ('-' for stdout). "
              "Default: hostfiles/<format>.rendered.txt (json: hostfiles/hosts.rendered.json).")
def render_command(host_selection: HostSelection, nproc_per_node: int | None, fmt: str, output: str | None) -> None:
    """Render the resolved hosts as a hostfile another tool reads."""
    from orchestrator import hostfile

    hosts = resolve_from_cli(host_selection, nproc_per_node=nproc_per_node)
    if output == "-":
        click.echo(hostfile.render(hosts, fmt), nl=False)
        return
    path = hostfile.write(hosts, fmt, output or hostfile.default_path(fmt))
    click.echo(f"wrote {path} ({len(hosts)} hosts, {hosts.total_slots} slots)", err=True)


commands = [hosts_group]
