"""`launch --container IMAGE`: each node's launcher runs inside `docker run`, labelled with the run id.

    spec = ContainerSpec(image="train:1", mounts=("/data:/data:ro", "/ckpt:/ckpt"), gpus=True)
    plan = containerize(build_plan(launch_spec, hosts), spec)     # pure: every node's argv becomes docker run ...
    result = run_containerized(plan, ssh=ssh, sink=line_printer())  # run_plan, then remove the run's containers
    remove_run_containers(run_id, hosts, ssh=ssh)                  # exactly the containers labelled orch.run=ID

A node's command becomes `docker run --rm --init --network host --ipc host --tmpfs /tmp [--gpus all] --shm-size S
--label orch.run=ID --name orch-ID-HOST -e NAME ... -v WORKDIR:WORKDIR -w WORKDIR -v MOUNT ... IMAGE
python3 -m torch.distributed.run ...`. The env manifest crosses as `-e NAME` without values: docker copies
them from the client's environment, which the agent set, so no value (no secret) is on a command line. The
container keeps ORCH_RUN_ID, so the agent's teardown also finds the ranks inside it; after the run (also on
Ctrl-C) the containers labelled with the run id are force-removed on every reachable host.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.contracts import RUN_TMPDIR, RUN_TOKEN
from orchestrator.errors import ConfigError
from orchestrator.launch.plan import LaunchPlan, NodePlan

LABEL = "orch.run"
_SHM = re.compile(r"\d+[bkmg]?\Z", re.I)
_NAME_OK = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class ContainerSpec:
    image: str
    mounts: tuple[str, ...] = ()
    """'SRC:DST[:ro]' bind mounts (data, checkpoints), absolute paths on the node."""
    gpus: bool = False
    """--gpus all (NVIDIA container toolkit on the node)."""
    shm_size: str = "16g"
    python: str = "python3"
    """The interpreter inside the image that runs the launcher."""
    docker: str = "docker"
    extra_args: tuple[str, ...] = ()


def validate(spec: ContainerSpec) -> None:
    if not spec.image or spec.image.startswith("-") or any(c.isspace() for c in spec.image):
        raise ConfigError("--container", spec.image, "name an image (tag or sha256 id) loaded on every node")
    if not _SHM.match(spec.shm_size):
        raise ConfigError("--shm-size", spec.shm_size, "use a size like 16g or 512m")
    for m in spec.mounts:
        parts = m.split(":")
        if len(parts) not in (2, 3) or not all(p.startswith("/") for p in parts[:2]) or parts[2:] not in ([], ["ro"], ["rw"]):
            raise ConfigError("--container-mount", m, "use SRC:DST or SRC:DST:ro with absolute paths")


def container_argv(plan: LaunchPlan, node: NodePlan, spec: ContainerSpec) -> list[str]:
    """The node's `docker run` argv around its launcher argv (pure)."""
    # Not ORCH_RUN_TMPDIR: the agent's temp dir is on the host. The container gets a /tmp of its own, gone with
    # it (torchrun's per-rank files go to TMPDIR; an image without a writable /tmp would put them in the workdir).
    env_names = sorted({*plan.node_env(node), RUN_TOKEN} - {RUN_TMPDIR})
    argv = [spec.docker, "run", "--rm", "--init", "--network", "host", "--ipc", "host", "--tmpfs", "/tmp:exec,mode=1777",
            "--shm-size", spec.shm_size, "--label", f"{LABEL}={plan.run_id}", "--label", f"orch.host={node.host}",
            "--name", _NAME_OK.sub("-", f"orch-{plan.run_id}-{node.host}")]
    if spec.gpus:
        argv += ["--gpus", "all"]
    for name in env_names:
        argv += ["-e", name]
    if "PYTHONUNBUFFERED" not in env_names:  # torchrun's tee writes to a pipe: lines must arrive as they happen
        argv += ["-e", "PYTHONUNBUFFERED=1"]
    if node.workdir:
        argv += ["-v", f"{node.workdir}:{node.workdir}", "-w", node.workdir]
    for m in spec.mounts:
        argv += ["-v", m]
    launcher = list(node.argv)
    if launcher and launcher[0] == node.python:  # the host's interpreter path means nothing inside the image
        launcher[0] = spec.python
    return argv + list(spec.extra_args) + [spec.image] + launcher


def containerize(plan: LaunchPlan, spec: ContainerSpec) -> LaunchPlan:
    """The same plan with every node's argv wrapped in docker run (pure; ConfigError on a bad spec)."""
    validate(spec)
    nodes = tuple(dataclasses.replace(n, argv=tuple(container_argv(plan, n, spec))) for n in plan.nodes)
    return dataclasses.replace(plan, nodes=nodes)


def cleanup_argv(run_id: str, docker: str = "docker") -> list[str]:
    """Remove every container labelled with the run id (the id is a positional parameter: inert)."""
    script = ('ids=$("$0" ps -aq --filter "label=%s=$1"); [ -z "$ids" ] || "$0" rm -f $ids >/dev/null; '
              '! "$0" ps -aq --filter "label=%s=$1" | grep -q .') % (LABEL, LABEL)
    return ["sh", "-c", script, docker, run_id]


def remove_run_containers(run_id: str, hosts: Sequence[str], *, docker: str = "docker", **fanout) -> dict[str, str]:
    """host -> 'clean' or why not, after force-removing the run's containers there."""
    from orchestrator.remote import run_on

    result = run_on(list(hosts), cleanup_argv(run_id, docker), timeout=60, **fanout)
    return {h: "clean" if r.ok else r.reason() for h, r in result.items()}


def run_containerized(plan: LaunchPlan, *, docker: str = "docker", ssh=None, **kwargs):
    """run_plan on a containerize()d plan; then the run's containers are removed on every reachable host
    (also after Ctrl-C). Anything left is reported in result.teardown."""
    from orchestrator.launch.runner import run_plan

    result = run_plan(plan, ssh=ssh, **kwargs)
    reachable = [h for h in plan.hosts if h not in result.unreachable]
    left = remove_run_containers(plan.run_id, reachable, docker=docker, ssh=ssh, python=lambda h: plan.node(h).python)
    result.teardown = {**(result.teardown or {}), **{h: f"containers: {why}" for h, why in left.items() if why != "clean"}}
    return result
