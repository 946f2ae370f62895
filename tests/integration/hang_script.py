"""A 2-rank gloo job that hangs: rank 1 gets stuck in stuck_in_data_loader() at step 3 while rank 0 waits in
dist.all_reduce. It writes heartbeats (ORCH_HEARTBEAT_DIR) so the supervisor declares the hang; the lines marked
STUCK and WAITS are where the hang report must place ranks 1 and 0 (test_supervisor*.py).
"""

import os
import time

import torch
import torch.distributed as dist

from orchestrator.engine.heartbeat import Heartbeat


def stuck_in_data_loader():
    while True:
        time.sleep(3600)  # STUCK


def main():
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    beat = Heartbeat.from_env(rank=rank, local_rank=int(os.environ["LOCAL_RANK"]), world_size=dist.get_world_size())
    value = torch.ones(1)
    for step in range(1, 1000):
        if rank == 1 and step == 3:
            stuck_in_data_loader()
        dist.all_reduce(value)  # WAITS
        beat.beat(step=step)


main()
