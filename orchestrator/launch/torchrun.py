"""Per-node torchrun command lines (pure).

    torchrun_argv(python="/opt/venv/bin/python", nnodes=4, node_rank=1, nproc=2,
                  master_addr="node1", master_port=29500, program=["train.py", "--lr", "3e-4"])
    # ['/opt/venv/bin/python', '-m', 'torch.distributed.run', '--nnodes=4', '--node-rank=1', ...]

Static rendezvous (--master-addr/--master-port/--node-rank), not c10d: the plan fixes which host is node rank i,
so global ranks are known before start (host i holds ranks base_i .. base_i+nproc_i-1). The failure analysis and
the supervisor rely on that rank -> host map; c10d rendezvous would hand out node ranks in arrival order.
Restarts belong to our supervisor, so torchrun's elastic membership buys nothing here.

torchrun is run as `PYTHON -m torch.distributed.run` so the per-host interpreter also runs the ranks (torchrun
starts workers with its own sys.executable). `--tee 3` sends every worker's stdout+stderr through torchrun's
tail-log, which prefixes each line with RANK_PREFIX_TEMPLATE (set via TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE);
the runner parses that into `host/rank` prefixes. No --log-dir: torchrun keeps its per-rank files in a
temp dir under TMPDIR, which the node agent points at the run's private temp dir and removes when the run ends.
"""

from __future__ import annotations

import re

# Unit separators keep the marker out of anything a program plausibly prints itself.
RANK_PREFIX_TEMPLATE = "\x1f${rank}/${local_rank}\x1f"
RANK_PREFIX = re.compile(r"\x1f(\d+)/(\d+)\x1f")
PREFIX_ENV = "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"


def torchrun_argv(
    *,
    python: str,
    nnodes: int,
    node_rank: int,
    nproc: int,
    master_addr: str,
    master_port: int,
    program: list[str],
    module: bool = False,
    monitor_interval: float = 0.2,
) -> list[str]:
    """argv of one node's torchrun; `program` is [script, args...] or, with module=True, [module, args...]."""
    argv = [
        python, "-m", "torch.distributed.run",
        f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--nproc-per-node={nproc}",
        f"--master-addr={master_addr}", f"--master-port={master_port}",
        "--tee=3", f"--monitor-interval={monitor_interval}",
    ]
    if module:
        argv.append("--module")
    return argv + list(program)


def rank_prefix(rank: int, local_rank: int, template: str = RANK_PREFIX_TEMPLATE) -> str:
    """The prefix `template` (torchrun's PREFIX_ENV syntax) expands to for one rank (what the warm keeper writes
    itself)."""
    return template.replace("${rank}", str(rank)).replace("${local_rank}", str(local_rank))


def torchrun_env() -> dict[str, str]:
    """Variables torchrun itself needs on every node (added to the env manifest's values)."""
    return {PREFIX_ENV: RANK_PREFIX_TEMPLATE}


def split_rank_prefix(line: str) -> tuple[int | None, int | None, str]:
    """'\\x1f3/1\\x1fhello' -> (3, 1, 'hello'); a line torchrun printed itself -> (None, None, line)."""
    m = RANK_PREFIX.match(line)
    if not m:
        return None, None, line
    return int(m.group(1)), int(m.group(2)), line[m.end():]
