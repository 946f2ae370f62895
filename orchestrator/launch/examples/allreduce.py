"""A small torch.distributed job: every rank reports who it is and checks one all_reduce.

    torchrun --nproc-per-node 2 -m orchestrator.launch.examples.allreduce
    orchestrator launch --hosts 'node[1-4]' --nproc-per-node 2 -m orchestrator.launch.examples.allreduce

Each rank prints one machine-readable line (parsed by `orchestrator demo` and the integration tests):
    RESULT {"rank": 3, "local_rank": 1, "world_size": 8, "host": "node2", "sum": 36, "expected": 36}
The all_reduce sums rank+1 over all ranks, so the expected value is world_size*(world_size+1)/2.
Test knobs: --fail-rank R (that rank exits with --exit-code after the all_reduce), --sleep S (stay alive S
seconds, for teardown tests), --show-env NAME (report that variable's value), extra args are echoed back.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="gloo")
    parser.add_argument("--fail-rank", type=int, default=None)
    parser.add_argument("--exit-code", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--show-env", action="append", default=[])
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # DeepSpeed passes it
    parser.add_argument("extra", nargs="*", help="echoed back in the RESULT line")
    args = parser.parse_args(argv)

    import torch
    import torch.distributed as dist

    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    result = {
        "rank": rank,
        "local_rank": int(os.environ["LOCAL_RANK"]),
        "world_size": world,
        "env_rank": int(os.environ["RANK"]),
        "host": socket.gethostname(),
        "sum": int(value.item()),
        "expected": world * (world + 1) // 2,
        "env": {name: os.environ.get(name) for name in args.show_env},
        "extra": args.extra,
    }
    # One write() per line: ranks that share a pipe (DeepSpeed's launcher does not tee per rank) cannot
    # interleave inside it, as print()'s separate write of the newline can.
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
    if rank == args.fail_rank:
        print(f"rank {rank} failing on purpose with exit code {args.exit_code}", file=sys.stderr, flush=True)
        os._exit(args.exit_code)  # no process-group teardown: like a crashed rank
    deadline = time.monotonic() + args.sleep
    while time.monotonic() < deadline:
        time.sleep(0.2)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
