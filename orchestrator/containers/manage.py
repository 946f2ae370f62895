"""`images ls` / `images rm` across hosts: the docker CLI on every node through the fan-out, per-host results.

    rows, result = list_images(["node1", "node2"], ssh=ssh)   # rows: [{"host", "id", "tags", "size"}, ...]
    status = remove_image("orch-test:cpu", hosts, ssh=ssh)    # {"node1": "removed", "node2": "absent", ...}

A node's daemon is found the way its users find it: DOCKER_HOST when `socket` is given, else the CLI default.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from orchestrator.remote import run_on
from orchestrator.remote.fanout import FanoutResult


def _env(socket: str | None) -> dict[str, str] | None:
    return {"DOCKER_HOST": f"unix://{socket}"} if socket else None


def list_images(hosts: Sequence[str], *, socket: str | None = None, **fanout) -> tuple[list[dict], FanoutResult]:
    """Images on every host (docker image ls); hosts that failed are in the FanoutResult, not in the rows."""
    lines: dict[str, list[str]] = {h: [] for h in hosts}
    result = run_on(hosts, ["docker", "image", "ls", "--no-trunc", "--format", "{{json .}}"], env=_env(socket),
                    on_line=lambda host, stream, line: stream == "stdout" and lines[host].append(line), **fanout)
    rows = []
    for host in result.succeeded:
        for line in lines[host]:
            try:
                img = json.loads(line)
            except ValueError:
                continue
            tag = f"{img.get('Repository')}:{img.get('Tag')}"
            rows.append({"host": host, "id": img.get("ID"), "tags": [] if "<none>" in tag else [tag],
                         "size": img.get("Size")})
    return rows, result


def remove_image(image: str, hosts: Sequence[str], *, socket: str | None = None, force: bool = False,
                 **fanout) -> tuple[dict[str, str], FanoutResult]:
    """docker image rm on every host -> host: 'removed' | 'absent' | 'failed'; removing what is gone is fine."""
    argv = ["docker", "image", "rm", *(["--force"] if force else []), image]
    result = run_on(hosts, argv, env=_env(socket), **fanout)
    status = {}
    for host, r in result.items():
        if r.ok:
            status[host] = "removed"
        elif r.error is None and any("No such image" in line for line in r.tail):
            status[host] = "absent"
        else:
            status[host] = "failed"
    return status, result
