"""`orchestrator sandbox ...`: a real cluster of namespace hosts with sshd on this machine (root only).

    $ orchestrator sandbox up --nodes 16                 # node1..node16, prints the ssh config path
    $ ssh -F "$(orchestrator sandbox ssh-config)" node3 hostname
    $ orchestrator run --ssh-config "$(orchestrator sandbox ssh-config)" --hosts 'node[1-16]' -- uptime
    $ eval "$(orchestrator sandbox env)"                 # ORCH_SANDBOX_SSH_CONFIG=... ORCH_SANDBOX_HOSTS=...
    $ orchestrator sandbox status
    $ orchestrator sandbox exec node3 -- ip -br addr    # inside a host without ssh
    $ orchestrator sandbox down
"""

from __future__ import annotations

import json
import shlex

import click

_NAME = click.option("--name", default="default", show_default=True,
                     help="Which sandbox: selects its state dir (/tmp/orchestrator-sandbox/NAME), bridge and subnet.")


@click.group("sandbox")
def sandbox_group() -> None:
    """Namespace hosts with their own hostname, copy-on-write /etc /opt /usr /var, private /root and sshd."""


@sandbox_group.command("up")
@_NAME
@click.option("-n", "--nodes", type=click.IntRange(1, 1000), default=4, show_default=True, help="Number of hosts.")
@click.option("--prefix", default="node", show_default=True, help="Host names are PREFIX1..PREFIXN.")
@click.option("--share", "shares", multiple=True, metavar="PATH",
              help="Also bind-mount PATH (read-write, same path) into every host. The active venv and this checkout "
                   "are shared automatically when they live under /root.")
@click.option("--slurm", is_flag=True, help="Also start munged, slurmctld (on the head) and one slurmd per host.")
@click.option("--gpus-per-node", type=click.IntRange(min=0), default=0, show_default=True,
              help="With --slurm: fake GPUs per host, offered as gres/gpu.")
@click.option("--docker", type=click.Choice(["none", "rootful", "rootless"]), default="none", show_default=True,
              help="Also start one docker daemon per host (rootful: --iptables=false --bridge=none).")
@click.option("--json", "as_json", is_flag=True, help="Print the sandbox (hosts, IPs, ssh config) as JSON on stdout.")
def up_command(name: str, nodes: int, prefix: str, shares: tuple[str, ...], slurm: bool, gpus_per_node: int,
               docker: str, as_json: bool) -> None:
    """Create NODES hosts, start their sshd and wait until every one answers."""
    from rich.console import Console

    from orchestrator.sandbox import Sandbox

    console = Console(stderr=True)
    with console.status("sandbox: starting") as status:
        sb = Sandbox.up(name, nodes=nodes, prefix=prefix, shares=shares,
                        progress=lambda msg: status.update(f"sandbox {name}: {msg}"))
        try:  # up is all or nothing: no half-made cluster left behind
            if slurm:
                from orchestrator.sandbox.slurm import start_slurm

                status.update(f"sandbox {name}: starting Slurm")
                start_slurm(sb, gpus_per_node=gpus_per_node)
            if docker != "none":
                from orchestrator.containers.daemon import start_docker

                status.update(f"sandbox {name}: starting {docker} docker daemons")
                start_docker(sb, rootless=docker == "rootless")
        except BaseException:
            sb.down()
            raise
    if as_json:
        click.echo(json.dumps(_describe(sb)))
        return
    hosts = sb.hosts
    console.print(f"sandbox {name}: {len(hosts)} hosts {hosts[0]}..{hosts[-1]} on {sb.state.bridge} "
                  f"({sb.state.subnet}) up in {sb.timings['total']:.1f} s", soft_wrap=True)
    console.print(f"  ssh -F {sb.ssh_config} {hosts[0]} hostname", soft_wrap=True)
    click.echo(str(sb.ssh_config))


@sandbox_group.command("down")
@_NAME
def down_command(name: str) -> None:
    """Stop every daemon and process of the sandbox and remove its namespaces, mounts, links and state."""
    from orchestrator.sandbox import Sandbox

    removed = Sandbox.load(name).down()
    click.echo(f"sandbox {name}: removed {removed['hosts']} hosts, stopped {removed['daemons']} recorded daemons", err=True)


@sandbox_group.command("status")
@_NAME
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def status_command(name: str, as_json: bool) -> int:
    """Per host: IP, sshd PID and whether it is alive, processes in its namespace. Exit 1 if an sshd is dead."""
    from rich.console import Console
    from rich.table import Table

    from orchestrator.sandbox import Sandbox

    sb = Sandbox.load(name)
    rows = sb.status()
    if as_json:
        click.echo(json.dumps({**_describe(sb), "status": rows}))
    else:
        table = Table(title=f"sandbox {name} ({sb.state.bridge}, {sb.state.subnet})")
        for col in ("host", "ip", "sshd pid", "alive", "processes", "daemons"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["host"], r["ip"], str(r["sshd_pid"]), "yes" if r["sshd_alive"] else "[red]NO[/red]",
                          str(r["processes"]), ",".join(r["daemons"]))
        Console().print(table)
    return 0 if all(r["sshd_alive"] for r in rows) else 1


@sandbox_group.command("ssh-config")
@_NAME
@click.option("--print", "show", is_flag=True, help="Print the file's content instead of its path.")
def ssh_config_command(name: str, show: bool) -> None:
    """Path of the OpenSSH client config (for `ssh -F` and `orchestrator run --ssh-config`)."""
    from orchestrator.sandbox import Sandbox

    path = Sandbox.load(name).ssh_config
    click.echo(path.read_text() if show else str(path), nl=not show)


@sandbox_group.command("env")
@_NAME
def env_command(name: str) -> None:
    """Shell exports for the sandbox: eval "$(orchestrator sandbox env)"."""
    from orchestrator.sandbox import Sandbox

    from orchestrator.sandbox.slurm import SlurmCluster

    sb = Sandbox.load(name)
    env = sb.env()
    slurm = SlurmCluster.find(sb)
    if slurm is not None:
        env.update(slurm.env())
    for key, value in env.items():
        click.echo(f"export {key}={shlex.quote(value)}")


@sandbox_group.command("exec", context_settings={"ignore_unknown_options": True})
@_NAME
@click.argument("host")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_command(name: str, host: str, argv: tuple[str, ...]) -> int:
    """Run ARGV inside HOST's namespaces without ssh (nsenter); exits with its exit code.

    orchestrator sandbox exec node3 -- ip -br addr
    """
    import subprocess

    from orchestrator.sandbox import Sandbox

    return subprocess.run(Sandbox.load(name).nsenter_argv(host, list(argv))).returncode


@sandbox_group.command("list")
def list_command() -> None:
    """Names of the sandboxes recorded on this machine."""
    from orchestrator.sandbox import list_sandboxes

    for name in list_sandboxes():
        click.echo(name)


def _describe(sb) -> dict:
    return {"name": sb.name, "bridge": sb.state.bridge, "subnet": sb.state.subnet, "head_ip": sb.head_ip,
            "ssh_config": str(sb.ssh_config), "hosts": [{"host": h, "ip": sb.ip(h)} for h in sb.hosts],
            "shares": sb.state.shares}


commands = [sandbox_group]
