"""`orchestrator check`: a health gate before launch; every node's figures, a verdict, a hostfile of the good ones.

    $ orchestrator check --hosts 'node[1-16]' --python /opt/venv/bin/python --workdir /srv/job \\
          --out-hostfile hostfiles/ok.txt
    $ orchestrator check --hostfile hostfiles/a100.txt --gpus-per-node 8 --json > check.json
    $ orchestrator launch --hostfile hostfiles/ok.txt ...      # only the nodes that passed

Per node: reachability, free disk in the workdir (and a synced 1 MiB write), clock skew against this machine,
the interpreter, a fixed CPU loop, nvidia-smi (GPU count, ECC, hardware clock slowdown; skipped without it).
Across the nodes that passed: all_reduce bandwidth and latency between pairs with the run's backend (gloo on
CPU, NCCL on GPU) and the run's interpreter (so `import torch` is checked and timed), bisected to the bad node or
link in a few rounds. "Slow" is relative to the median node, so the gate is the same on any hardware.

Exit code: 0 every node passed; 1 a node failed a check; 255 a node was unreachable or timed out (that wins over
1); 2 bad input (nothing started).
"""

from __future__ import annotations

import json
import sys

import click

from orchestrator.cli.options import HostSelection, host_options, resolve_from_cli
from orchestrator.cli.ssh_options import ssh_options


@click.command("check")
@host_options
@click.option("--python", multiple=True, metavar="[NODESET=]PATH",
              help="Interpreter on the nodes, as for launch (default python3); NODESET=PATH for some hosts.")
@click.option("--workdir", multiple=True, metavar="[NODESET=]DIR",
              help="Where the run writes on the nodes, as for launch (default: the login directory).")
@click.option("--min-free-gb", type=float, default=1.0, show_default=True, help="Free space the workdir needs.")
@click.option("--max-skew", type=float, default=1.0, show_default=True,
              help="Seconds a node's clock may differ from this machine's.")
@click.option("--gpus-per-node", type=int, default=None,
              help="GPUs nvidia-smi must list on every node (default: any number, none included).")
@click.option("--cpu-ratio", type=float, default=2.0, show_default=True,
              help="A node whose CPU loop takes longer than this x the median fails.")
@click.option("--bw-ratio", type=float, default=0.5, show_default=True,
              help="A link below this x the median bandwidth fails.")
@click.option("--lat-ratio", type=float, default=2.0, show_default=True,
              help="A link above this x the median latency (+ --lat-floor-us) fails.")
@click.option("--lat-floor-us", type=float, default=500.0, show_default=True)
@click.option("--backend", type=click.Choice(["auto", "gloo", "nccl"]), default="auto", show_default=True,
              help="Network test backend; auto: nccl when every node has GPUs, else gloo.")
@click.option("--size-mb", type=float, default=4.0, show_default=True, help="all_reduce size for bandwidth.")
@click.option("--budget", "budget_s", type=float, default=1.0, show_default=True,
              help="Seconds of bandwidth measurement per pair.")
@click.option("--no-network", is_flag=True, help="Per-node checks only (then `import torch` is not tried either).")
@click.option("--net-port", type=int, default=None, help="First TCP port of the pair tests (default 31000-31899).")
@click.option("-f", "--fanout", type=int, default=64, show_default=True,
              help="Node probes running at once (2 on sandbox hosts, which share the head's cores).")
@click.option("-t", "--timeout", type=float, default=60.0, show_default=True,
              help="Seconds per host and phase; a node that takes longer is reported unreachable.")
@click.option("--out-hostfile", "output", metavar="FILE", type=click.Path(dir_okay=False),
              help="Write a DeepSpeed hostfile of the nodes that passed (slots = GPUs found, where any).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout (the table goes to stderr).")
@ssh_options
def check_command(host_selection: HostSelection, python, workdir, min_free_gb, max_skew, gpus_per_node, cpu_ratio,
                  bw_ratio, lat_ratio, lat_floor_us, backend, size_mb, budget_s, no_network, net_port, fanout, timeout,
                  output, as_json, ssh) -> int:
    """Check the nodes before a run: per-node health, then the network by bisection.

    Exit code: 0 every node passed, 1 a node failed a check, 255 a node was unreachable or timed out, 2 bad input.
    """
    from orchestrator.check import CheckSpec, CheckThresholds, run_check
    from orchestrator.check.report import write_hostfile

    hosts = resolve_from_cli(host_selection)
    thresholds = CheckThresholds(min_free_gb=min_free_gb, max_skew_s=max_skew, cpu_ratio=cpu_ratio, bw_ratio=bw_ratio,
                                 lat_ratio=lat_ratio, lat_floor_us=lat_floor_us, gpus_per_node=gpus_per_node)
    spec = CheckSpec(python=python, workdir=workdir, thresholds=thresholds, network=not no_network, backend=backend,
                     size_mb=size_mb, budget_s=budget_s, port=net_port, fanout=fanout, timeout=timeout)
    spec.validate(hosts)  # bad input: exit 2 before anything connects
    report = run_check(hosts, spec, ssh=ssh, progress=lambda msg: click.echo(f"[check] {msg}", err=True))
    show_report(report, err=as_json)
    if output:
        click.echo(f"hostfile: {write_hostfile(report, output)} ({len(report.admitted())} host(s))", err=True)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    return report.exit_code


def show_report(report, *, err: bool) -> None:
    """The per-node table and the summary lines (on stderr when stdout carries JSON); `--preflight` shows it too."""
    from rich.console import Console

    from orchestrator.check.report import check_table, network_summary

    Console(file=sys.stderr if err else sys.stdout, width=200).print(check_table(report))
    for line in network_summary(report):
        click.echo(line, err=err)


commands = [check_command]
