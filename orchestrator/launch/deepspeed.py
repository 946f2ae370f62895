"""Per-node DeepSpeed command lines (pure), one `deepspeed.launcher.launch` per host, started by us.

    world = world_info_b64([("node1", [0, 1]), ("node2", [0, 1])])
    deepspeed_argv(python="/opt/venv/bin/python", world_info=world, node_rank=1,
                   master_addr="node1", master_port=29500, program=["train.py", "--deepspeed_config", "ds.json"])
    # ['/opt/venv/bin/python', '-u', '-m', 'deepspeed.launcher.launch', '--world_info=eyJ...', '--node_rank=1', ...,
    #  '--no_python', '--no_local_rank', '/opt/venv/bin/python', '-I', '-S', '-c', <rankprefix.py>, '3',
    #  '/opt/venv/bin/python', '-u', 'train.py', '--deepspeed_config', 'ds.json']

Why not DeepSpeed's pdsh runner: it starts everything from one `pdsh` process and, on Ctrl-C, kills remote work
with `pkill -f <launch command>`, which also hits any other job on those hosts started with the same command line.
Why not `deepspeed --no_ssh --node_rank=i --hostfile H` on each node: it needs the hostfile copied to every node,
and all it does with it is compute world_info and exec exactly the command built here (see DeepSpeed's
launcher/runner.py, no_ssh branch). So we render the hostfile on the head (into the run dir, the record of the
job), encode the same world_info from it, and start `python -m deepspeed.launcher.launch --node_rank=i` on every
node under our agent: our run id, process group, dead-man switch and teardown own it like torchrun.
DeepSpeed is only needed on the nodes when the job runs; planning and --dry-run work without it.

Rank output: DeepSpeed starts each rank on its own stdout, unmarked. So it starts rankprefix.py (sent inline,
like the node agent) with the rank's command instead, --no_python --no_local_rank; rankprefix.py puts
--local_rank=N back where DeepSpeed would and marks every line with torchrun's tee marker, so the runner shows
and logs `host/rank: ...` for both launchers alike; it also reports which rank failed, and how, which DeepSpeed's
launcher does not (see launch/failures.py).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path

from orchestrator.inline import python_source

def rank_prefix_source() -> str:
    """rankprefix.py as sent (docstrings and comments dropped: it shows in the nodes' `ps`)."""
    return python_source(Path(__file__).with_name("rankprefix.py"))


def world_info_b64(hosts: Sequence[tuple[str, Sequence[int]]]) -> str:
    """DeepSpeed's --world_info: urlsafe base64 of {host: [slot indices]} in host order (what its runner encodes)."""
    info = {host: list(slot_ids) for host, slot_ids in hosts}
    return base64.urlsafe_b64encode(json.dumps(info).encode()).decode()


def deepspeed_argv(
    *,
    python: str,
    world_info: str,
    node_rank: int,
    master_addr: str,
    master_port: int,
    program: list[str],
    module: bool = False,
) -> list[str]:
    argv = [
        python, "-u", "-m", "deepspeed.launcher.launch",
        f"--world_info={world_info}", f"--node_rank={node_rank}",
        f"--master_addr={master_addr}", f"--master_port={master_port}",
    ]
    rank = [python, "-u", "-m", program[0]] if module else [python, "-u", program[0]]
    return argv + ["--no_python", "--no_local_rank", python, "-I", "-S", "-c", rank_prefix_source(), str(len(rank)),
                   *rank, *program[1:]]
