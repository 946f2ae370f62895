"""`orchestrator install`: run playbooks/install.yml on a host set through ansible-runner, then gate the nodes.

    $ orchestrator install -w 'node[1-4]' --ssh-config sandbox/ssh_config
    $ orchestrator install --inventory site.yml --tags rdma,nccl --check
    $ orchestrator install -w 'gpu[01-16]' --tags validate --gate-gpus 8 --gate-busbw 150 --gate-ib-ports 4
    $ orchestrator install -w 'node[1-2]' -e rootless_docker_net=host --dry-run --json
    $ orchestrator install --export-playbooks site/ && orchestrator install -w 'node[1-4]' --playbook site/install.yml

Shows a live per-host view (task, ok, changed, failed), then a summary per host with the GPU-only work skipped
(and why) and the gate's verdict. When the validate role ran, nodes that failed the gate are left out of
<out>/inventory.gated.yml and <out>/hostfile. Exit 0 when every host installed and passed the gate, 255 when a host
was unreachable, else 1.
The playbook and its roles ship inside the package; --export-playbooks copies them out to edit.
"""

from __future__ import annotations

import json

import click

from orchestrator.cli.options import HostSelection, host_options, resolve_from_cli
from orchestrator.cli.ssh_options import ssh_options
from orchestrator.errors import EXIT_FAILURE, EXIT_OK, EXIT_UNREACHABLE, ConfigError


def _extra_vars(pairs: tuple[str, ...]) -> dict:
    import yaml

    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.isidentifier():
            raise ConfigError("--extra-var", pair, "write KEY=VALUE with a variable name as KEY (VALUE is YAML)")
        out[key] = yaml.safe_load(value) if value else ""
    return out


@click.command("install")
@host_options
@ssh_options
@click.option("-i", "--inventory", metavar="FILE", help="An Ansible inventory instead of --hosts/--hostfile.")
@click.option("--playbook", metavar="FILE", default=None,
              help="Your copy of install.yml (roles/ next to it) instead of the bundled one.")
@click.option("--export-playbooks", metavar="DIR", default=None,
              help="Copy the bundled install.yml and roles/ to DIR (new or empty, else --force) and exit.")
@click.option("--force", is_flag=True, help="With --export-playbooks: write into a non-empty DIR.")
@click.option("-t", "--tags", multiple=True, metavar="TAGS", help="Only these roles (comma-separated, repeatable).")
@click.option("--skip-tags", multiple=True, metavar="TAGS", help="Leave these roles out.")
@click.option("--check", is_flag=True, help="Ansible check mode: report what would change, change nothing.")
@click.option("-e", "--extra-var", "extra_var", multiple=True, metavar="KEY=VALUE", help="Role variable, repeatable.")
@click.option("-f", "--forks", type=int, default=16, show_default=True, help="Hosts worked on in parallel.")
@click.option("--pipelining/--no-pipelining", default=True, show_default=True, help="Ansible SSH pipelining.")
@click.option("--gate-gpus", type=int, default=None, help="GPUs each node must show (default: at least one).")
@click.option("--gate-busbw", type=float, default=0.0, show_default=True,
              help="Minimum all_reduce_perf bus bandwidth in GB/s (0: not required).")
@click.option("--gate-ib-ports", type=int, default=1, show_default=True, help="Active RDMA ports each node needs.")
@click.option("--out", "out_dir", default="runs/install", show_default=True, metavar="DIR",
              help="Where ansible-runner artifacts, the gated inventory and the hostfile go.")
