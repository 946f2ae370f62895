"""`orchestrator images ...`: container images on every node, with no registry.

    $ orchestrator images load train.tar --hosts 'node[1-16]' --ssh-config sandbox.ssh   # relay, bar per host
    $ orchestrator images load train.tar --hosts 'node[1-16]' --json                      # per-host results
    $ orchestrator images load train.tar --hosts 'node[1-16]' --sha256 "$(cat train.tar.sha256)"  # published digest
    $ orchestrator images ls --hosts 'node[1-16]'
    $ orchestrator images rm orch-test:cpu --hosts 'node[1-16]'
    $ orchestrator images build-test out.tar [--venv .venv]     # CPU test image from this machine's python

Results (the listing, the per-host table) go to stdout, one line per row, so `| grep` and `| awk` work;
progress bars and diagnostics go to stderr, as with `docker images` or pdsh.

Exit codes: 0 every host has the image, 1 some host failed (the table says why), 2 bad input (nothing started).
"""

from __future__ import annotations

import json

import click

from orchestrator.cli.options import HostSelection, host_options, resolve_from_cli
from orchestrator.cli.ssh_options import ssh_options

_SOCKET = click.option("--docker-socket", metavar="PATH",
                       help="The nodes' docker socket (default: DOCKER_HOST, the rootless socket in "
                            "$XDG_RUNTIME_DIR, else /run/docker.sock).")


@click.group("images")
def images_group() -> None:
    """Load, list and remove docker images on many nodes (image tars, no registry)."""


@images_group.command("load")
@click.argument("image", type=click.Path(dir_okay=False))
@host_options
@ssh_options
@_SOCKET
@click.option("--mode", type=click.Choice(["relay", "parallel", "sequential"]), default="relay", show_default=True,
              help="relay: node to node (the head sends the tar once); parallel/sequential: the head to each node.")
@click.option("--python", default="python3", show_default=True, help="Interpreter on the nodes for the relay.")
@click.option("--sha256", metavar="HEX", help="The digest IMAGE must have (as published with it); every node checks "
                                             "what it received against it and removes the image on a mismatch.")
@click.option("--json", "as_json", is_flag=True, help="Per-host results as one JSON document on stdout.")
def load_command(image: str, host_selection: HostSelection, ssh, docker_socket: str | None, mode: str, python: str,
                 sha256: str | None, as_json: bool) -> int:
    """Load IMAGE (a `docker save` tar) into every node's docker; a node that has its image id only gets its tags."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from orchestrator.containers.image import read_image_tar
    from orchestrator.containers.load import check_sha256, load_image, results_json

    tar = read_image_tar(image)  # ConfigError (exit 2) before any host is touched
    if sha256 is not None:
        check_sha256(sha256)
    hosts = resolve_from_cli(host_selection).names
    console = Console(stderr=True)
    console.print(f"images load: {tar.image_id[:19]} {', '.join(tar.tags)} ({tar.size / 1e6:.0f} MB) "
                  f"to {len(hosts)} hosts, mode {mode}")
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TextColumn("{task.fields[status]}"), console=console, transient=False,
                  disable=as_json) as progress:
        tasks = {h: progress.add_task(h, total=tar.size, status="") for h in hosts}
        results = load_image(tar.path, hosts, ssh=ssh, mode=mode, python=python, socket=docker_socket,
                             sha256=sha256, on_progress=lambda h, done, total: progress.update(tasks[h], completed=done),
                             on_result=lambda r: progress.update(tasks[r.host], status=r.status))
    if as_json:
        click.echo(json.dumps(results_json(results) | {"image_id": tar.image_id, "mode": mode}))
    else:
        _echo_columns(("HOST", "STATUS", "SECONDS", "ERROR"), [
            (r.host, r.status, f"{r.seconds:.1f}", r.error or "")
            for r in sorted(results.values(), key=lambda r: (r.ok, r.host))])
        counts = {s: sum(r.status == s for r in results.values()) for s in ("loaded", "tagged", "skipped", "failed")}
        click.echo(", ".join(f"{n} {s}" for s, n in counts.items()))
    return 0 if all(r.ok for r in results.values()) else 1


def _echo_columns(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Rows as aligned columns on stdout, never wrapped or cut (the last column runs on), like `docker images`."""
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header) - 1)]
    for row in (header, *rows):
        click.echo("   ".join([*(str(c).ljust(w) for c, w in zip(row, widths)), str(row[-1])]).rstrip())


@images_group.command("ls")
@host_options
@ssh_options
@_SOCKET
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def ls_command(host_selection: HostSelection, ssh, docker_socket: str | None, as_json: bool) -> int:
    """Images on every node (id, tags, size) on stdout; hosts whose docker cannot be asked: on stderr, exit 1."""
    from orchestrator.containers.manage import list_images

    hosts = resolve_from_cli(host_selection).names
    rows, result = list_images(hosts, socket=docker_socket, ssh=ssh)
    failed = [{"host": h, "reason": result[h].reason(), "tail": list(result[h].tail[-2:])} for h in result.failed]
    if as_json:
        click.echo(json.dumps({"images": rows, "failed": failed}))
    else:
        _echo_columns(("HOST", "IMAGE ID", "SIZE", "TAGS"),
                      [(r["host"], r["id"][:19], r["size"], " ".join(r["tags"]) or "<none>") for r in rows])
        for f in failed:
            click.echo(f"{f['host']}: failed: {f['reason']} {' '.join(f['tail'])}".rstrip(), err=True)
    return 1 if failed else 0


@images_group.command("rm")
@click.argument("image")
@host_options
@ssh_options
@_SOCKET
@click.option("--force", is_flag=True, help="docker image rm --force (also untag images used by stopped containers).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def rm_command(image: str, host_selection: HostSelection, ssh, docker_socket: str | None, force: bool,
               as_json: bool) -> int:
    """Remove IMAGE (id or tag) from every node; a node that does not have it counts as done."""
    from orchestrator.containers.manage import remove_image

    hosts = resolve_from_cli(host_selection).names
    status, result = remove_image(image, hosts, socket=docker_socket, force=force, ssh=ssh)
    if as_json:
        click.echo(json.dumps({"image": image, "hosts": status}))
    else:
        for host, s in status.items():
            why = "" if s != "failed" else f": {result[host].reason()} {' '.join(result[host].tail[-2:])}"
            click.echo(f"{host}: {s}{why}")
    return 1 if "failed" in status.values() else 0


@images_group.command("build-test")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--tag", default="orch-test:cpu", show_default=True)
@click.option("--venv", metavar="DIR", help="Also put this virtualenv (torch, our package) in the image, same path.")
def build_test_command(out: str, tag: str, venv: str | None) -> None:
    """Write a CPU test image tar from this machine's /usr/bin/python3 (and a venv) without a daemon or registry."""
    from orchestrator.containers.image import build_test_image

    info = build_test_image(out, tag=tag, venv=venv)
    click.echo(f"{info.path}: {info.image_id} {' '.join(info.tags)} ({info.size / 1e6:.0f} MB)")


commands = [images_group]
