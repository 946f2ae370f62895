"""A gloo job that hangs at step 3: rank 0 waits in dist.all_reduce while each rank named on the command line is
stuck elsewhere before it (`hang_script.py sleep fifo spin`: rank 1 sleeps in stuck_in_data_loader(), rank 2 waits
to open a FIFO nobody writes, rank 3 spins in an endless Python loop; no argument: `sleep`). It writes heartbeats
(ORCH_HEARTBEAT_DIR) so the supervisor declares the hang, and arms the flight recorder the supervisor turns on;
the lines marked STUCK, FIFO, SPIN and WAITS are where the hang report must place the ranks (test_supervisor*.py).
"""

import os
import sys
import tempfile
import time

import torch
import torch.distributed as dist

from orchestrator.engine import flight_recorder
from orchestrator.engine.heartbeat import Heartbeat


def stuck_in_data_loader():
    while True:
        time.sleep(3600)  # STUCK


def read_from_fifo():
    path = os.path.join(tempfile.mkdtemp(dir=os.environ.get("ORCH_RUN_TMPDIR")), "batches")
    os.mkfifo(path)
    with open(path, "rb") as fifo:  # FIFO
        fifo.read()


def spin():
    """The loop is one line, so any sample of it lands there."""
    n = 0
    while True: n += 1  # SPIN


STUCK = {"sleep": stuck_in_data_loader, "fifo": read_from_fifo, "spin": spin}


def main():
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    beat = Heartbeat.from_env(rank=rank, local_rank=int(os.environ["LOCAL_RANK"]), world_size=dist.get_world_size())
    beat.flight_recorder = flight_recorder.arm(rank)
    modes = sys.argv[1:] or ["sleep"]
    value = torch.ones(1)
    for step in range(1, 1000):
        if step == 3 and 0 < rank <= len(modes):
            STUCK[modes[rank - 1]]()
        dist.all_reduce(value)  # WAITS
        beat.beat(step=step)


main()