@click.option("--dry-run", is_flag=True, help="Print the plan (ansible-playbook command, inventory); run nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout (plan with --dry-run, else results).")
def install_command(host_selection: HostSelection, ssh, inventory: str | None, playbook: str | None,
                    export_playbooks: str | None, force: bool, tags, skip_tags, check: bool, extra_var, forks: int, pipelining: bool, gate_gpus, gate_busbw: float, gate_ib_ports: int,
                    out_dir: str, dry_run: bool, as_json: bool) -> int:
    """Install drivers, CUDA, NCCL, RDMA and rootless docker with Ansible, and gate the nodes."""
    if export_playbooks is not None:
        return _export(export_playbooks, force)
    if force:
        raise ConfigError("--force", True, "use it with --export-playbooks DIR")
    from rich.console import Console

    from orchestrator.provision import gated, inventory as inv_mod
    from orchestrator.provision.gate import GateThresholds
    from orchestrator.provision.progress import InstallProgress, summary_table
    from orchestrator.provision.runner import PLAYBOOK, plan_install, run_install

    thresholds = GateThresholds(gpus_per_node=gate_gpus, min_busbw_gbps=gate_busbw, min_active_ib_ports=gate_ib_ports)
    if inventory:
        if any(vars(host_selection).values()):
            raise ConfigError("--inventory", inventory, "give --inventory or --hosts/--hostfile, not both")
        hosts, run_inventory = inv_mod.inventory_hosts(inventory), inventory
    else:
        hosts = resolve_from_cli(host_selection)
        ssh_args, ssh_vars = inv_mod.ssh_args_from(ssh)
        run_inventory = inv_mod.build_inventory(hosts, ssh_args=ssh_args, extra_vars=ssh_vars)
    plan = plan_install(hosts, inventory=run_inventory, workdir=out_dir, tags=tags, skip_tags=skip_tags, check=check,
                        forks=forks, pipelining=pipelining, extra_vars=_extra_vars(extra_var),
                        playbook=playbook or PLAYBOOK)

    if dry_run:
        doc = {"argv": plan.argv(), "hosts": hosts.names, "inventory": run_inventory, "gate": _thresholds_doc(thresholds)}
        click.echo(json.dumps(doc, indent=2) if as_json else "would run: " + " ".join(plan.argv()))
        if not as_json and isinstance(run_inventory, dict):
            click.echo(json.dumps(run_inventory, indent=2))
        return EXIT_OK

    console = Console(stderr=True)
    with InstallProgress(hosts.names, console=console) as view:
        result = run_install(plan, on_update=view.update)
    verdicts = gated.judge(result, thresholds)
    written = gated.write_gated(hosts, verdicts, run_inventory, out_dir)
    console.print(summary_table(result, verdicts))
    for name, path in written.items():
        console.print(f"{name} without failed nodes: {path}")
    if as_json:
        click.echo(json.dumps({
            "status": result.status, "rc": result.rc, "elapsed_s": round(result.elapsed, 2), "written": written,
            "hosts": {h: {"ok": r.ok, "changed": r.changed, "failed": r.failed, "unreachable": r.unreachable,
                          "skipped": r.skipped, "skips": r.skips, "failures": r.failures,
                          "gate": None if h not in verdicts else {"passed": verdicts[h].passed,
                                                                  "reasons": list(verdicts[h].reasons),
                                                                  "gpus": verdicts[h].gpus,
                                                                  "busbw_gbps": verdicts[h].busbw_gbps}}
                      for h, r in result.hosts.items()},
        }, indent=2))
    if any(r.unreachable for r in result.hosts.values()):
        return EXIT_UNREACHABLE  # the exit-code contract: a host that could not be reached wins over a failure
    ok = result.rc == 0 and not result.failed_hosts and all(v.passed for v in verdicts.values())
    return EXIT_OK if ok else EXIT_FAILURE


def _export(dest: str, force: bool) -> int:
    from orchestrator import bundled

    target = bundled.export("playbooks", dest, force=force, option="--export-playbooks")
    click.echo(f"wrote {target}/install.yml and {target}/roles/; run them with: "
               f"orchestrator install --playbook {target}/install.yml ...")
    return EXIT_OK


def _thresholds_doc(thresholds) -> dict:
    return {"gpus_per_node": thresholds.gpus_per_node, "min_busbw_gbps": thresholds.min_busbw_gbps,
            "min_active_ib_ports": thresholds.min_active_ib_ports, "max_uncorrected_ecc": thresholds.max_uncorrected_ecc}


commands = [install_command]
